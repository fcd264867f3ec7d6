"""The main window: layout, start-up without torch, Ctrl+Enter, persistence, wiring, help, image view."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QObject, QPoint, QPointF, QSettings, Qt, QUrl, Signal
from PySide6.QtGui import QAction, QColor, QDropEvent, QImage, QKeySequence, QWheelEvent
from PySide6.QtWidgets import QApplication, QDockWidget

from cascade_studio.core.request import GenerationRequest, StageSettings
from cascade_studio.state.settings import Settings
from cascade_studio.ui.help import ShortcutsDialog, shortcut_rows
from cascade_studio.ui.image_view import ImageView
from cascade_studio.ui.main_window import DEMO_NOTICE, MainWindow
from tests.conftest import ROOT


class FakeService(QObject):
    """Stands in for workers.gpu.GenerationService: records calls, emits what a test tells it to."""

    job_queued = Signal(int, object)
    job_started = Signal(int)
    job_note = Signal(int, str)
    progress = Signal(int, str, int, int)
    preview = Signal(int, object)
    image_ready = Signal(int, str)
    job_failed = Signal(int, str, str)
    job_finished = Signal(int, str)
    status_changed = Signal(str)

    made: list[FakeService] = []

    def __init__(self, config):
        super().__init__()
        self.made_with: str | None = None
        self.configs = [config]
        self.submitted: list[GenerationRequest] = []
        self.calls: list[str] = []
        FakeService.made.append(self)

    @property
    def config(self):
        return self.configs[-1]

    def set_config(self, config):
        self.configs.append(config)

    def submit(self, request):
        self.submitted.append(request)
        self.job_queued.emit(len(self.submitted), request)
        return len(self.submitted)

    def warm_up(self):
        self.calls.append("warm_up")

    def current_job(self):
        return None

    def pending_jobs(self):
        return []

    def cancel(self, job_id):
        self.calls.append(f"cancel {job_id}")

    def cancel_current(self):
        self.calls.append("cancel_current")

    def cancel_all(self):
        self.calls.append("cancel_all")

    def cancel_all_but_current(self):
        self.calls.append("cancel_all_but_current")

    def remove_pending(self, job_id):
        self.calls.append(f"remove {job_id}")

    def shutdown(self):
        self.calls.append("shutdown")


def _settings(tmp_path) -> Settings:
    store = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    return Settings(store, models_dir_default=tmp_path / "models", output_dir_default=tmp_path / "out")


def _open(qtbot, settings, **kwargs) -> MainWindow:
    window = MainWindow(settings, service_factory=FakeService, **kwargs)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.service_started, timeout=5000):
        window.show()
    qtbot.waitExposed(window)
    return window


@pytest.fixture
def window(qtbot, tmp_path):
    FakeService.made.clear()
    window = _open(qtbot, _settings(tmp_path))
    yield window
    window.close()


def _press_generate(qtbot, window):
    window.activateWindow()
    window.prompt_panel.prompt_edit.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is window.prompt_panel.prompt_edit)
    qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)


# -- layout and start-up -----------------------------------------------------------------------------------


def test_window_opens_with_view_docks_menus_and_a_service_started_after_show(qtbot, tmp_path):
    FakeService.made.clear()
    window = MainWindow(_settings(tmp_path), service_factory=FakeService, demo=True)
    qtbot.addWidget(window)
    assert FakeService.made == [] and window.service is None  # nothing heavy before the window is up
    with qtbot.waitSignal(window.service_started):
        window.show()
    assert window.service is FakeService.made[0] and window.service.config.demo is True
    assert window.centralWidget() is window.tabs and window.tabs.widget(1) is window.view
    docks = {d.objectName(): d.widget() for d in window.findChildren(QDockWidget)}
    assert docks["prompt_dock"] is window.prompt_panel
    assert docks["queue_dock"] is window.queue_panel and docks["gallery_dock"] is window.gallery
    menus = [a.text().replace("&", "") for a in window.menuBar().actions()]
    assert menus == ["File", "Edit", "View", "Canvas", "Generate", "Help"]
    assert window.demo_label.isVisible() and window.demo_label.text() == DEMO_NOTICE
    qtbot.waitUntil(lambda: "warm_up" in window.service.calls)  # torch loads once the window has painted
    window.close()
    assert window.service is None and FakeService.made[0].calls[-1] == "shutdown"


def test_without_demo_there_is_no_demo_notice(window):
    assert not window.demo_label.isVisible() and window.service.config.demo is False


def test_start_up_does_not_import_torch_before_the_window_is_shown(tmp_path):
    """app.run(): the window paints before torch (or open_clip, huggingface_hub) is imported; the service
    starts after; settings go to the organisation's QSettings file (here under a temporary XDG_CONFIG_HOME)."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        heavy = ("torch", "open_clip", "huggingface_hub", "safetensors")
        seen_early, painted, report = [], [], []

        class Spy:  # records a heavy import that happens before the window's first paint
            def find_spec(self, name, path=None, target=None):
                if name in heavy and not painted:
                    seen_early.append(name)
                return None

        sys.meta_path.insert(0, Spy())
        from PySide6.QtCore import QEvent, QObject, QSettings, QTimer
        from PySide6.QtWidgets import QApplication
        from cascade_studio import app as studio
        from cascade_studio.ui.main_window import MainWindow

        class PaintWatch(QObject):
            def eventFilter(self, obj, event):
                if event.type() == QEvent.Type.Paint and isinstance(obj.window(), MainWindow):
                    if not painted:
                        clean = not seen_early and "torch" not in sys.modules
                        report.append("clean" if clean else f"early {{seen_early}}")
                    painted.append(True)
                return False

        application = studio.create_application([])
        watch = PaintWatch()
        application.installEventFilter(watch)

        def poll():
            windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow)]
            if painted and windows and windows[0].service is not None:
                report.append(type(windows[0].service).__name__)
                windows[0].close()
            else:
                QTimer.singleShot(10, poll)

        QTimer.singleShot(0, poll)
        status = studio.run(demo=True)
        print(report[0]); print(report[1]); print(status)
        print(QSettings().fileName())
        """
    )
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               QT_QPA_PLATFORM="offscreen")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    clean, service, status, settings_file = out.stdout.splitlines()[:4]
    assert clean == "clean"
    assert service == "GenerationService"  # the real service did start, after the first paint
    assert status == "0"
    assert settings_file.startswith(str(tmp_path / "config")) and "Cascade Studio" in settings_file
    assert any((tmp_path / "config").rglob("*.conf")), "the window saved its layout"


# -- generating ----------------------------------------------------------------------------------------------


def test_ctrl_enter_in_the_prompt_queues_count_requests(qtbot, window):
    panel = window.prompt_panel
    qtbot.keyClicks(panel.prompt_edit, "a quiet harbour")
    panel.count_spin.setValue(3)
    panel.batch_spin.setValue(2)
    panel.seed_policy_combo.setCurrentIndex(panel.seed_policy_combo.findData("fixed"))
    panel.seed_edit.setText("40")
    panel.seed_edit.editingFinished.emit()
    with qtbot.waitSignal(window.requests_submitted) as submitted:
        _press_generate(qtbot, window)
    requests = window.service.submitted
    assert submitted.args == [requests] and len(requests) == 3
    assert [r.prompt for r in requests] == ["a quiet harbour"] * 3
    assert [r.seed for r in requests] == [40, 42, 44] and {r.batch_size for r in requests} == {2}
    assert window.session.history[-1]["prompt"] == "a quiet harbour"


def test_values_still_being_typed_count_when_ctrl_enter_is_pressed(qtbot, window):
    panel = window.prompt_panel
    window.session.prompt = "typed"
    window.session.seed_policy = "fixed"
    window.activateWindow()
    for widget, text in ((panel.steps_c_spin, "7"), (panel.seed_edit, "555")):
        widget.setFocus()
        qtbot.waitUntil(lambda w=widget: QApplication.focusWidget() in (w, getattr(w, "lineEdit", lambda: w)()))
        widget.selectAll()
        qtbot.keyClicks(QApplication.focusWidget(), text)  # no Return, no focus change
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    (request,) = window.service.submitted
    assert (request.seed, request.stage_c.steps) == (555, 7)


def test_generate_before_the_service_is_up_is_queued_when_it_starts(qtbot, tmp_path):
    FakeService.made.clear()
    window = MainWindow(_settings(tmp_path), service_factory=FakeService)
    qtbot.addWidget(window)
    window.session.prompt = "early"
    assert len(window.generate()) == 1
    with qtbot.waitSignal(window.service_started):
        window.show()
    assert [r.prompt for r in window.service.submitted] == ["early"]
    window.close()


def test_an_invalid_setting_is_reported_and_nothing_is_queued(qtbot, window):
    window.session.prompt = "x"
    window.session.mode = "img2img"
    assert window.generate() == []
    assert window.service.submitted == [] and "source_image" in window.statusBar().currentMessage()


def test_the_panel_and_the_session_stay_equal_both_ways(qtbot, window):
    panel, session = window.prompt_panel, window.session
    session.prompt = "from the model"
    assert panel.prompt_edit.toPlainText() == "from the model"
    panel.steps_c_spin.setValue(33)
    assert session.steps_c == 33
    session.cfg_b = 2.5
    assert panel.cfg_b_spin.value() == 2.5
    panel.preset_combo.setCurrentIndex(panel.preset_combo.findData("21:9"))
    assert (session.width, session.height) == (1536, 640) and panel.width_spin.value() == 1536
    panel.width_spin.setValue(1000)  # typed; the model snaps it and the spin box shows the snapped value
    assert session.width == 1024 and panel.width_spin.value() == 1024
    assert panel.size_note.isVisibleTo(panel) and "1000" in panel.size_note.text()
    assert panel.preset_combo.currentData() == "custom"
    session.mode = "img2img"
    assert panel.mode_combo.currentData() == "img2img" and panel.strength_spin.isVisibleTo(panel)
    session.seed = 2**63
    assert panel.seed_edit.text() == str(2**63)
    panel.dice_button.click()
    assert session.seed < 2**31 and panel.seed_edit.text() == str(session.seed)


def test_dropping_an_image_file_on_the_panel_makes_it_the_source(qtbot, window, tmp_path):
    path = tmp_path / "source.png"
    image = QImage(64, 48, QImage.Format.Format_RGB32)
    image.fill(QColor("orange"))
    assert image.save(str(path))
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    panel = window.prompt_panel
    drop = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)  # fmt: skip
    # QApplication.sendEvent does not deliver a synthetic drop (Qt only routes drops from a real drag)
    panel.dragEnterEvent(drop)
    assert drop.isAccepted()
    panel.dropEvent(drop)
    assert window.session.source_image == str(path) and window.session.mode == "img2img"
    assert panel.source_label.text() == "source.png" and not panel.source_thumb.pixmap().isNull()
    not_an_image = QMimeData()
    not_an_image.setUrls([QUrl.fromLocalFile(str(tmp_path / "notes.txt"))])
    refused = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, not_an_image, Qt.MouseButton.LeftButton,
                         Qt.KeyboardModifier.NoModifier)  # fmt: skip
    refused.ignore()
    panel.dragEnterEvent(refused)
    assert not refused.isAccepted()
    panel.dropEvent(refused)
    assert window.session.source_image == str(path)


# -- the service's signals reach the window ------------------------------------------------------------------


def test_previews_and_finished_images_are_shown(qtbot, window, tmp_path):
    frame = np.zeros((24, 32, 3), np.uint8)
    frame[..., 0] = 200
    window.service.preview.emit(1, frame)
    assert window.view.image_size == (32, 24) and window.view.path == ""
    frame[...] = 0  # the view holds its own copy
    assert QColor(window.view._item.pixmap().toImage().pixel(0, 0)).red() == 200
    path = tmp_path / "done.png"
    image = QImage(64, 40, QImage.Format.Format_RGB32)
    image.fill(QColor("white"))
    image.save(str(path))
    added = []
    window.gallery.add_path = added.append
    with qtbot.waitSignal(window.view.image_changed) as changed:
        window.service.image_ready.emit(1, str(path))
    assert changed.args == [str(path)] and window.view.image_size == (64, 40) and added == [str(path)]


def test_missing_weights_open_the_model_manager_once(qtbot, window):
    window.service.job_failed.emit(3, "Stage C is missing: download it", "missing_weights")
    dialog = window._model_manager
    assert dialog is not None and dialog.isVisible() and "Stage C is missing" in dialog.reason.text()
    window.service.job_failed.emit(4, "Stage C is missing: download it", "missing_weights")
    assert window._model_manager is dialog
    qtbot.waitUntil(lambda: not dialog._busy())
    dialog.close()
    window.service.job_failed.emit(5, "out of memory, try sequential", "out_of_memory")
    assert "out of memory" in window.statusBar().currentMessage()
    assert window._model_manager is None or not window._model_manager.isVisible()


def test_missing_weights_of_a_full_job_select_the_full_variant(qtbot, window):
    window.session.prompt, window.session.variant = "big", "full"
    window.generate()
    window.service.job_failed.emit(1, "Stage C (3.6B) is missing", "missing_weights")
    dialog = window._model_manager
    assert dialog.selected_variant() == "full"
    qtbot.waitUntil(lambda: not dialog._busy())
    dialog.close()


def test_alt_up_and_down_walk_the_prompt_history(qtbot, window):
    for prompt in ("first", "second"):
        window.session.prompt = prompt
        window.generate()
    window.session.prompt = "typing"
    window.activateWindow()
    window.prompt_panel.prompt_edit.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is window.prompt_panel.prompt_edit)
    qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_Up, Qt.KeyboardModifier.AltModifier)
    assert window.prompt_panel.prompt_edit.toPlainText() == "second"
    qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_Up, Qt.KeyboardModifier.AltModifier)
    assert window.prompt_panel.prompt_edit.toPlainText() == "first"
    qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_Down, Qt.KeyboardModifier.AltModifier)
    qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_Down, Qt.KeyboardModifier.AltModifier)
    assert window.prompt_panel.prompt_edit.toPlainText() == "typing"


def test_service_status_is_shown_in_the_status_bar(window):
    window.service.status_changed.emit("cuda · bfloat16 · one stage at a time")
    assert window.service_label.text() == "cuda · bfloat16 · one stage at a time"


def test_cancel_actions_reach_the_service_from_anywhere_in_the_window(qtbot, window):
    generate_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Generate")
    assert len(window.cancel_actions) == 3 and set(window.cancel_actions) <= set(generate_menu.actions())
    window.session.prompt = "x"
    window.session.count = 2
    window.generate()  # two jobs in the queue panel: the first running, one pending
    window.service.job_started.emit(1)
    window.activateWindow()
    target = window.prompt_panel.prompt_edit  # focus far from the queue panel
    target.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is target)
    ctrl, alt, shift = (Qt.KeyboardModifier.ControlModifier, Qt.KeyboardModifier.AltModifier,
                        Qt.KeyboardModifier.ShiftModifier)  # fmt: skip
    period, backspace = Qt.Key.Key_Period, Qt.Key.Key_Backspace  # cancel all: Ctrl+Shift+Backspace
    for key, modifiers, call in ((period, ctrl, "cancel 1"), (period, ctrl | alt, "cancel_all_but_current"),
                                 (backspace, ctrl | shift, "cancel_all")):  # fmt: skip
        assert all(a.isEnabled() for a in window.cancel_actions)
        qtbot.keyClick(target, key, modifiers)
        assert window.service.calls[-1] == call


def test_gallery_signals_recall_show_and_set_the_source(qtbot, window, tmp_path):
    gallery = window.gallery
    request = GenerationRequest("recalled", seed=9, width=768, height=1152, stage_c=StageSettings(5, 3.0, 2.0))
    gallery.recall_requested.emit(request, None)
    assert window.session.request() == request
    assert window.statusBar().currentMessage() == "Recalled the settings of seed 9."
    window.service.made_with = "cpu · bfloat16"
    gallery.recall_requested.emit(request.with_(seed=10), "cuda · float32")
    assert window.session.request() == request.with_(seed=10)
    said = window.statusBar().currentMessage()
    assert "seed 10" in said and "Made in float32" in said and "runs bfloat16" in said and "Precision" in said
    gallery.use_as_source_requested.emit(str(tmp_path / "a.png"))
    assert window.session.source_image == str(tmp_path / "a.png")


# -- persistence ---------------------------------------------------------------------------------------------


def test_settings_layout_and_panel_values_survive_a_restart(qtbot, tmp_path):
    FakeService.made.clear()
    settings = _settings(tmp_path)
    first = _open(qtbot, settings)
    settings.device, settings.dtype, settings.memory, settings.preview_every = "cpu", "fp32", "sequential", 3
    assert first.service.config.memory == "sequential" and first.service.config.preview_every == 3  # live
    assert not first.service.config.compile
    settings.compile = True
    assert first.service.config.compile  # live
    settings.output_dir = str(tmp_path / "elsewhere")
    assert first.service.config.output_dir == tmp_path / "elsewhere"
    first.session.prompt = "kept across restarts"
    first.session.set_size(1152, 768)
    first.session.steps_c = 28
    first.queue_dock.hide()
    first.gallery.set_thumbnail_size(200)  # the gallery's size slider
    assert settings.thumbnail_size == 200
    assert not first.gallery.subfolders_check.isChecked()
    first.gallery.subfolders_check.setChecked(True)
    assert settings.gallery_subfolders
    screen = first.screen().availableGeometry()  # a restored window is kept inside the screen
    first.resize(screen.width() - 60, screen.height() - 70)
    wanted = first.size()
    first.close()
    assert first.service is None

    second = _open(qtbot, _settings(tmp_path))
    config = second.service.config
    assert (config.device, config.dtype, config.memory, config.preview_every) == ("cpu", "fp32", "sequential", 3)
    assert config.compile and config.output_dir == tmp_path / "elsewhere"
    assert second.prompt_panel.prompt_edit.toPlainText() == "kept across restarts"
    assert (second.session.width, second.session.height, second.session.steps_c) == (1152, 768, 28)
    assert second.prompt_panel.preset_combo.currentData() == "3:2"
    assert second.queue_dock.isHidden() and not second.gallery_dock.isHidden()
    assert second.gallery.thumbnail_size() == 200
    assert second.gallery.subfolders_check.isChecked() and second.gallery.model.subfolders
    assert second.size() == wanted
    second.close()


# -- help ----------------------------------------------------------------------------------------------------


def test_help_lists_every_real_shortcut_and_follows_changes(qtbot, window):
    actions = [a for a in window.findChildren(QAction) if not a.shortcut().isEmpty()]
    assert window.generate_action in actions and window.quit_action in actions
    dialog = ShortcutsDialog(window)
    qtbot.addWidget(dialog)
    rows = dialog.rows()
    for action in actions:
        keys = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        assert any(keys in row[2] for row in rows), action.text()
    generate = next(row for row in rows if row[1] == "Generate")
    assert generate[0] == "Generate" and "Ctrl+Return" in generate[2]
    assert any(row[1] == "Pick" and row[2] == "P" for row in rows)  # the gallery's culling keys

    window.generate_action.setShortcut(QKeySequence("Ctrl+G"))
    assert any(row[1] == "Generate" and row[2] == "Ctrl+G" for row in shortcut_rows(window))
    window.generate_action.setShortcuts([QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")])


def test_no_two_actions_share_a_key(window):
    owners: dict[str, str] = {}
    for action in window.findChildren(QAction):
        for key in action.shortcuts():
            text = key.toString()
            if action.shortcutContext() != Qt.ShortcutContext.WindowShortcut:
                continue  # panel-scoped keys (the queue's Delete) may repeat outside their panel
            assert text not in owners, f"{text}: {owners.get(text)} and {action.text()}"
            owners[text] = action.text()


# -- the image view ------------------------------------------------------------------------------------------


def _png(path, w, h, color="green"):
    image = QImage(w, h, QImage.Format.Format_RGB32)
    image.fill(QColor(color))
    assert image.save(str(path))
    return str(path)


def test_image_view_loads_a_file_fits_zooms_to_the_cursor_and_shows_100_percent(qtbot, tmp_path):
    view = ImageView()
    qtbot.addWidget(view)
    view.resize(400, 300)
    view.show()
    qtbot.waitExposed(view)
    with qtbot.waitSignal(view.image_changed) as changed:
        view.show_path(_png(tmp_path / "big.png", 1600, 1200))
    assert changed.args == [str(tmp_path / "big.png")] and view.image_size == (1600, 1200)
    assert view.fitting and view.zoom == pytest.approx(0.25, rel=0.02)

    cursor = QPoint(300, 100)
    under_before = view.mapToScene(cursor)
    wheel = QWheelEvent(QPointF(cursor), QPointF(view.viewport().mapToGlobal(cursor)), QPoint(), QPoint(0, 120),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase,
                        False)  # fmt: skip
    QApplication.sendEvent(view.viewport(), wheel)
    assert view.zoom == pytest.approx(0.25 * 1.25, rel=0.02) and not view.fitting
    under_after = view.mapToScene(cursor)
    assert abs(under_after.x() - under_before.x()) < 8 and abs(under_after.y() - under_before.y()) < 8

    view.actual_size()
    assert view.zoom == 1.0
    view.fit()
    assert view.zoom == pytest.approx(0.25, rel=0.02)


def test_image_view_shows_only_the_newest_request(qtbot, tmp_path):
    view = ImageView()
    qtbot.addWidget(view)
    slow = _png(tmp_path / "slow.png", 2000, 2000, "red")
    view.show_path(slow)
    view.show_array(np.full((10, 20, 3), 255, np.uint8))  # a preview asked for after the file
    qtbot.waitUntil(lambda: view._ticket and True)
    from PySide6.QtCore import QThreadPool

    QThreadPool.globalInstance().waitForDone(5000)
    QApplication.processEvents()
    assert view.image_size == (20, 10)
    with qtbot.waitSignal(view.load_failed) as failed:
        view.show_path(tmp_path / "missing.png")
    assert "missing.png" in failed.args[0]


# -- end to end: the real GPU service on the demo weights ----------------------------------------------------


def test_ctrl_enter_generates_with_live_previews_into_the_view_and_the_gallery(qtbot, tmp_path, monkeypatch,
                                                                               demo_cache):  # fmt: skip
    monkeypatch.setenv("XDG_CACHE_HOME", str(demo_cache))  # the demo weights built once per test session
    settings = _settings(tmp_path)
    settings.device = "cpu"
    window = MainWindow(settings, demo=True)  # the default factory: workers.gpu.GenerationService
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.service_started, timeout=10000):
        window.show()
    try:
        session = window.session
        session.prompt = "a tiny test"
        session.steps_c, session.steps_b = 3, 2
        session.set_size(256, 256)
        session.seed_policy, session.seed = "fixed", 7
        previews = []
        window.service.preview.connect(lambda job_id, pixels: previews.append(window.view.image_size))
        with qtbot.waitSignal(window.service.image_ready, timeout=120000) as ready:
            _press_generate(qtbot, window)
        path = ready.args[1]
        assert previews and all(size != (256, 256) for size in previews)  # small previews reached the view
        qtbot.waitUntil(lambda: window.view.path == path, timeout=10000)
        assert window.view.image_size == (256, 256)
        assert path.startswith(str(tmp_path / "out"))
        qtbot.waitUntil(lambda: any(str(e.path) == path for e in window.gallery.model.entries()), timeout=10000)
        entry = next(e for e in window.gallery.model.entries() if str(e.path) == path)
        assert (entry.prompt, entry.seed, entry.width, entry.height) == ("a tiny test", 7, 256, 256)
        assert GenerationRequest.from_json(entry.request_json) == session.request()
    finally:
        window.close()
    assert window.service is None


def test_preferences_write_the_settings_and_the_worker_follows(qtbot, window, tmp_path):
    from cascade_studio.ui.preferences import PreferencesDialog

    dialog = PreferencesDialog(window.settings, window)
    qtbot.addWidget(dialog)
    assert dialog.models_edit.text() == str(tmp_path / "models")
    dialog.models_edit.setText(str(tmp_path / "weights"))
    dialog.device_combo.setCurrentText("cuda:1")
    dialog.dtype_combo.setCurrentIndex(dialog.dtype_combo.findData("bf16"))
    dialog.memory_combo.setCurrentIndex(dialog.memory_combo.findData("resident"))
    dialog.preview_spin.setValue(0)
    assert not dialog.compile_check.isChecked()
    dialog.compile_check.setChecked(True)
    dialog.accept()
    s = window.settings
    assert (s.models_dir, s.device, s.dtype, s.memory, s.preview_every) == (
        str(tmp_path / "weights"),
        "cuda:1",
        "bf16",
        "resident",
        0,
    )
    assert s.compile
    config = window.service.config
    assert (config.models_dir, config.device, config.dtype, config.memory, config.preview_every) == (
        tmp_path / "weights",
        "cuda:1",
        "bf16",
        "resident",
        0,
    )
    assert config.compile
    again = PreferencesDialog(s, window)  # the dialog shows the stored value
    qtbot.addWidget(again)
    assert again.compile_check.isChecked()


def test_the_qt_binding_does_not_lose_references_to_none_and_true(qapp):
    """A long session makes millions of Qt calls. PySide6 6.12.0 on CPython 3.11 drops one reference to None
    per void call (and to True per signal emit), so the window dies with "none_dealloc" after a few thousand
    calls; a version without the bug keeps both counts steady."""
    from PySide6.QtWidgets import QLabel

    label = QLabel()
    holder = ImageView()  # any QObject with a Python-declared signal
    none_before, true_before = sys.getrefcount(None), sys.getrefcount(True)
    for _ in range(200):
        label.setText("x")
        holder.zoom_changed.emit(1.0)
    assert sys.getrefcount(None) >= none_before - 20
    assert sys.getrefcount(True) >= true_before - 20
