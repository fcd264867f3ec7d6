"""The main window: the canvas and the image viewer in the centre (two tabs); prompt, queue and gallery docks;
menus; the status bar.

The window shows first and starts the GPU service afterwards (`QTimer.singleShot(0, ...)` from the first
show), so nothing on the start-up path imports torch; the service imports it on its own thread.

Canvas jobs (inpaint, outpaint, and canny / upscale from the canvas): Generate copies the canvas image and mask,
a pool thread writes them under `<output>/.cascade-studio/inputs/`, and the jobs are queued once the files are
there. Inpaint and outpaint results come back as candidates on the canvas (never replacing it); the others show
in the viewer and the gallery.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QEvent, QObject, QRect, Qt, QThreadPool, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QImageReader, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSizePolicy,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .. import __version__
from ..core import mask as masks
from ..core.gallery import recall_caveat
from ..core.geometry import snap_size
from ..core.inpaint import effective_mask, load_mask, repaint_area
from ..core.paths import demo_folder
from ..core.request import MASK_MODES, GenerationRequest, StageSettings
from ..state.session import SessionModel
from ..state.settings import Settings
from .canvas import CanvasWidget
from .canvas_jobs import CannyEdges, DecodeImage, SaveInputs, TaskSignals, input_path, inputs_folder
from .gallery import GalleryPanel
from .image_view import ImageView, array_to_qimage
from .prompt_panel import PromptPanel
from .queue_panel import QueuePanel

DEMO_NOTICE = "Demo mode: demo weights make noise, not pictures"
ERROR_MESSAGE_MS = 12000
INFO_MESSAGE_MS = 4000


CANVAS_TAB, VIEWER_TAB = 0, 1
PREVIEW_SIDE = 200  # px of the live preview shown over the canvas during a canvas job
EFFECTIVE_MASK_DELAY_MS = 150
HINT_COLOUR = "#9aa0a6"  # the effective-mask overlay follows edits after this pause


@dataclass
class CanvasJob:
    """A queued job whose result becomes a candidate on the canvas, if the canvas is still the one it used."""

    mode: str
    base: Any  # weakref to the document's image array the job was made from
    size: tuple[int, int]  # (width, height) the result will have


class CandidateBar(QWidget):
    """Visible buttons for the canvas's candidates: previous, next, accept, discard, and which one is shown."""

    #: The key hint, longest first; the bar shows the longest that fits its width.
    HINTS = (
        "Enter accepts · Delete discards · N next · Ctrl+Z undoes an accept",
        "Enter accepts · Delete discards · N next",
        "Enter · Delete · N",
        "",
    )

    def __init__(self, canvas: CanvasWidget, parent: QWidget | None = None):
        super().__init__(parent)
        self.canvas = canvas
        actions = canvas.actions_by_name
        self.label = QLabel()
        self.hint = QLabel(self.HINTS[0])
        self.hint.setStyleSheet(f"color: {HINT_COLOUR};")
        self.hint.setToolTip(self.HINTS[0])
        # the hint never widens the centre (which would squeeze the docks): the longest wording that fits is shown
        self.hint.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        row = QHBoxLayout(self)
        row.setContentsMargins(8, 4, 8, 4)
        row.addWidget(self.label, 1)
        row.addWidget(self.hint, 3)
        self.buttons = {}
        for name, text in (("previous_candidate", "◀ Previous"), ("next_candidate", "Next ▶"),
                           ("accept_candidate", "Accept"), ("discard_candidate", "Discard")):  # fmt: skip
            action = actions[name]
            button = QPushButton(text)
            button.setToolTip(f"{action.text()} ({action.shortcut().toString()})")
            button.clicked.connect(action.trigger)
            row.addWidget(button)
            self.buttons[name] = button
        self.buttons["accept_candidate"].setObjectName("generate")  # the accent colour of the theme
        canvas.document.candidates_changed.connect(self.refresh)
        self.refresh()

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._fit_hint()

    def _fit_hint(self) -> None:
        room = self.hint.width()
        metrics = self.hint.fontMetrics()
        self.hint.setText(next(text for text in self.HINTS if metrics.horizontalAdvance(text) <= room))

    def refresh(self) -> None:
        doc = self.canvas.document
        count = doc.candidate_count()
        self.setVisible(count > 0)
        self.label.setText(f"<b>Candidate {doc.candidate_index() + 1} of {count}</b>" if count else "")
        for name in ("previous_candidate", "next_candidate"):
            self.buttons[name].setEnabled(count > 1)


def default_service_factory(config: Any) -> Any:
    from ..workers.gpu import GenerationService

    return GenerationService(config)


class MainWindow(QMainWindow):
    """The studio window. GUI thread only.

    `service_factory(config)` makes the generation service (default: the GPU worker's GenerationService);
    tests pass a fake. The service exists from just after the first show until `closeEvent`.
    """

    service_started = Signal(object)
    requests_submitted = Signal(list)  # the GenerationRequests of one Generate press

    def __init__(self, settings: Settings, *, demo: bool = False,
                 service_factory: Callable[[Any], Any] | None = None, parent: QWidget | None = None):  # fmt: skip
        super().__init__(parent)
        self.settings = settings
        self.demo = demo
        self.service: Any = None
        self._service_factory = service_factory or default_service_factory
        self._service_requested = False
        self._painted = False
        self._waiting: list[GenerationRequest] = []  # pressed Generate before the service was up
        self._model_manager = None
        self._canvas_jobs: dict[int, CanvasJob] = {}
        self._waiting_canvas: dict[int, CanvasJob] = {}  # index into _waiting -> its canvas job
        self._saves: dict[int, tuple[list[GenerationRequest], CanvasJob | None]] = {}
        self._decodes: dict[int, int] = {}  # decode ticket -> job id
        self._finished: set[int] = set()  # canvas jobs that ended while a result was still being decoded
        self._ticket = 0
        self._edges_ticket = 0
        self._extension: tuple[Any, masks.Extension] | None = None  # (weakref to the extended image, extension)
        self._tasks = TaskSignals(self)
        self._tasks.saved.connect(self._inputs_saved)
        self._tasks.decoded.connect(self._result_decoded)
        self._tasks.edges.connect(self._edges_ready)
        self.setWindowTitle("Cascade Studio" + (" — demo" if demo else ""))
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)

        self.session = SessionModel(settings, self)
        self.session.restore_state(settings.session_state)

        self.view = ImageView(self)
        self.view.load_failed.connect(self.show_error)
        self.canvas = CanvasWidget(settings.store, parent=self)
        self.canvas.error.connect(self.show_error)
        self.candidate_bar = CandidateBar(self.canvas)
        canvas_page = QWidget()
        column = QVBoxLayout(canvas_page)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.canvas, 1)
        column.addWidget(self.candidate_bar)
        self.canvas_preview = QLabel(self.canvas.view.viewport())  # a canvas job's live preview, bottom right
        self.canvas_preview.setObjectName("canvas_preview")
        self.canvas_preview.setStyleSheet("border: 1px solid #33ccff; background: #202124;")
        self.canvas_preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.canvas_preview.hide()
        self.canvas.view.viewport().installEventFilter(self)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("centre_tabs")
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(canvas_page, "Canvas")
        self.tabs.addTab(self.view, "Viewer")
        self.tabs.setTabToolTip(CANVAS_TAB, "Paint masks, inpaint, outpaint; results arrive here as candidates")
        self.tabs.setTabToolTip(VIEWER_TAB, "Live previews, finished images and the gallery's current image")
        self.setCentralWidget(self.tabs)
        self._mask_timer = QTimer(self, singleShot=True, interval=EFFECTIVE_MASK_DELAY_MS)
        self._mask_timer.timeout.connect(self._refresh_overlay)

        self.prompt_panel = PromptPanel(self.session)
        self._show_lora_folder()
        self.queue_panel = QueuePanel()
        self.gallery = GalleryPanel()

        self.prompt_dock = self._dock("Prompt", "prompt_dock", self.prompt_panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.queue_dock = self._dock("Queue", "queue_dock", self.queue_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self.gallery_dock = self._dock("Gallery", "gallery_dock", self.gallery, Qt.DockWidgetArea.RightDockWidgetArea)
        self.splitDockWidget(self.queue_dock, self.gallery_dock, Qt.Orientation.Vertical)
        self.resizeDocks([self.prompt_dock, self.gallery_dock], [330, 420], Qt.Orientation.Horizontal)
        self.resizeDocks([self.queue_dock, self.gallery_dock], [260, 600], Qt.Orientation.Vertical)

        self._make_status_bar()
        self._make_actions()
        self._make_menus()
        self._connect()

        self.gallery.set_subfolders(settings.gallery_subfolders)  # before the folder, which it scans
        self.gallery.set_folder(settings.output_dir)
        self.gallery.set_thumbnail_size(settings.thumbnail_size)
        if not self.restoreGeometry(settings.window_geometry):
            self.resize(1440, 900)
        self.restoreState(settings.window_state)

    def _dock(self, title: str, name: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)  # saveState/restoreState find docks by name
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    # -- status bar ------------------------------------------------------------------------------------

    def _make_status_bar(self) -> None:
        bar = self.statusBar()
        self.service_label = QLabel("Starting…")
        self.service_label.setToolTip("Device · precision · memory mode of the GPU worker")
        bar.addPermanentWidget(self.service_label)
        self.demo_label = QLabel(DEMO_NOTICE, objectName="demo")
        self.demo_label.setVisible(self.demo)
        bar.addPermanentWidget(self.demo_label)

    def show_error(self, message: str) -> None:
        self.statusBar().showMessage(message, ERROR_MESSAGE_MS)

    def show_info(self, message: str) -> None:
        self.statusBar().showMessage(message, INFO_MESSAGE_MS)

    # -- actions and menus -----------------------------------------------------------------------------

    def _action(self, text: str, slot: Callable, shortcut: str | QKeySequence | list | None = None,
                tip: str = "") -> QAction:  # fmt: skip
        action = QAction(text, self)
        if isinstance(shortcut, list):
            action.setShortcuts(shortcut)
        elif shortcut:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
        action.triggered.connect(slot)
        return action

    def _make_actions(self) -> None:
        s = self.session
        self.open_source_action = self._action("&Open image as source…", self.prompt_panel.choose_source_image,
                                               QKeySequence.StandardKey.Open)  # fmt: skip
        self.choose_output_action = self._action("Choose &output folder…", self.choose_output_folder)
        self.open_output_action = self._action("Show output folder", self.open_output_folder)
        self.model_manager_action = self._action("&Model manager…", self.open_model_manager, "Ctrl+Shift+M")
        self.quit_action = self._action("&Quit", self.close, "Ctrl+Q")

        self.previous_prompt_action = self._action("&Previous prompt", s.history_previous, "Alt+Up")
        self.next_prompt_action = self._action("&Next prompt", s.history_next, "Alt+Down")
        self.random_seed_action = self._action("New random &seed", s.new_random_seed, "Ctrl+Shift+R")
        self.preferences_action = self._action("Pre&ferences…", self.open_preferences, "Ctrl+,")

        self.fit_action = self._action("&Fit to window", lambda: self._zoom("fit"), "Ctrl+0")
        self.actual_size_action = self._action("&Actual size (100 %)", lambda: self._zoom("actual_size"), "Ctrl+1")
        self.zoom_in_action = self._action("Zoom &in", lambda: self._zoom("zoom_in"), ["Ctrl++", "Ctrl+="])
        self.zoom_out_action = self._action("Zoom o&ut", lambda: self._zoom("zoom_out"), "Ctrl+-")
        self.show_canvas_action = self._action("&Canvas", lambda: self.tabs.setCurrentIndex(CANVAS_TAB), "Ctrl+Shift+1")
        self.show_viewer_action = self._action("&Viewer", lambda: self.tabs.setCurrentIndex(VIEWER_TAB), "Ctrl+Shift+2")
        self.open_canvas_action = self._action("Open image on the &canvas…", self.canvas.open_dialog)
        self.full_screen_action = self._action("F&ull screen", self.toggle_full_screen, "F11")

        self.generate_action = self.prompt_panel.generate_action
        # The queue panel's cancel actions work from anywhere in the window once they are in the menu;
        # "remove pending" stays inside the queue (Delete also moves gallery images to the trash).
        q = self.queue_panel
        self.cancel_actions = [q.cancel_current_action, q.cancel_all_action, q.cancel_others_action]
        for action in self.cancel_actions:
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)

        # The window's zoom keys follow the tab shown, and File ▸ Open stays "open as source": the canvas's own
        # copies of those keys (and two that other panels use) would make the keys ambiguous, so they move.
        ca = self.canvas.actions_by_name
        for name in ("fit", "actual_size", "zoom_in", "zoom_out"):
            ca[name].setShortcut(QKeySequence())
        ca["open"].setShortcut(QKeySequence())
        self.open_canvas_action.setShortcut(QKeySequence("Ctrl+Shift+O"))
        ca["export_mask"].setShortcut(QKeySequence("Ctrl+Alt+M"))  # Ctrl+Shift+M: the model manager
        ca["clear"].setShortcut(QKeySequence("Ctrl+Shift+Delete"))  # Ctrl+Shift+Backspace: cancel all

        self.shortcuts_action = self._action("&Keyboard shortcuts", self.show_shortcuts, "F1")
        self.about_action = self._action("&About Cascade Studio", self.show_about)

    def _make_menus(self) -> None:
        bar = self.menuBar()
        file = bar.addMenu("&File")
        file.addAction(self.open_source_action)
        file.addAction(self.open_canvas_action)
        file.addAction(self.canvas.actions_by_name["save"])
        file.addAction(self.canvas.actions_by_name["export_mask"])
        file.addSeparator()
        file.addAction(self.choose_output_action)
        file.addAction(self.open_output_action)
        file.addSeparator()
        file.addAction(self.model_manager_action)
        file.addSeparator()
        file.addAction(self.quit_action)

        edit = bar.addMenu("&Edit")
        edit.addAction(self.previous_prompt_action)
        edit.addAction(self.next_prompt_action)
        edit.addAction(self.random_seed_action)
        edit.addSeparator()
        edit.addAction(self.preferences_action)

        view = bar.addMenu("&View")
        for dock in (self.prompt_dock, self.queue_dock, self.gallery_dock):
            view.addAction(dock.toggleViewAction())
        view.addSeparator()
        view.addAction(self.show_canvas_action)
        view.addAction(self.show_viewer_action)
        view.addSeparator()
        for action in (self.fit_action, self.actual_size_action, self.zoom_in_action, self.zoom_out_action):
            view.addAction(action)
        view.addSeparator()
        view.addAction(self.full_screen_action)

        canvas = bar.addMenu("&Canvas")
        ca = self.canvas.actions_by_name
        for group in (("undo", "redo"), ("paste",), ("brush", "eraser", "rectangle", "lasso", "frame"),
                      ("invert", "clear"),
                      ("previous_candidate", "next_candidate", "accept_candidate", "discard_candidate")):  # fmt: skip
            for name in group:
                canvas.addAction(ca[name])
            canvas.addSeparator()
        canvas.addAction("Extend canvas…", self.canvas.toolbar.extend_dialog)

        generate = bar.addMenu("&Generate")
        generate.addAction(self.generate_action)
        generate.addSeparator()
        for action in self.cancel_actions:
            generate.addAction(action)

        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self.shortcuts_action)
        help_menu.addAction(self.about_action)

    # -- wiring ----------------------------------------------------------------------------------------

    def _connect(self) -> None:
        self.prompt_panel.generate_requested.connect(self.generate)
        g = self.gallery
        g.recall_requested.connect(self.recall)
        g.send_to_canvas_requested.connect(self.send_to_canvas)
        g.use_as_source_requested.connect(self.session.use_source_image)
        g.current_changed.connect(self._show_gallery_image)
        g.thumbnail_size_changed.connect(self._remember_thumbnail_size)
        g.subfolders_changed.connect(lambda on: setattr(self.settings, "gallery_subfolders", on))
        st = self.settings
        for signal in (st.models_dir_changed, st.device_changed, st.dtype_changed, st.memory_changed,
                       st.preview_every_changed, st.compile_changed):  # fmt: skip
            signal.connect(self._push_config)
        st.output_dir_changed.connect(self._output_dir_changed)
        st.models_dir_changed.connect(self._show_lora_folder)
        p, doc, s = self.prompt_panel, self.canvas.document, self.session
        p.extend_requested.connect(self.extend_canvas)
        p.effective_mask_toggled.connect(lambda _: self._refresh_overlay())
        p.edges_toggled.connect(lambda _: self._refresh_overlay())
        doc.extended.connect(self._remember_extension)
        for signal in (doc.mask_changed, doc.image_changed, s.mask_grow_changed, s.context_changed,
                       s.context_padding_changed, s.width_changed, s.height_changed, s.mode_changed):  # fmt: skip
            signal.connect(self._overlay_inputs_changed)
        s.mode_changed.connect(self._mode_changed)

    def _show_gallery_image(self, path: str) -> None:
        if path:
            self.view.show_path(path)
            if self.gallery.view.hasFocus():  # the user browses the gallery: show what they chose
                self.tabs.setCurrentIndex(VIEWER_TAB)

    def send_to_canvas(self, path: str) -> bool:
        """A gallery image becomes the canvas image (one undo step) once decoded off the GUI thread; then the
        canvas tab comes forward. False when the file is not there."""

        def shown() -> None:
            self.tabs.setCurrentIndex(CANVAS_TAB)
            self.show_info(f"{Path(path).name} is on the canvas.")

        return self.canvas.open_path(path, then=shown)

    def _zoom(self, how: str) -> None:
        if self.tabs.currentIndex() == CANVAS_TAB:
            view = self.canvas.view
            {"fit": view.fit, "actual_size": view.actual_size, "zoom_in": lambda: view.zoom_by(1.25),
             "zoom_out": lambda: view.zoom_by(0.8)}[how]()  # fmt: skip
        else:
            getattr(self.view, how)()

    def _mode_changed(self, mode: str) -> None:
        if mode in MASK_MODES or (mode in ("canny", "upscale") and self.session.input == "canvas"):
            self.tabs.setCurrentIndex(CANVAS_TAB)

    def _remember_thumbnail_size(self, size: int) -> None:
        self.settings.thumbnail_size = size

    def _output_dir_changed(self, folder: str) -> None:
        self.gallery.set_folder(folder)
        self._push_config()

    def _show_lora_folder(self, *_: Any) -> None:
        """The LoRA list reads <models dir>/lora/: the demo model set's in demo mode (as the engine does)."""
        self.prompt_panel.set_models_dir(demo_folder() if self.demo else Path(self.settings.models_dir).expanduser())

    def worker_config(self) -> Any:
        from ..workers.gpu import WorkerConfig  # no torch: the GPU thread imports it

        s = self.settings
        return WorkerConfig(
            models_dir=Path(s.models_dir).expanduser(),
            output_dir=Path(s.output_dir).expanduser(),
            device=s.device,
            dtype=s.dtype,
            memory=s.memory,
            preview_every=s.preview_every,
            compile=s.compile,
            demo=self.demo,
        )

    def _push_config(self, *_: Any) -> None:
        if self.service is not None:
            self.service.set_config(self.worker_config())

    # -- the generation service ------------------------------------------------------------------------

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._service_requested:
            self._service_requested = True
            QTimer.singleShot(0, self.start_service)  # creates the thread; torch loads there after the first paint

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().paintEvent(event)
        if not self._painted:
            self._painted = True
            if self.service is not None:
                QTimer.singleShot(0, self._warm_up)

    def _warm_up(self) -> None:
        # Once the window has painted, import torch and pick the device on the GPU thread rather than when the
        # first job comes: those imports hold Python's global lock for up to half a second (docs/benchmarks.md).
        if self.service is not None:
            self.service.warm_up()

    def start_service(self) -> None:
        if self.service is not None:
            return
        try:
            service = self._service_factory(self.worker_config())
        except Exception as exc:  # the window stays usable to fix settings / download weights
            self.service_label.setText("GPU worker not running")
            self.show_error(f"The GPU worker could not start: {exc}")
            return
        self.service = service
        service.preview.connect(self._show_preview)
        service.image_ready.connect(self._image_ready)
        service.job_failed.connect(self._job_failed)
        service.status_changed.connect(self.service_label.setText)
        service.job_note.connect(self._job_note)
        service.job_finished.connect(self._job_finished)
        self.queue_panel.set_service(service)
        self.service_label.setText("GPU worker ready")
        if self._painted:
            self._warm_up()
        self.service_started.emit(service)
        waiting, self._waiting = self._waiting, []
        waiting_canvas, self._waiting_canvas = self._waiting_canvas, {}
        for index, request in enumerate(waiting):
            self._submit(request, waiting_canvas.get(index))

    def _submit(self, request: GenerationRequest, canvas_job: CanvasJob | None) -> None:
        if self.service is None:
            if canvas_job is not None:
                self._waiting_canvas[len(self._waiting)] = canvas_job
            self._waiting.append(request)
            return
        job_id = self.service.submit(request)
        if canvas_job is not None:
            self._canvas_jobs[job_id] = canvas_job

    def _show_preview(self, job_id: int, pixels: Any) -> None:
        if job_id in self._canvas_jobs:
            image = array_to_qimage(pixels)
            side = PREVIEW_SIDE
            self.canvas_preview.setPixmap(
                QPixmap.fromImage(image).scaled(
                    side, side, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
                )
            )
            self.canvas_preview.adjustSize()
            self._place_canvas_preview()
            self.canvas_preview.show()
            self.canvas_preview.raise_()
            return
        self.view.show_array(pixels)
        self.tabs.setCurrentIndex(VIEWER_TAB)

    def _place_canvas_preview(self) -> None:
        viewport = self.canvas.view.viewport()
        label = self.canvas_preview
        label.move(viewport.width() - label.width() - 12, viewport.height() - label.height() - 12)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Resize and obj is self.canvas.view.viewport():
            self._place_canvas_preview()
        return super().eventFilter(obj, event)

    def _image_ready(self, job_id: int, path: str) -> None:
        self.gallery.add_path(path)
        job = self._canvas_jobs.get(job_id)
        if job is not None and job.mode in MASK_MODES:
            self._ticket += 1
            self._decodes[self._ticket] = job_id
            QThreadPool.globalInstance().start(DecodeImage(self._ticket, path, self._tasks))
            return
        self.view.show_path(path)
        self.tabs.setCurrentIndex(VIEWER_TAB)

    def _result_decoded(self, ticket: int, pixels: Any, error: str) -> None:
        job_id = self._decodes.pop(ticket, -1)
        job = self._canvas_jobs.get(job_id)
        if job_id in self._finished and job_id not in self._decodes.values():  # its last result
            self._finished.discard(job_id)
            self._canvas_jobs.pop(job_id, None)
        if job is None:
            return
        if error:
            self.show_error(error)
            return
        doc = self.canvas.document
        if job.base() is not doc.image_view().base or pixels.shape[:2] != (doc.height, doc.width):
            self.show_error("The canvas changed since this job was queued, so its result is not offered as a "
                            "candidate; it is in the gallery.")  # fmt: skip
            return
        doc.add_candidate(pixels)  # already composited by the engine: outside mask + band it is the canvas
        self.canvas_preview.hide()
        self.tabs.setCurrentIndex(CANVAS_TAB)
        self.show_info(f"Candidate {doc.candidate_index() + 1} of {doc.candidate_count()} on the canvas: "
                       "Enter accepts, Delete discards, N shows the next.")  # fmt: skip

    def _job_note(self, job_id: int, note: str) -> None:
        self.show_info(note[:1].upper() + note[1:] + ".")

    def _job_finished(self, job_id: int, outcome: str) -> None:
        if job_id in self._canvas_jobs:
            self.canvas_preview.hide()
            if job_id in self._decodes.values():
                self._finished.add(job_id)  # forgotten once its results are decoded
            else:
                self._canvas_jobs.pop(job_id, None)

    def _job_failed(self, job_id: int, message: str, kind: str) -> None:
        self.show_error(message.splitlines()[0] if message else "A job failed.")
        if kind == "missing_weights":
            job = self.queue_panel.model.job(job_id)  # the queue still holds a job that is failing
            self.open_model_manager(reason=message, variant=job.request.variant if job is not None else None)

    # -- generate ----------------------------------------------------------------------------------------

    def uses_canvas(self) -> bool:
        mode = self.session.mode
        return mode in MASK_MODES or (mode in ("canny", "upscale") and self.session.input == "canvas")

    def generate(self) -> list[GenerationRequest]:
        """One Generate press: queue `count` jobs built by the session (or say why not). In a canvas mode the
        jobs are queued once the canvas's image and mask are written; they are returned at once."""
        if self.uses_canvas():
            return self._generate_from_canvas()
        inputs = {}
        if self.session.mode == "upscale":
            size = QImageReader(self.session.source_image).size() if self.session.source_image else None
            if size is not None and size.isValid():
                inputs = self._upscale_inputs(size.width(), size.height())
        try:
            requests = self.session.requests(**inputs)
        except ValueError as exc:
            self.show_error(f"Cannot generate: {exc}")
            return []
        for request in requests:
            self._submit(request, None)
        self._announce(requests)
        return requests

    def _announce(self, requests: list[GenerationRequest]) -> None:
        images = sum(r.batch_size for r in requests)
        self.show_info(f"Queued {len(requests)} job(s), {images} image(s).")
        self.requests_submitted.emit(requests)

    def _upscale_inputs(self, width: int, height: int) -> dict[str, Any]:
        """The reference super-resolution settings: twice the picture's size, no guidance (Stage C cfg 1)."""
        w, h, _ = snap_size(width * 2, height * 2)
        s = self.session
        return {"width": w, "height": h, "stage_c": StageSettings(s.steps_c, 1.0, s.shift)}

    def _generate_from_canvas(self) -> list[GenerationRequest]:
        doc, mode, s = self.canvas.document, self.session.mode, self.session
        if doc.is_empty():
            self.show_error("Cannot generate: the canvas is empty. Open or paste an image, or send one from the "
                            "gallery (double-click).")  # fmt: skip
            return []
        folder = inputs_folder(self.settings.output_dir)
        files: dict[Path, np.ndarray] = {}
        inputs: dict[str, Any] = {}
        size = (doc.width, doc.height)
        if mode == "inpaint":
            mask = doc.mask_array()
            if not repaint_area(mask).any():
                self.show_error("Cannot generate: paint the area to repaint on the canvas first.")
                return []
            source, mask_path = input_path(folder, "source"), input_path(folder, "mask")
            files = {source: doc.image_array(), mask_path: mask}
            inputs = {"source_image": str(source), "mask_image": str(mask_path)}
        elif mode == "outpaint":
            ext = self.current_extension()
            if ext is None:
                if s.outpaint is None or not any(s.outpaint):
                    self.show_error("Cannot generate: set how far to extend the canvas, or extend it first.")
                    return []
                ext = self.extend_canvas()
                if ext is None:
                    return []
            w0, h0 = ext.width - ext.left - ext.right, ext.height - ext.top - ext.bottom
            crop = np.s_[ext.top : ext.top + h0, ext.left : ext.left + w0]
            before, before_mask = doc.image_array()[crop], doc.mask_array()[crop]
            source = input_path(folder, "source")
            files = {source: np.ascontiguousarray(before)}
            inputs = {"source_image": str(source), "mask_image": None,
                      "outpaint": (ext.left, ext.top, ext.right, ext.bottom)}  # fmt: skip
            if before_mask.any():  # what was painted inside the old picture is repainted too
                mask_path = input_path(folder, "mask")
                files[mask_path] = np.ascontiguousarray(before_mask)
                inputs["mask_image"] = str(mask_path)
            size = (ext.width, ext.height)
        elif mode == "canny":
            control = input_path(folder, "control")
            files = {control: doc.image_array()}
            inputs = {"control_image": str(control)}
            size = (s.width, s.height)
        else:  # upscale
            source = input_path(folder, "source")
            files = {source: doc.image_array()}
            inputs = {"source_image": str(source), **self._upscale_inputs(doc.width, doc.height)}
            size = (inputs["width"], inputs["height"])
        try:
            requests = s.requests(**inputs)
        except ValueError as exc:
            self.show_error(f"Cannot generate: {exc}")
            return []
        job = CanvasJob(mode, weakref.ref(doc.image_view().base), size)
        self._ticket += 1
        self._saves[self._ticket] = (requests, job)
        QThreadPool.globalInstance().start(SaveInputs(self._ticket, files, self._tasks))
        self.show_info("Saving the canvas for the job…")
        return requests

    def _inputs_saved(self, ticket: int, error: str) -> None:
        requests, job = self._saves.pop(ticket, (None, None))
        if requests is None:
            return
        if error:
            self.show_error(error)
            return
        for request in requests:
            self._submit(request, job)
        self._announce(requests)

    # -- outpainting: the canvas's extension ------------------------------------------------------------------

    def extend_canvas(self) -> masks.Extension | None:
        """Extend the canvas by the panel's outpaint margins now (one undo step); the new area is masked."""
        doc, sides = self.canvas.document, self.session.outpaint
        if doc.is_empty():
            self.show_error("The canvas is empty: open an image first.")
            return None
        if sides is None or not any(sides):
            self.show_error("Set at least one margin to extend the canvas by.")
            return None
        ext = doc.extend(*sides)
        self.tabs.setCurrentIndex(CANVAS_TAB)
        self.show_info(f"Canvas extended to {ext.width} × {ext.height}: Generate fills the new area.")
        return ext

    def _remember_extension(self, ext: masks.Extension) -> None:
        self._extension = (weakref.ref(self.canvas.document.image_view().base), ext)

    def current_extension(self) -> masks.Extension | None:
        """The extension that made the canvas as it is now (undo and redo keep it), or None."""
        if self._extension is None:
            return None
        ref, ext = self._extension
        return ext if ref() is self.canvas.document.image_view().base else None

    # -- overlays: the effective mask and the canny edges --------------------------------------------------

    def _overlay_inputs_changed(self, *_: Any) -> None:
        p = self.prompt_panel
        if p.show_mask_check.isChecked() or p.show_edges_check.isChecked():
            self._mask_timer.start()

    def _refresh_overlay(self) -> None:
        """Show (or hide) the effective mask or the canny edge layer on the canvas, as the panel asks."""
        p, doc, s, view = self.prompt_panel, self.canvas.document, self.session, self.canvas.view
        self._edges_ticket += 1  # edges still being computed are no longer wanted
        if doc.is_empty():
            view.set_effective_mask(None)
        elif p.show_mask_check.isChecked() and s.mode in MASK_MODES:
            mask = effective_mask(doc.mask_array(), s.mask_grow)
            context = None
            if s.context == "mask":
                box = masks.crop_context(repaint_area(mask).astype(np.uint8) * 255, s.context_padding, grid=128)
                context = QRect(*box) if box is not None else None
            view.set_effective_mask(mask, context)
        elif p.show_edges_check.isChecked() and s.mode == "canny":
            pixels = doc.image_array()
            QThreadPool.globalInstance().start(CannyEdges(self._edges_ticket, pixels, (s.width, s.height), self._tasks))
            self.show_info("Computing the edges…")
        else:
            view.set_effective_mask(None)

    def _edges_ready(self, ticket: int, edges: Any, error: str) -> None:
        if ticket != self._edges_ticket or not self.prompt_panel.show_edges_check.isChecked():
            return
        if error:
            self.show_error(error)
            return
        self.canvas.view.set_effective_mask(edges, None)
        self.show_info("The canny edges the job will follow are shown on the canvas.")

    def recall(self, request: GenerationRequest, made_with: str | None = None) -> None:
        """Put ``request``'s settings back in the panels; ``made_with`` ("cuda · bfloat16", from the image's metadata)
        is compared with what the GPU worker runs, since another precision gives a slightly different image."""
        self.session.apply_request(request)
        if request.mode in MASK_MODES and request.source_image and Path(request.source_image).is_file():
            self._recall_onto_canvas(request)
        running = self.service.made_with if self.service is not None else None
        self.show_info(f"Recalled the settings of seed {request.seed}.{recall_caveat(made_with, running)}")

    def _recall_onto_canvas(self, request: GenerationRequest) -> None:
        """An inpaint/outpaint recall also puts its source image (and mask) back on the canvas."""

        def with_mask() -> None:
            if request.mask_image and Path(request.mask_image).is_file():
                try:
                    mask = load_mask(request.mask_image)  # a mask PNG: small next to the image
                    self.canvas.document.set_mask(mask, "Recall mask")
                except ValueError as exc:
                    self.show_error(f"The recalled mask cannot be used: {exc}")
            self.tabs.setCurrentIndex(CANVAS_TAB)

        self.canvas.open_path(request.source_image, then=with_mask)

    # -- dialogs ---------------------------------------------------------------------------------------

    def open_model_manager(self, reason: str = "", variant: str | None = None) -> Any:
        from .model_manager import ModelManagerDialog

        dialog = self._model_manager
        if dialog is not None and dialog.isVisible():
            dialog.raise_()
            dialog.activateWindow()
            return dialog
        dialog = ModelManagerDialog(self.settings.models_dir, self, reason=reason)
        if variant:
            dialog.select_variant(variant)
        dialog.weights_changed.connect(lambda: self.show_info("The weights are in place: press Generate again."))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.destroyed.connect(lambda: setattr(self, "_model_manager", None))
        self._model_manager = dialog
        dialog.show()
        return dialog

    def open_preferences(self) -> None:
        from .preferences import PreferencesDialog

        PreferencesDialog(self.settings, self).exec()

    def choose_output_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder", self.settings.output_dir)
        if folder:
            self.settings.output_dir = folder

    def open_output_folder(self) -> None:
        folder = Path(self.settings.output_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def show_shortcuts(self) -> None:
        from .help import ShortcutsDialog

        ShortcutsDialog(self).exec()

    def show_about(self) -> None:
        QMessageBox.about(
            self,
            "About Cascade Studio",
            f"<b>Cascade Studio {__version__}</b><br>A desktop studio for Stability AI's Stable Cascade, "
            "running on your own machine.",
        )

    def toggle_full_screen(self) -> None:
        self.setWindowState(self.windowState() ^ Qt.WindowState.WindowFullScreen)

    # -- closing ---------------------------------------------------------------------------------------

    def save_settings(self) -> None:
        self.settings.window_geometry = self.saveGeometry()
        self.settings.window_state = self.saveState()
        self.settings.session_state = self.session.state()
        self.settings.sync()

    def closeEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt override
        self.save_settings()
        if self._model_manager is not None:
            self._model_manager.stop_threads()
            self._model_manager.close()
        if self.service is not None:
            self.queue_panel.set_service(None)
            self.service.shutdown()
            self.service = None
        self._saves.clear()
        self.gallery.shutdown()  # its thumbnail threads and index
        super().closeEvent(event)
