"""The queue panel: every job with its state, the running job's live preview and per-stage progress, and
the buttons that cancel or remove jobs."""

from __future__ import annotations

from PySide6.QtCore import QItemSelectionModel, QSize, Qt, Slot
from PySide6.QtGui import QAction, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListView,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..state.queue import PENDING, STAGE_NAMES, STAGES, JobIdRole, QueueModel, StateRole
from .image_view import array_to_qimage

PREVIEW_SIDE = 192


class QueuePanel(QWidget):
    """The queue dock's contents. GUI thread only. ``set_service`` binds it (and its :class:`QueueModel`)
    to a generation service; the panel owns no job data itself."""

    def __init__(self, parent: QWidget | None = None, *, model: QueueModel | None = None) -> None:
        super().__init__(parent)
        self.model = model or QueueModel(self)
        self._service = None
        self._connections: list = []

        self.preview_label = QLabel("No job running")
        self.preview_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview_label.setFixedSize(QSize(PREVIEW_SIDE, PREVIEW_SIDE))
        self.preview_label.setStyleSheet("QLabel { background: #202020; color: #8a8a8a; }")
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

        self.stage_bars: dict[str, QProgressBar] = {}
        bars = QGridLayout()
        for row, stage in enumerate(STAGES):
            bar = QProgressBar()
            bar.setRange(0, 1)
            bar.setValue(0)
            bar.setFormat("%v / %m")
            bars.addWidget(QLabel(STAGE_NAMES[stage]), row, 0)
            bars.addWidget(bar, row, 1)
            self.stage_bars[stage] = bar

        self.list_view = QListView()
        self.list_view.setModel(self.model)
        self.list_view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.list_view.setWordWrap(True)
        self.list_view.setUniformItemSizes(False)

        def action(text: str, shortcut: str, slot) -> QAction:
            act = QAction(text, self)
            act.setShortcut(QKeySequence(shortcut))
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            act.setToolTip(f"{text} ({QKeySequence(shortcut).toString(QKeySequence.SequenceFormat.NativeText)})")
            act.triggered.connect(slot)
            self.addAction(act)
            return act

        self.cancel_current_action = action("Cancel current", "Ctrl+.", self.cancel_current)
        # Not Ctrl+Shift+.: on most layouts Shift+. types another key, so that shortcut would never fire.
        self.cancel_all_action = action("Cancel all", "Ctrl+Shift+Backspace", self.cancel_all)
        self.cancel_others_action = action("Cancel all but current", "Ctrl+Alt+.", self.cancel_all_but_current)
        self.remove_pending_action = action("Remove selected pending", "Delete", self.remove_selected_pending)

        buttons = QHBoxLayout()
        self.buttons: dict[str, QPushButton] = {}
        for name, act in (
            ("cancel_current", self.cancel_current_action),
            ("cancel_all", self.cancel_all_action),
            ("cancel_others", self.cancel_others_action),
            ("remove_pending", self.remove_pending_action),
        ):
            button = QPushButton(act.text())
            button.setToolTip(act.toolTip())
            button.clicked.connect(act.trigger)
            buttons.addWidget(button)
            self.buttons[name] = button

        top = QHBoxLayout()
        top.addWidget(self.preview_label)
        side = QVBoxLayout()
        side.addLayout(bars)
        side.addWidget(self.status_label)
        side.addStretch(1)
        top.addLayout(side, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(buttons)
        layout.addWidget(self.list_view, 1)

        self.model.running_changed.connect(self._on_running_changed)
        self.model.preview_changed.connect(self._on_preview_changed)
        self.model.dataChanged.connect(self._on_data_changed)
        self.model.rowsInserted.connect(self._update_buttons)
        self.model.rowsRemoved.connect(self._update_buttons)
        self.list_view.selectionModel().selectionChanged.connect(self._update_buttons)
        self._update_buttons()

    # -- binding -------------------------------------------------------------------------------------------

    def set_service(self, service) -> None:
        """Bind to a ``GenerationService`` (or None to unbind)."""
        for signal, slot in self._connections:
            signal.disconnect(slot)
        self._connections = []
        self._service = service
        if service is not None:
            m = self.model
            self._connections = [
                (service.job_queued, m.on_job_queued),
                (service.job_started, m.on_job_started),
                (service.progress, m.on_progress),
                (service.preview, m.on_preview),
                (service.image_ready, m.on_image_ready),
                (service.job_failed, m.on_job_failed),
                (service.job_finished, m.on_job_finished),
                (service.status_changed, self.status_label.setText),
                (service.job_note, m.on_job_note),  # how a masked/ControlNet job runs
            ]
            for signal, slot in self._connections:
                signal.connect(slot)
        self._update_buttons()

    @property
    def service(self):
        return self._service

    # -- commands ------------------------------------------------------------------------------------------

    @Slot()
    def cancel_current(self) -> None:
        if self._service is None:
            return
        running = self.model.running_job()
        if running >= 0:
            self._service.cancel(running)
        else:
            self._service.cancel_current()  # started, but its job_started is still on its way

    @Slot()
    def cancel_all(self) -> None:
        if self._service is not None:
            self._service.cancel_all()

    @Slot()
    def cancel_all_but_current(self) -> None:
        if self._service is not None:
            self._service.cancel_all_but_current()

    @Slot()
    def remove_selected_pending(self) -> None:
        if self._service is None:
            return
        for job_id in self.selected_pending():
            self._service.remove_pending(job_id)

    def selected_pending(self) -> list[int]:
        rows = sorted(index.row() for index in self.list_view.selectionModel().selectedRows())
        indexes = [self.model.index(row) for row in rows]
        return [index.data(JobIdRole) for index in indexes if index.data(StateRole) == PENDING]

    def select_job(self, job_id: int, *, add: bool = False) -> None:
        row = self.model.row_of(job_id)
        if row < 0:
            return
        flags = QItemSelectionModel.SelectionFlag.Select if add else QItemSelectionModel.SelectionFlag.ClearAndSelect
        self.list_view.selectionModel().select(self.model.index(row), flags)

    # -- display -------------------------------------------------------------------------------------------

    @Slot(int)
    def _on_running_changed(self, job_id: int) -> None:
        if job_id < 0:
            self.preview_label.clear()
            self.preview_label.setText("No job running")
        else:
            self.preview_label.setText("Waiting for the first step…")
            for bar in self.stage_bars.values():
                bar.setRange(0, 1)
                bar.setValue(0)
        self._update_buttons()

    @Slot(int)
    def _on_preview_changed(self, job_id: int) -> None:
        job = self.model.job(job_id)
        if job is None or job.preview is None or job_id != self.model.running_job():
            return
        image = array_to_qimage(job.preview)
        pixmap = QPixmap.fromImage(image).scaled(
            self.preview_label.size(), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
        )
        self.preview_label.setPixmap(pixmap)

    def _on_data_changed(self, *_args) -> None:
        running = self.model.job(self.model.running_job())
        if running is not None:
            for stage, (step, total) in running.progress.items():
                bar = self.stage_bars[stage]
                if bar.maximum() != total:
                    bar.setRange(0, total)
                bar.setValue(step)
        self._update_buttons()

    def _update_buttons(self, *_args) -> None:
        bound = self._service is not None
        running = self.model.running_job() >= 0
        pending = bool(self.model.pending_jobs())
        self.cancel_current_action.setEnabled(bound and running)
        self.cancel_all_action.setEnabled(bound and (running or pending))
        self.cancel_others_action.setEnabled(bound and pending)
        self.remove_pending_action.setEnabled(bound and bool(self.selected_pending()))
        for name, act in (
            ("cancel_current", self.cancel_current_action),
            ("cancel_all", self.cancel_all_action),
            ("cancel_others", self.cancel_others_action),
            ("remove_pending", self.remove_pending_action),
        ):
            self.buttons[name].setEnabled(act.isEnabled())
