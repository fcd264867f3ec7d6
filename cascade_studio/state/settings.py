"""The application's persistent settings: a typed front for `QSettings`.

Each setting is a property; setting one to a new value writes it at once and emits `<name>_changed`.
Values are converted on the way in and checked on the way out, so an edited or corrupt settings file gives
the default instead of a crash. Threading: GUI thread only (like every QObject model here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QObject, QSettings, QStandardPaths, Signal

DEVICES_HINT = ("auto", "cpu", "cuda", "mps")  # the editor offers these; cuda:N is accepted too
DTYPES = ("auto", "bf16", "fp32")
MEMORY_MODES = ("auto", "resident", "sequential")
HISTORY_LIMIT = 200
THUMBNAIL_RANGE = (64, 512)


def default_output_dir() -> Path:
    pictures = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
    return Path(pictures or Path.home() / "Pictures") / "Cascade Studio"


def _text(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value else default


def _int(value: Any, default: int, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return min(high, max(low, number))


def _choice(value: Any, default: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else default


def _bool(value: Any, default: bool) -> bool:
    # QSettings gives a bool back from the native stores but the string "true"/"false" from an INI file.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return default


def _device(value: Any) -> str:
    if isinstance(value, str) and (value in DEVICES_HINT or (value.startswith("cuda:") and value[5:].isdigit())):
        return value
    return "auto"


class Settings(QObject):
    """Typed settings over one `QSettings` store (pass an IniFormat store in tests)."""

    models_dir_changed = Signal(str)
    output_dir_changed = Signal(str)
    device_changed = Signal(str)
    dtype_changed = Signal(str)
    memory_changed = Signal(str)
    preview_every_changed = Signal(int)
    compile_changed = Signal(bool)
    thumbnail_size_changed = Signal(int)
    gallery_subfolders_changed = Signal(bool)
    prompt_history_changed = Signal(list)

    def __init__(
        self,
        store: QSettings | None = None,
        *,
        models_dir_default: str | Path | None = None,
        output_dir_default: str | Path | None = None,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.store = store if store is not None else QSettings()
        self._models_default = str(models_dir_default or Path.home() / "Cascade Studio" / "models")
        self._output_default = str(output_dir_default or default_output_dir())

    # -- plumbing --------------------------------------------------------------------------------------

    def _set(self, key: str, value: Any, signal: Signal) -> None:
        self.store.setValue(key, value)
        signal.emit(value)

    def sync(self) -> None:
        self.store.sync()

    # -- folders ---------------------------------------------------------------------------------------

    @property
    def models_dir(self) -> str:
        return _text(self.store.value("paths/models_dir"), self._models_default)

    @models_dir.setter
    def models_dir(self, value: str | Path) -> None:
        value = str(value)
        if value != self.models_dir:
            self._set("paths/models_dir", value, self.models_dir_changed)

    @property
    def output_dir(self) -> str:
        return _text(self.store.value("paths/output_dir"), self._output_default)

    @output_dir.setter
    def output_dir(self, value: str | Path) -> None:
        value = str(value)
        if value != self.output_dir:
            self._set("paths/output_dir", value, self.output_dir_changed)

    # -- the GPU worker (the CLI's --device / --dtype / --memory / --compile) --------------------------

    @property
    def device(self) -> str:
        return _device(self.store.value("worker/device"))

    @device.setter
    def device(self, value: str) -> None:
        value = _device(value)
        if value != self.device:
            self._set("worker/device", value, self.device_changed)

    @property
    def dtype(self) -> str:
        return _choice(self.store.value("worker/dtype"), "auto", DTYPES)

    @dtype.setter
    def dtype(self, value: str) -> None:
        if value not in DTYPES:
            raise ValueError(f"precision must be one of {', '.join(DTYPES)} (fp16 is refused), not {value!r}")
        if value != self.dtype:
            self._set("worker/dtype", value, self.dtype_changed)

    @property
    def memory(self) -> str:
        return _choice(self.store.value("worker/memory"), "auto", MEMORY_MODES)

    @memory.setter
    def memory(self, value: str) -> None:
        if value not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {', '.join(MEMORY_MODES)}, not {value!r}")
        if value != self.memory:
            self._set("worker/memory", value, self.memory_changed)

    @property
    def preview_every(self) -> int:
        """Show a preview every N Stage C steps; 0 turns previews off."""
        return _int(self.store.value("worker/preview_every"), 1, 0, 1000)

    @preview_every.setter
    def preview_every(self, value: int) -> None:
        value = _int(value, 1, 0, 1000)
        if value != self.preview_every:
            self._set("worker/preview_every", value, self.preview_every_changed)

    @property
    def compile(self) -> bool:
        """Run Stage C and Stage B through torch.compile (the CLI's --compile)."""
        return _bool(self.store.value("worker/compile"), False)

    @compile.setter
    def compile(self, value: bool) -> None:
        value = bool(value)
        if value != self.compile:
            self._set("worker/compile", value, self.compile_changed)

    # -- gallery ---------------------------------------------------------------------------------------

    @property
    def thumbnail_size(self) -> int:
        return _int(self.store.value("gallery/thumbnail_size"), 160, *THUMBNAIL_RANGE)

    @thumbnail_size.setter
    def thumbnail_size(self, value: int) -> None:
        value = _int(value, 160, *THUMBNAIL_RANGE)
        if value != self.thumbnail_size:
            self._set("gallery/thumbnail_size", value, self.thumbnail_size_changed)

    @property
    def gallery_subfolders(self) -> bool:
        """Whether the gallery also shows the images in the output folder's subfolders."""
        return _bool(self.store.value("gallery/subfolders"), False)

    @gallery_subfolders.setter
    def gallery_subfolders(self, value: bool) -> None:
        value = bool(value)
        if value != self.gallery_subfolders:
            self._set("gallery/subfolders", value, self.gallery_subfolders_changed)

    # -- prompt history (oldest first; each entry {"prompt": ..., "negative": ...}) ----------------------

    @property
    def prompt_history(self) -> list[dict[str, str]]:
        # Stored as one JSON string: QSettings' own lists come back as a bare string when they hold one item.
        raw = self.store.value("session/prompt_history")
        try:
            data = json.loads(raw) if isinstance(raw, str) else []
        except ValueError:
            return []
        if not isinstance(data, list):
            return []
        entries = [
            {"prompt": item["prompt"], "negative": item.get("negative", "")}
            for item in data
            if isinstance(item, dict)
            and isinstance(item.get("prompt"), str)
            and isinstance(item.get("negative", ""), str)
        ]
        return entries[-HISTORY_LIMIT:]

    @prompt_history.setter
    def prompt_history(self, entries: list[dict[str, str]]) -> None:
        entries = [{"prompt": e["prompt"], "negative": e.get("negative", "")} for e in entries][-HISTORY_LIMIT:]
        if entries != self.prompt_history:
            self.store.setValue("session/prompt_history", json.dumps(entries, ensure_ascii=False))
            self.prompt_history_changed.emit(entries)

    # -- the prompt panel's values between runs (SessionModel.state()) ----------------------------------

    @property
    def session_state(self) -> dict[str, Any]:
        raw = self.store.value("session/state")
        try:
            data = json.loads(raw) if isinstance(raw, str) else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @session_state.setter
    def session_state(self, state: dict[str, Any]) -> None:
        self.store.setValue("session/state", json.dumps(state, ensure_ascii=False, sort_keys=True))

    # -- window layout ---------------------------------------------------------------------------------

    @property
    def window_geometry(self) -> QByteArray:
        value = self.store.value("window/geometry")
        return value if isinstance(value, QByteArray) else QByteArray()

    @window_geometry.setter
    def window_geometry(self, value: QByteArray) -> None:
        self.store.setValue("window/geometry", QByteArray(value))

    @property
    def window_state(self) -> QByteArray:
        value = self.store.value("window/state")
        return value if isinstance(value, QByteArray) else QByteArray()

    @window_state.setter
    def window_state(self, value: QByteArray) -> None:
        self.store.setValue("window/state", QByteArray(value))
