"""Background threads for the model manager: finding the weight files, and downloading the missing ones.

Both run `pipeline.weights` functions (which never import torch to list or find files; verifying a finished
download does, in this thread) so the window never waits on the disk, the network or an import.

Threading contract: construct and start a thread in the GUI thread; its signals are emitted from the worker
thread and arrive queued in the GUI thread. `DownloadThread.cancel()` may be called from any thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QThread, Signal

PROGRESS_INTERVAL_S = 0.05  # at most 20 progress signals a second per file (plus the first and the last)


@dataclass(frozen=True)
class FileState:
    """Where one registry file is on this machine."""

    name: str
    path: str | None  # None: missing
    where: str | None  # weights.FOLDER or weights.HF_CACHE


class ScanThread(QThread):
    """Finds every registry file (`weights.locate`) in the weights folder or the Hugging Face cache."""

    scanned = Signal(object)  # dict[name, FileState]

    def __init__(self, models_dir: str | Path, parent=None):
        super().__init__(parent)
        self.setObjectName("weights scan")
        self.models_dir = Path(models_dir)

    def run(self) -> None:
        from ..pipeline import weights

        states = {}
        for entry in weights.REGISTRY:
            found = weights.locate(entry, self.models_dir)
            if found is None:
                states[entry.name] = FileState(entry.name, None, None)
            else:
                states[entry.name] = FileState(entry.name, str(found.path), found.where)
        self.scanned.emit(states)


#: DownloadThread.failed kinds
ACCESS_DENIED, OFFLINE, NO_SPACE, VERIFICATION, CANCELLED, ERROR = (
    "access_denied", "offline", "no_space", "verification", "cancelled", "error",
)  # fmt: skip


class DownloadThread(QThread):
    """Runs `weights.download` for some registry files; one file at a time, with per-file progress."""

    file_progress = Signal(str, int, int)  # name, bytes done, bytes total
    file_done = Signal(str, str, str)  # name, path, action ("downloaded", "linked from ...", "present")
    succeeded = Signal()
    failed = Signal(str, str)  # kind (ACCESS_DENIED, ...), readable message (never holding the token)

    def __init__(self, names: list[str], models_dir: str | Path, *, token: str | None = None,
                 endpoint: str | None = None, parent=None):  # fmt: skip
        super().__init__(parent)
        self.setObjectName("weights download")
        self.names = list(names)
        self.models_dir = Path(models_dir)
        self._token = token or None
        self.endpoint = endpoint
        self._cancel = threading.Event()
        self._last: dict[str, float] = {}

    def __repr__(self) -> str:  # never show the token
        return f"DownloadThread({self.names!r}, {str(self.models_dir)!r})"

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _progress(self, event) -> None:
        now = time.monotonic()
        last = self._last.get(event.name)
        if last is None or event.done >= event.total or now - last >= PROGRESS_INTERVAL_S:
            self._last[event.name] = now
            self.file_progress.emit(event.name, event.done, event.total)

    def run(self) -> None:
        from ..pipeline import weights

        kinds = [
            (weights.AccessDenied, ACCESS_DENIED),
            (weights.Offline, OFFLINE),
            (weights.NotEnoughSpace, NO_SPACE),
            (weights.VerificationFailed, VERIFICATION),
            (weights.DownloadCancelled, CANCELLED),
            (weights.DownloadError, ERROR),
        ]
        try:
            entries = [weights.entry_named(name) for name in self.names]
            results = weights.download(
                entries,
                self.models_dir,
                token=self._token,
                endpoint=self.endpoint,
                progress=self._progress,
                cancel=self._cancel.is_set,
            )
        except weights.DownloadError as exc:
            kind = next(k for cls, k in kinds if isinstance(exc, cls))
            self.failed.emit(kind, _scrub(str(exc), self._token))
            return
        except Exception as exc:  # a worker reports, it does not die silently
            self.failed.emit(ERROR, _scrub(f"{type(exc).__name__}: {exc}", self._token))
            return
        for result in results:
            self.file_done.emit(result.entry.name, str(result.path), result.action)
        self.succeeded.emit()


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text
