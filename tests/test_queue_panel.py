"""The queue model and panel: fed by the real GPU worker (demo weights), driven through the panel's buttons."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PySide6.QtCore import Qt

from cascade_studio.state.queue import (
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    ErrorRole,
    JobIdRole,
    PreviewRole,
    ProgressRole,
    QueueModel,
    StateRole,
)
from cascade_studio.ui.image_view import array_to_qimage
from cascade_studio.ui.queue_panel import QueuePanel
from cascade_studio.workers.gpu import GenerationService, WorkerConfig
from tests.test_gpu_worker import TIMEOUT_MS, Gate, Recorder, cpu_precision, tiny_request


@pytest.fixture
def make_panel(qtbot, tmp_path, monkeypatch, demo_cache):
    monkeypatch.setenv("XDG_CACHE_HOME", str(demo_cache))
    services = []

    def make(**changes) -> tuple[QueuePanel, GenerationService, Recorder]:
        fields = {"models_dir": tmp_path / "no-models", "output_dir": tmp_path / "out", "device": "cpu", "demo": True}
        service = GenerationService(WorkerConfig(**{**fields, **changes}))
        services.append(service)
        panel = QueuePanel()
        qtbot.addWidget(panel)
        panel.set_service(service)
        panel.show()
        return panel, service, Recorder(service)

    yield make
    for service in services:
        service.shutdown()


@pytest.fixture
def gate(make_panel):
    g = Gate()
    yield g
    g.open()


def rows(panel: QueuePanel) -> list[tuple[int, str]]:
    m = panel.model
    return [(m.index(r).data(JobIdRole), m.index(r).data(StateRole)) for r in range(m.rowCount())]


def test_model_follows_the_service_signals(qtbot):
    model = QueueModel()
    request = tiny_request()
    with qtbot.waitSignal(model.rowsInserted):
        model.on_job_queued(1, request)
    model.on_job_queued(2, request.with_(seed=8))
    model.on_job_queued(3, request.with_(seed=9))
    assert model.pending_jobs() == [1, 2, 3] and model.running_job() == -1

    with qtbot.waitSignal(model.running_changed) as started:
        model.on_job_started(1)
    assert started.args == [1]
    model.on_progress(1, "c", 2, 3)
    frame = np.full((4, 4, 3), 200, np.uint8)
    with qtbot.waitSignal(model.preview_changed):
        model.on_preview(1, frame)
    first = model.index(0)
    assert first.data(StateRole) == RUNNING and first.data(ProgressRole) == {"c": (2, 3)}
    assert first.data(PreviewRole) is frame
    assert "C 2/3" in first.data(Qt.ItemDataRole.DisplayRole) and "a lighthouse at dusk" in first.data()

    model.on_image_ready(1, "/out/a.png")
    model.on_job_finished(1, "done")
    assert model.index(0).data(StateRole) == DONE and model.index(0).data(PreviewRole) is None
    assert model.running_job() == -1
    model.on_preview(1, frame)  # a late frame of a finished job is ignored
    assert model.index(0).data(PreviewRole) is None

    model.on_job_finished(2, "removed")
    assert [model.index(r).data(JobIdRole) for r in range(model.rowCount())] == [1, 3]
    model.on_job_started(3)
    model.on_job_failed(3, "missing in the weights folder", "missing_weights")
    model.on_job_finished(3, "failed")
    failed = model.index(1)
    assert failed.data(StateRole) == FAILED and failed.data(ErrorRole) == "missing in the weights folder"
    assert "failed: missing in the weights folder" in failed.data()
    assert failed.data(Qt.ItemDataRole.ForegroundRole) is not None
    model.clear_finished()
    assert model.rowCount() == 0


def test_array_to_qimage_keeps_the_pixels():
    pixels = np.zeros((3, 5, 3), np.uint8)
    pixels[1, 2] = (10, 20, 30)
    image = array_to_qimage(pixels[:, :, :])
    assert (image.width(), image.height()) == (5, 3)
    del pixels  # the image owns a copy
    assert image.pixelColor(2, 1).getRgb()[:3] == (10, 20, 30)


def test_a_job_shows_previews_and_progress_then_finishes(qtbot, make_panel):
    panel, service, rec = make_panel()
    shown = []

    def on_preview(job_id):
        pixmap = panel.preview_label.pixmap()
        shown.append(not pixmap.isNull())

    panel.model.preview_changed.connect(on_preview)  # after the panel's own slot
    job = service.submit(tiny_request())
    assert rows(panel) == [(job, PENDING)]
    qtbot.waitUntil(lambda: rec.outcome(job) is not None, timeout=TIMEOUT_MS)
    assert rows(panel) == [(job, DONE)], rec.of("job_failed")
    assert shown and all(shown)
    bars = panel.stage_bars
    assert [(bars[s].value(), bars[s].maximum()) for s in "cba"] == [(3, 3), (2, 2), (1, 1)]
    assert panel.model.job(job).paths == [e[2] for e in rec.of("image_ready", job)]
    assert "done · 1 image" in panel.model.index(0).data()
    assert panel.preview_label.text() == "No job running"
    assert panel.status_label.text().startswith(f"cpu · {cpu_precision()}")


def test_a_failed_job_shows_its_message_and_the_next_one_runs(qtbot, make_panel, tmp_path):
    panel, service, rec = make_panel(demo=False, models_dir=tmp_path / "empty")
    failing = service.submit(tiny_request())
    qtbot.waitUntil(lambda: rec.outcome(failing) is not None, timeout=TIMEOUT_MS)
    text = panel.model.index(0).data()
    assert rows(panel) == [(failing, FAILED)]
    assert "failed: missing in the weights folder" in text and "stage_c_lite_bf16.safetensors" in text
    assert panel.model.job(failing).error_kind == "missing_weights"
    assert "Download" not in text  # the list shows the first sentence; the tooltip holds the whole message
    assert "Download" in panel.model.index(0).data(Qt.ItemDataRole.ToolTipRole)

    service.set_config(WorkerConfig(tmp_path / "empty", tmp_path / "out", device="cpu", demo=True))
    ok = service.submit(tiny_request())
    qtbot.waitUntil(lambda: rec.outcome(ok) is not None, timeout=TIMEOUT_MS)
    assert rows(panel) == [(failing, FAILED), (ok, DONE)]


def test_buttons_remove_and_cancel_jobs(qtbot, make_panel, gate, tmp_path):
    panel, service, rec = make_panel()
    buttons = panel.buttons
    assert not any(b.isEnabled() for b in buttons.values())
    first = service.submit(tiny_request())
    gate.hold(service, first)
    second, third, fourth = (service.submit(tiny_request(seed=s)) for s in (1, 2, 3))
    qtbot.waitUntil(lambda: panel.model.running_job() == first, timeout=TIMEOUT_MS)
    assert buttons["cancel_current"].isEnabled() and buttons["cancel_others"].isEnabled()
    assert not buttons["remove_pending"].isEnabled()

    panel.select_job(first)
    panel.select_job(third, add=True)  # the running job in the selection is left alone
    assert buttons["remove_pending"].isEnabled()
    qtbot.mouseClick(buttons["remove_pending"], Qt.MouseButton.LeftButton)
    assert rows(panel) == [(first, RUNNING), (second, PENDING), (fourth, PENDING)]

    qtbot.mouseClick(buttons["cancel_others"], Qt.MouseButton.LeftButton)
    assert rows(panel) == [(first, RUNNING)]
    assert not buttons["cancel_others"].isEnabled()

    qtbot.mouseClick(buttons["cancel_current"], Qt.MouseButton.LeftButton)
    gate.open()
    qtbot.waitUntil(lambda: rec.outcome(first) is not None, timeout=TIMEOUT_MS)
    assert rows(panel) == [(first, CANCELLED)]
    assert not list((tmp_path / "out").glob("*.png"))
    assert not any(b.isEnabled() for b in buttons.values())


def test_cancel_all_action(qtbot, make_panel, gate, tmp_path):
    panel, service, rec = make_panel()
    first = service.submit(tiny_request())
    gate.hold(service, first)
    second = service.submit(tiny_request(seed=1))
    qtbot.waitUntil(lambda: panel.model.running_job() == first, timeout=TIMEOUT_MS)
    panel.list_view.setFocus()
    panel.cancel_all_action.trigger()
    assert rec.outcome(second) == "removed"
    gate.open()
    qtbot.waitUntil(lambda: rec.outcome(first) is not None, timeout=TIMEOUT_MS)
    assert rows(panel) == [(first, CANCELLED)]
    assert not list((tmp_path / "out").glob("*.png"))


def test_rebinding_to_another_service_disconnects_the_first(qtbot, make_panel):
    panel, service, rec = make_panel()
    panel.set_service(None)
    job = service.submit(tiny_request())
    qtbot.waitUntil(lambda: rec.outcome(job) is not None, timeout=TIMEOUT_MS)
    assert panel.model.rowCount() == 0


def test_pyside_keeps_none_and_true_alive(qtbot):
    """PySide6 6.12.0 on CPython 3.11 drops a reference to True on every Signal.emit() and to None on every
    None a model's data() returns, so a session crashes after a few hundred jobs ("deallocating None"). Fail
    here, clearly, instead of at random later."""
    model = QueueModel()
    model.on_job_queued(1, tiny_request())
    index = model.index(0)
    before = sys.getrefcount(None), sys.getrefcount(True)
    for _ in range(50):
        index.data(Qt.ItemDataRole.DecorationRole)  # data() returns None
        model.running_changed.emit(1)
    drift = [after - b for after, b in zip((sys.getrefcount(None), sys.getrefcount(True)), before)]
    assert all(d >= 0 for d in drift), f"PySide6 loses references to None/True ({drift}); use another version"
