"""The main window: image view in the centre; prompt, queue and gallery docks; menus; the status bar.

The window shows first and starts the GPU service afterwards (`QTimer.singleShot(0, ...)` from the first
show), so nothing on the start-up path imports torch; the service imports it on its own thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox, QWidget

from .. import __version__
from ..core.request import GenerationRequest
from ..state.session import SessionModel
from ..state.settings import Settings
from .gallery import GalleryPanel
from .image_view import ImageView
from .prompt_panel import PromptPanel
from .queue_panel import QueuePanel

DEMO_NOTICE = "Demo mode: demo weights make noise, not pictures"
ERROR_MESSAGE_MS = 12000
INFO_MESSAGE_MS = 4000


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
        self._waiting: list[GenerationRequest] = []  # pressed Generate before the service was up
        self._job_variants: dict[int, str] = {}
        self._model_manager = None
        self.setWindowTitle("Cascade Studio" + (" — demo" if demo else ""))
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)

        self.session = SessionModel(settings, self)
        self.session.restore_state(settings.session_state)

        self.view = ImageView(self)
        self.view.load_failed.connect(self.show_error)
        self.setCentralWidget(self.view)

        self.prompt_panel = PromptPanel(self.session)
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

        self.fit_action = self._action("&Fit to window", self.view.fit, "Ctrl+0")
        self.actual_size_action = self._action("&Actual size (100 %)", self.view.actual_size, "Ctrl+1")
        self.zoom_in_action = self._action("Zoom &in", self.view.zoom_in, ["Ctrl++", "Ctrl+="])
        self.zoom_out_action = self._action("Zoom o&ut", self.view.zoom_out, "Ctrl+-")
        self.full_screen_action = self._action("F&ull screen", self.toggle_full_screen, "F11")

        self.generate_action = self.prompt_panel.generate_action
        # The queue panel's cancel actions work from anywhere in the window once they are in the menu;
        # "remove pending" stays inside the queue (Delete also moves gallery images to the trash).
        q = self.queue_panel
        self.cancel_actions = [q.cancel_current_action, q.cancel_all_action, q.cancel_others_action]
        for action in self.cancel_actions:
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)

        self.shortcuts_action = self._action("&Keyboard shortcuts", self.show_shortcuts, "F1")
        self.about_action = self._action("&About Cascade Studio", self.show_about)

    def _make_menus(self) -> None:
        bar = self.menuBar()
        file = bar.addMenu("&File")
        file.addAction(self.open_source_action)
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
        for action in (self.fit_action, self.actual_size_action, self.zoom_in_action, self.zoom_out_action):
            view.addAction(action)
        view.addSeparator()
        view.addAction(self.full_screen_action)

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
        g.send_to_canvas_requested.connect(self.view.show_path)
        g.use_as_source_requested.connect(self.session.use_source_image)
        g.current_changed.connect(self._show_gallery_image)
        g.thumbnail_size_changed.connect(self._remember_thumbnail_size)
        st = self.settings
        for signal in (st.models_dir_changed, st.device_changed, st.dtype_changed, st.memory_changed,
                       st.preview_every_changed):  # fmt: skip
            signal.connect(self._push_config)
        st.output_dir_changed.connect(self._output_dir_changed)

    def _show_gallery_image(self, path: str) -> None:
        if path:
            self.view.show_path(path)

    def _remember_thumbnail_size(self, size: int) -> None:
        self.settings.thumbnail_size = size

    def _output_dir_changed(self, folder: str) -> None:
        self.gallery.set_folder(folder)
        self._push_config()

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
            QTimer.singleShot(0, self.start_service)  # after the first paint: torch loads on its own thread

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
        service.job_queued.connect(lambda job_id, request: self._job_variants.__setitem__(job_id, request.variant))
        service.job_finished.connect(lambda job_id, outcome: self._job_variants.pop(job_id, None))
        service.status_changed.connect(self.service_label.setText)
        self.queue_panel.set_service(service)
        self.service_label.setText("GPU worker ready")
        self.service_started.emit(service)
        waiting, self._waiting = self._waiting, []
        for request in waiting:
            service.submit(request)

    def _show_preview(self, job_id: int, pixels: Any) -> None:
        self.view.show_array(pixels)

    def _image_ready(self, job_id: int, path: str) -> None:
        self.gallery.add_path(path)
        self.view.show_path(path)

    def _job_failed(self, job_id: int, message: str, kind: str) -> None:
        self.show_error(message.splitlines()[0] if message else "A job failed.")
        if kind == "missing_weights":
            self.open_model_manager(reason=message, variant=self._job_variants.get(job_id))

    def generate(self) -> list[GenerationRequest]:
        """One Generate press: queue `count` jobs built by the session (or say why not)."""
        try:
            requests = self.session.requests()
        except ValueError as exc:
            self.show_error(f"Cannot generate: {exc}")
            return []
        if self.service is None:
            self._waiting.extend(requests)
        else:
            for request in requests:
                self.service.submit(request)
        images = sum(r.batch_size for r in requests)
        self.show_info(f"Queued {len(requests)} job(s), {images} image(s).")
        self.requests_submitted.emit(requests)
        return requests

    def recall(self, request: GenerationRequest) -> None:
        self.session.apply_request(request)
        self.show_info(f"Recalled the settings of seed {request.seed}.")

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
        self.gallery.shutdown()  # its thumbnail threads and index
        super().closeEvent(event)
