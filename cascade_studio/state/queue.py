"""The generation queue as a list model: one row per job, fed by the generation service's signals.

The model knows nothing of the service (state never imports workers): the queue panel connects the
service's signals to the ``on_*`` slots here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QObject, QPersistentModelIndex, Qt, Signal, Slot
from PySide6.QtGui import QBrush, QColor

from ..core.request import GenerationRequest

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
STATES = (PENDING, RUNNING, DONE, FAILED, CANCELLED)
STAGES = ("c", "b", "a")
STAGE_NAMES = {"c": "Stage C", "b": "Stage B", "a": "Stage A"}

JobIdRole = Qt.ItemDataRole.UserRole + 1
StateRole = Qt.ItemDataRole.UserRole + 2
RequestRole = Qt.ItemDataRole.UserRole + 3
ProgressRole = Qt.ItemDataRole.UserRole + 4  # {"c": (step, total), ...}
ErrorRole = Qt.ItemDataRole.UserRole + 5
PreviewRole = Qt.ItemDataRole.UserRole + 6  # np.ndarray (H, W, 3) uint8 or None
PathsRole = Qt.ItemDataRole.UserRole + 7

_SUMMARY_CHARS = 60
_FAILED_COLOUR = QColor("#ff6b6b")
_DIM_COLOUR = QColor("#8a8a8a")


@dataclass
class Job:
    id: int
    request: GenerationRequest
    state: str = PENDING
    progress: dict[str, tuple[int, int]] = field(default_factory=dict)
    error: str = ""
    error_kind: str = ""
    preview: np.ndarray | None = None  # the running job's latest Stage C preview
    paths: list[str] = field(default_factory=list)
    note: str = ""  # how the job runs, from the worker ("inpainting by latent blending (…)")

    @property
    def summary(self) -> str:
        prompt = " ".join(self.request.prompt.split()) or "(empty prompt)"
        if len(prompt) > _SUMMARY_CHARS:
            prompt = prompt[: _SUMMARY_CHARS - 1] + "…"
        r = self.request
        batch = f" ×{r.batch_size}" if r.batch_size > 1 else ""
        return f"{prompt} — {r.width}×{r.height}{batch}, seed {r.seed}"

    @property
    def status_text(self) -> str:
        if self.state == RUNNING:
            done = [f"{STAGE_NAMES[s][-1]} {self.progress[s][0]}/{self.progress[s][1]}" for s in STAGES
                    if s in self.progress]  # fmt: skip
            note = f" · {self.note}" if self.note else ""
            return "running" + note + (f" · {', '.join(done)}" if done else " · starting")
        if self.state == FAILED:
            return f"failed: {_first_sentence(self.error)}" if self.error else "failed"
        if self.state == DONE:
            note = f" · {self.note}" if self.note else ""
            return f"done · {len(self.paths)} image{'s' if len(self.paths) != 1 else ''}{note}"
        return self.state


def _first_sentence(message: str, limit: int = 300) -> str:
    """The list shows the gist of an error; its tooltip (and ErrorRole) hold the whole message."""
    lines = message.strip().splitlines()
    text = lines[0] if lines else ""
    end = text.find(". ")
    if 0 < end < limit:
        return text[: end + 1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


class QueueModel(QAbstractListModel):
    """Jobs in the order they were queued. GUI thread only (the service's signals already arrive there)."""

    running_changed = Signal(int)  # the running job's id, or -1 when none runs
    preview_changed = Signal(int)  # id of the job whose preview was replaced

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._jobs: list[Job] = []
        self._rows: dict[int, int] = {}  # job id → row
        self._running = -1

    # -- reading -------------------------------------------------------------------------------------------

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._jobs)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._jobs):
            return None
        job = self._jobs[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return f"#{job.id}  {job.summary}\n{job.status_text}"
        if role == Qt.ItemDataRole.ToolTipRole:
            text = job.request.prompt or "(empty prompt)"
            return f"{text}\n\n{job.error}" if job.error else text
        if role == Qt.ItemDataRole.ForegroundRole:
            if job.state == FAILED:
                return QBrush(_FAILED_COLOUR)
            if job.state == CANCELLED:
                return QBrush(_DIM_COLOUR)
            return None
        return {
            JobIdRole: job.id,
            StateRole: job.state,
            RequestRole: job.request,
            ProgressRole: dict(job.progress),
            ErrorRole: job.error,
            PreviewRole: job.preview,
            PathsRole: list(job.paths),
        }.get(role)

    def roleNames(self) -> dict[int, bytes]:
        names = dict(super().roleNames())
        names.update({JobIdRole: b"jobId", StateRole: b"state", RequestRole: b"request", ProgressRole: b"progress",
                      ErrorRole: b"error", PreviewRole: b"preview", PathsRole: b"paths"})  # fmt: skip
        return names

    def job(self, job_id: int) -> Job | None:
        row = self._rows.get(job_id)
        return None if row is None else self._jobs[row]

    def jobs(self) -> list[Job]:
        return list(self._jobs)

    def row_of(self, job_id: int) -> int:
        return self._rows.get(job_id, -1)

    def running_job(self) -> int:
        return self._running

    def pending_jobs(self) -> list[int]:
        return [job.id for job in self._jobs if job.state == PENDING]

    # -- the service's signals -----------------------------------------------------------------------------

    @Slot(int, object)
    def on_job_queued(self, job_id: int, request: GenerationRequest) -> None:
        if job_id in self._rows:
            return
        row = len(self._jobs)
        self.beginInsertRows(QModelIndex(), row, row)
        self._jobs.append(Job(job_id, request))
        self._rows[job_id] = row
        self.endInsertRows()

    @Slot(int)
    def on_job_started(self, job_id: int) -> None:
        job = self.job(job_id)
        if job is None or job.state != PENDING:
            return
        job.state = RUNNING
        self._changed(job)
        self._set_running(job_id)

    @Slot(int, str)
    def on_job_note(self, job_id: int, note: str) -> None:
        job = self.job(job_id)
        if job is not None:
            job.note = note
            self._changed(job)

    @Slot(int, str, int, int)
    def on_progress(self, job_id: int, stage: str, step: int, total: int) -> None:
        job = self.job(job_id)
        if job is None or job.state != RUNNING:
            return
        job.progress[stage] = (step, total)
        self._changed(job, [Qt.ItemDataRole.DisplayRole, ProgressRole])

    @Slot(int, object)
    def on_preview(self, job_id: int, pixels: np.ndarray) -> None:
        job = self.job(job_id)
        if job is None or job.state != RUNNING:
            return  # a frame that arrived after its job ended
        job.preview = pixels
        self._changed(job, [PreviewRole])
        self.preview_changed.emit(job_id)

    @Slot(int, str)
    def on_image_ready(self, job_id: int, path: str) -> None:
        job = self.job(job_id)
        if job is not None:
            job.paths.append(path)
            self._changed(job, [Qt.ItemDataRole.DisplayRole, PathsRole])

    @Slot(int, str, str)
    def on_job_failed(self, job_id: int, message: str, kind: str) -> None:
        job = self.job(job_id)
        if job is not None:
            job.error, job.error_kind = message, kind
            self._changed(job)

    @Slot(int, str)
    def on_job_finished(self, job_id: int, outcome: str) -> None:
        job = self.job(job_id)
        if job is None:
            return
        if outcome == "removed":
            self._remove(job)
        else:
            job.state = {"done": DONE, "cancelled": CANCELLED}.get(outcome, FAILED)
            job.preview = None
            self._changed(job)
        if self._running == job_id:
            self._set_running(-1)

    # -- housekeeping -------------------------------------------------------------------------------------

    def clear_finished(self) -> None:
        """Drop the rows of jobs that ended (done, failed, cancelled)."""
        for job in [j for j in self._jobs if j.state in (DONE, FAILED, CANCELLED)]:
            self._remove(job)

    def _remove(self, job: Job) -> None:
        row = self._rows[job.id]
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._jobs[row]
        self._rows = {j.id: i for i, j in enumerate(self._jobs)}
        self.endRemoveRows()

    def _changed(self, job: Job, roles: list[int] | None = None) -> None:
        index = self.index(self._rows[job.id])
        self.dataChanged.emit(index, index, roles or [])

    def _set_running(self, job_id: int) -> None:
        if self._running != job_id:
            self._running = job_id
            self.running_changed.emit(job_id)
