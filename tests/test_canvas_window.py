"""The canvas in the window: paint a mask, inpaint, extend and outpaint, step through candidates, accept and undo;
the effective-mask and canny overlays; recall of masked requests; canny and upscale inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, QSettings, Qt
from PySide6.QtTest import QTest

from cascade_studio.core import mask as masks
from cascade_studio.core.inpaint import effective_mask, load_mask
from cascade_studio.core.request import GenerationRequest, StageSettings
from cascade_studio.state.settings import Settings
from cascade_studio.ui.main_window import CANVAS_TAB, VIEWER_TAB, MainWindow
from tests.test_window import FakeService

SIDE = 256


def _settings(tmp_path) -> Settings:
    store = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    return Settings(store, models_dir_default=tmp_path / "models", output_dir_default=tmp_path / "out")


def _picture(path, width=SIDE, height=SIDE, seed=0):
    """A smooth picture with some structure (so canny finds edges), written as a PNG."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 // max(1, width - 1), ys * 255 // max(1, height - 1), np.full_like(xs, 90)], -1)
    pixels = pixels.astype(np.uint8)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (240, 230, 30)
    Image.fromarray(pixels, "RGB").save(path)
    return path


def _open(qtbot, tmp_path, **kwargs) -> MainWindow:
    window = MainWindow(_settings(tmp_path), **kwargs)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.service_started, timeout=10000):
        window.show()
    qtbot.waitExposed(window)
    return window


@pytest.fixture
def window(qtbot, tmp_path):
    FakeService.made.clear()
    window = _open(qtbot, tmp_path, service_factory=FakeService)
    yield window
    window.close()


def _vp(window, x, y) -> QPoint:
    exact = window.canvas.view.viewportTransform().map(QPointF(x + 0.5, y + 0.5))
    return QPoint(math.floor(exact.x()), math.floor(exact.y()))


def paint_stroke(window, points) -> None:
    """A mouse stroke on the canvas, image pixel coordinates."""
    viewport = window.canvas.view.viewport()
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, _vp(window, *points[0]))
    for point in points[1:]:
        QTest.mouseMove(viewport, _vp(window, *point))
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, _vp(window, *points[-1]))


def _canvas_ready(window, qtbot, path) -> None:
    with qtbot.waitSignal(window.canvas.opened, timeout=5_000):
        assert window.send_to_canvas(str(path))  # decoded off the GUI thread
    assert window.tabs.currentIndex() == CANVAS_TAB
    canvas = window.canvas
    canvas.brush.set("tool", "brush")
    canvas.brush.set("size", 40)
    canvas.brush.set("hardness", 1.0)
    canvas.brush.set("opacity", 1.0)
    canvas.view.fit()


def _tiny(session) -> None:
    session.prompt = "a tiny test"
    session.steps_c, session.steps_b = 2, 1
    session.set_size(SIDE, SIDE)
    session.seed_policy, session.seed = "fixed", 7


# -- end to end: the real GPU service on the demo weights ------------------------------------------------------


def test_paint_inpaint_accept_undo_then_extend_and_outpaint_in_the_real_window(qtbot, tmp_path, monkeypatch,
                                                                               demo_cache):  # fmt: skip
    monkeypatch.setenv("XDG_CACHE_HOME", str(demo_cache))
    settings = _settings(tmp_path)
    settings.device = "cpu"
    window = MainWindow(settings, demo=True)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.service_started, timeout=10000):
        window.show()
    qtbot.waitExposed(window)
    try:
        doc = window.canvas.document
        _canvas_ready(window, qtbot, _picture(tmp_path / "source.png"))
        source = doc.image_array()
        paint_stroke(window, [(60, 120), (100, 125), (150, 130), (190, 135)])
        mask = doc.mask_array()
        assert mask[125, 100] == 255 and mask[10, 10] == 0  # the stroke painted the mask

        session = window.session
        _tiny(session)
        session.mode = "inpaint"
        session.mask_feather = 8
        notes = []
        window.service.job_note.connect(lambda job_id, note: notes.append(note))
        with qtbot.waitSignal(doc.candidates_changed, timeout=180000):
            (request,) = window.generate()
        assert request.mode == "inpaint" and request.strength == 1.0
        candidate = doc.current_candidate()
        assert candidate.shape == source.shape and doc.candidate_count() == 1
        assert window.candidate_bar.isVisible() and "Candidate 1 of 1" in window.candidate_bar.label.text()
        # the inputs were written before the job ran: exactly the canvas's image and mask
        assert np.array_equal(np.asarray(Image.open(request.source_image).convert("RGB")), source)
        assert np.array_equal(load_mask(request.mask_image), mask)
        # pixels outside the mask and its transition band are the source's, exactly; inside they changed
        outside = masks.transition_alpha(effective_mask(mask, request.mask_grow), request.mask_feather) == 0
        assert outside.any() and np.array_equal(candidate[outside], source[outside])
        assert not np.array_equal(candidate[mask == 255], source[mask == 255])
        assert notes and "inpainting" in notes[0]  # which method the job used is said

        window.candidate_bar.buttons["accept_candidate"].click()  # accept is one undo step
        assert doc.candidate_count() == 0 and np.array_equal(doc.image_array(), candidate)
        assert not window.candidate_bar.isVisible()
        window.canvas.actions_by_name["undo"].trigger()
        assert np.array_equal(doc.image_array(), source)
        window.canvas.actions_by_name["redo"].trigger()
        assert np.array_equal(doc.image_array(), candidate)

        # outpaint: extend the canvas (the new area is masked), generate, the candidate has the extended size
        doc.clear_mask()
        session.mode = "outpaint"
        session.outpaint = (0, 0, 128, 0)
        window.prompt_panel.extend_button.click()
        assert (doc.width, doc.height) == (SIDE + 128, SIDE) and doc.mask_array()[:, SIDE:].min() == 255
        extended = doc.image_array()
        with qtbot.waitSignal(doc.candidates_changed, timeout=180000):
            (request,) = window.generate()
        assert request.mode == "outpaint" and request.outpaint == (0, 0, 128, 0) and request.mask_image is None
        assert np.array_equal(np.asarray(Image.open(request.source_image).convert("RGB")), candidate)
        result = doc.current_candidate()
        assert result.shape == (SIDE, SIDE + 128, 3)
        outside = masks.transition_alpha(doc.mask_array(), request.mask_feather) == 0
        assert np.array_equal(result[outside], extended[outside])
        doc.accept_candidate()
        assert doc.image_array().shape == (SIDE, SIDE + 128, 3)
        doc.undo_stack.undo()  # the accept
        doc.undo_stack.undo()  # the extension
        assert np.array_equal(doc.image_array(), candidate)

        # the inpaint image in the gallery recalls its mode and fields, and puts its source and mask back
        qtbot.waitUntil(lambda: len(window.gallery.model.entries()) == 2, timeout=10000)
        entry = next(e for e in window.gallery.model.entries()
                     if GenerationRequest.from_json(e.request_json).mode == "inpaint")  # fmt: skip
        session.mode = "text"
        with qtbot.waitSignal(window.canvas.opened, timeout=5_000):  # the source decodes off the GUI thread
            window.gallery.recall_requested.emit(GenerationRequest.from_json(entry.request_json), entry.made_with)
        assert session.mode == "inpaint" and session.mask_feather == 8 and session.strength == 1.0
        assert np.array_equal(doc.image_array(), source) and np.array_equal(doc.mask_array(), mask)
    finally:
        window.close()
    assert window.service is None


# -- the window's side of canvas jobs, with a fake service -------------------------------------------------------


def test_inpaint_needs_a_painted_mask_and_an_image(qtbot, window, tmp_path):
    window.session.mode = "inpaint"
    assert window.generate() == [] and "canvas is empty" in window.statusBar().currentMessage()
    _canvas_ready(window, qtbot, _picture(tmp_path / "p.png"))
    assert window.generate() == [] and "paint the area" in window.statusBar().currentMessage()
    assert window.service.submitted == []


def test_a_canvas_job_is_queued_once_its_files_are_written_and_its_result_becomes_a_candidate(qtbot, window,
                                                                                              tmp_path):  # fmt: skip
    _canvas_ready(window, qtbot, _picture(tmp_path / "p.png"))
    doc = window.canvas.document
    doc.fill_rect((50, 60, 80, 40))
    _tiny(window.session)
    window.session.mode = "inpaint"
    window.session.count = 2
    requests = window.generate()
    assert len(requests) == 2
    qtbot.waitUntil(lambda: len(window.service.submitted) == 2, timeout=5000)
    folder = tmp_path / "out" / ".cascade-studio" / "inputs"
    assert window.service.submitted == requests and requests[0].source_image.startswith(str(folder))
    assert np.array_equal(load_mask(requests[0].mask_image), doc.mask_array())

    result = doc.image_array()
    result[60:100, 50:130] = (255, 0, 0)
    path = tmp_path / "out" / "result.png"
    Image.fromarray(result).save(path)
    window.tabs.setCurrentIndex(VIEWER_TAB)
    window.service.preview.emit(1, np.zeros((24, 24, 3), np.uint8))
    assert window.canvas_preview.isVisible() or not window.canvas.isVisible()  # previews sit over the canvas
    with qtbot.waitSignal(doc.candidates_changed, timeout=5000):
        window.service.image_ready.emit(1, str(path))
    assert np.array_equal(doc.current_candidate(), result) and window.tabs.currentIndex() == CANVAS_TAB
    with qtbot.waitSignal(doc.candidates_changed, timeout=5000):
        window.service.image_ready.emit(2, str(path))
    assert doc.candidate_count() == 2
    window.candidate_bar.buttons["previous_candidate"].click()
    assert doc.candidate_index() == 0
    window.candidate_bar.buttons["discard_candidate"].click()
    assert doc.candidate_count() == 1

    # a result for a canvas that has changed since is not offered (it would undo the change when accepted)
    doc.accept_candidate()
    before = window.statusBar().currentMessage()
    window._canvas_jobs[1] = window._canvas_jobs.get(1) or window._canvas_jobs[2]
    window.service.image_ready.emit(1, str(path))
    qtbot.waitUntil(lambda: window.statusBar().currentMessage() != before, timeout=5000)
    assert "canvas changed" in window.statusBar().currentMessage() and doc.candidate_count() == 0


def test_outpaint_uses_the_canvas_extension_or_the_panel_margins(qtbot, window, tmp_path):
    _canvas_ready(window, qtbot, _picture(tmp_path / "p.png", 200, 160))
    doc = window.canvas.document
    before = doc.image_array()
    _tiny(window.session)
    window.session.mode = "outpaint"
    window.canvas.document.extend(0, 50, 0, 0)  # by the canvas tool bar: snapped to the 128 px grid
    assert (doc.width, doc.height) == (200, 256)
    (request,) = window.generate()
    assert request.outpaint == (0, 96, 0, 0)
    qtbot.waitUntil(lambda: len(window.service.submitted) == 1, timeout=5000)
    assert np.array_equal(np.asarray(Image.open(request.source_image).convert("RGB")), before)
    assert window._canvas_jobs[1].size == (200, 256)
    doc.undo_stack.undo()  # the extension is gone: Generate extends by the panel's margins
    window.session.outpaint = (128, 0, 0, 0)
    (request,) = window.generate()
    assert request.outpaint == (184, 0, 0, 0) and (doc.width, doc.height) == (384, 160)
    doc.undo_stack.undo()
    doc.undo_stack.redo()  # redo brings the same extension back
    assert window.current_extension() is not None


def test_effective_mask_overlay_follows_grow_and_context(qtbot, window, tmp_path):
    _canvas_ready(window, qtbot, _picture(tmp_path / "p.png"))
    doc, view, session = window.canvas.document, window.canvas.view, window.session
    doc.fill_rect((100, 100, 20, 20))
    session.mode = "inpaint"
    session.mask_grow = 6
    session.context = "mask"
    window.prompt_panel.show_mask_check.setChecked(True)
    assert view.effective_mask_shown() and view._context_item.isVisible()
    assert np.array_equal(view._effective_mask, effective_mask(doc.mask_array(), 6))
    assert view._effective_mask[97, 110] == 255 and doc.mask_array()[97, 110] == 0
    session.mask_grow = 0
    qtbot.waitUntil(lambda: view.effective_mask_shown() and view._effective_mask[97, 110] == 0, timeout=3000)
    window.prompt_panel.show_mask_check.setChecked(False)
    assert not view.effective_mask_shown()


def test_canny_mode_shows_the_engine_edge_layer_and_queues_the_canvas_as_control_image(qtbot, window, tmp_path):
    from cascade_studio.ui.canvas_jobs import canny_layer

    _canvas_ready(window, qtbot, _picture(tmp_path / "p.png"))
    doc, view, session = window.canvas.document, window.canvas.view, window.session
    _tiny(session)
    session.mode = "canny"
    panel = window.prompt_panel
    assert panel.show_edges_check.isVisible() and panel.control_strength_spin.isVisible()
    panel.show_edges_check.setChecked(True)
    qtbot.waitUntil(view.effective_mask_shown, timeout=30000)
    expected = canny_layer(doc.image_array(), SIDE, SIDE)
    assert np.array_equal(view._effective_mask, expected) and expected.max() > 0
    (request,) = window.generate()
    qtbot.waitUntil(lambda: len(window.service.submitted) == 1, timeout=5000)
    assert request.mode == "canny" and request.control_image and request.source_image is None
    assert np.array_equal(np.asarray(Image.open(request.control_image).convert("RGB")), doc.image_array())


def test_upscale_from_the_canvas_or_a_file_doubles_the_size_without_guidance(qtbot, window, tmp_path):
    _canvas_ready(window, qtbot, _picture(tmp_path / "p.png", 384, 256))
    session = window.session
    _tiny(session)
    session.mode = "upscale"
    (request,) = window.generate()
    assert (request.width, request.height, request.stage_c.cfg) == (768, 512, 1.0)
    file = _picture(tmp_path / "small.png", 256, 128)
    window.gallery.use_as_source_requested.emit(str(file))
    assert session.input == "file" and session.source_image == str(file)
    (request,) = window.generate()
    assert request.source_image == str(file) and (request.width, request.height) == (512, 256)
    assert request.stage_c == StageSettings(2, 1.0, session.shift)


def test_recall_of_an_outpaint_request_restores_its_margins(qtbot, window, tmp_path):
    source = _picture(tmp_path / "s.png", 256, 256)
    request = GenerationRequest("wide", seed=3, mode="outpaint", source_image=str(source), outpaint=(128, 0, 128, 0),
                                strength=1.0, mask_feather=24, method="latent_blend")  # fmt: skip
    with qtbot.waitSignal(window.canvas.opened, timeout=5_000):
        window.recall(request)  # the source image is decoded off the GUI thread
    s = window.session
    assert (s.mode, s.outpaint, s.mask_feather, s.method) == ("outpaint", (128, 0, 128, 0), 24, "latent_blend")
    assert [window.prompt_panel.side_spins[k].value() for k in ("left", "top", "right", "bottom")] == [128, 0, 128, 0]
    assert window.canvas.document.width == 256


def test_mask_options_fold_away_and_say_what_they_are(qtbot, window):
    panel, session = window.prompt_panel, window.session
    session.mode = "inpaint"
    assert panel.mask_options_button.isVisible() and not panel.mask_options_button.isChecked()
    assert not panel.grow_spin.isVisible() and panel.mask_summary.isVisible()
    session.mask_grow = 6
    session.context = "mask"
    session.context_padding = 32
    assert panel.mask_summary.text().startswith("grow 6 px · band")
    assert "masked area + 32 px" in panel.mask_summary.text()
    panel.mask_options_button.click()
    assert panel.grow_spin.isVisible() and panel.padding_spin.isVisible() and not panel.mask_summary.isVisible()
    session.context = "image"
    assert not panel.padding_spin.isVisible() and panel.method_combo.isVisible()
    session.mode = "text"
    assert not panel.mask_options_button.isVisible() and not panel.grow_spin.isVisible()
    session.mode = "outpaint"  # opened stays opened
    assert panel.grow_spin.isVisible() and panel.side_spins["left"].isVisible()
    panel.mask_options_button.click()
    assert not panel.grow_spin.isVisible() and "whole image" in panel.mask_summary.text()


def test_candidate_bar_shows_the_longest_key_hint_that_fits(qtbot, window):
    from cascade_studio.ui.main_window import CandidateBar

    bar = CandidateBar(window.canvas)
    qtbot.addWidget(bar)
    bar.show()
    shown = []
    for width in (1400, 900, 700, 560):
        bar.resize(width, 40)
        qtbot.waitUntil(lambda width=width: bar.width() == width, timeout=2000)
        text = bar.hint.text()
        assert bar.hint.fontMetrics().horizontalAdvance(text) <= bar.hint.width()
        shown.append(CandidateBar.HINTS.index(text))
    assert shown[0] == 0 and shown == sorted(shown) and shown[-1] > 0  # shorter as the bar narrows
    assert bar.hint.toolTip() == CandidateBar.HINTS[0]  # the whole hint is always a hover away
