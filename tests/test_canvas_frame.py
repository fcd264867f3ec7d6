"""The canvas's frame tool: dragging the frame's handles outward extends the canvas for outpainting, snapped to the
128 px grid like `Document.extend`, as one undo step; Escape cancels a drag, Return applies it."""

import math

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, QSettings, Qt
from PySide6.QtTest import QTest

from cascade_studio.core import mask as masks
from cascade_studio.ui.canvas import FRAME_HANDLES, CanvasWidget

W, H = 240, 200
LEFT = Qt.MouseButton.LeftButton
NONE = Qt.KeyboardModifier.NoModifier


@pytest.fixture
def canvas(qtbot, tmp_path):
    widget = CanvasWidget(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(widget)
    widget.resize(900, 700)
    rng = np.random.default_rng(1)
    widget.document.set_image(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    widget.document.fill_rect((20, 30, 50, 40))  # some mask, so undo has something to restore
    widget.document.undo_stack.clear()
    widget.show()
    qtbot.waitExposed(widget)
    widget.view.actual_size()
    widget.view.centerOn(W / 2, H / 2)
    widget.view.setFocus()
    widget.actions_by_name["frame"].trigger()
    return widget


def press_handle(canvas, name: str) -> QPoint:
    start = canvas.view.frame_handle_point(name)
    QTest.mousePress(canvas.view.viewport(), LEFT, NONE, start)
    return start


def move(canvas, point: QPoint) -> None:
    QTest.mouseMove(canvas.view.viewport(), point)


def release(canvas, point: QPoint) -> None:
    QTest.mouseRelease(canvas.view.viewport(), LEFT, NONE, point)


def test_f_picks_the_frame_tool_which_shows_the_frame(canvas):
    canvas.actions_by_name["brush"].trigger()
    assert not canvas.view.frame_shown() and canvas.view.frame_label_text() == ""
    QTest.keyClick(canvas.view, Qt.Key.Key_F)
    assert canvas.brush.tool == "frame"
    assert canvas.toolbar.canvas.actions_by_name["frame"].isChecked()
    assert canvas.view.frame_shown()
    assert canvas.view.frame_label_text().startswith(f"{W} × {H}")
    # The handles sit on the image's corners and edge middles.
    assert canvas.view.frame_handle_point("right") == canvas.view.mapFromScene(QPointF(W, H / 2))


def test_dragging_the_right_handle_extends_to_the_snapped_size_as_one_undo_step(canvas):
    doc = canvas.view.document
    image_before, mask_before = doc.image_view().copy(), doc.mask_view().copy()
    n = 100
    expected = masks.outpaint_geometry(W, H, 0, 0, n, 0)
    assert (expected.width, expected.right) == (384, 144)  # 340 rounds up to the 128 px grid

    start = press_handle(canvas, "right")
    move(canvas, start + QPoint(n // 2, 0))
    move(canvas, start + QPoint(n, 0))
    assert canvas.view.frame_extension() == expected
    assert canvas.view.frame_label_text() == "384 × 200 (+144 right)"
    assert (doc.width, doc.height) == (W, H)  # nothing applied before the release
    release(canvas, start + QPoint(n, 0))

    assert (doc.width, doc.height) == (384, 200)
    assert doc.undo_stack.count() == 1
    mask = doc.mask_view()
    assert (mask[:, W:] == 255).all()  # the new area is masked
    np.testing.assert_array_equal(mask[:, :W], mask_before)
    np.testing.assert_array_equal(doc.image_view()[:, :W], image_before)
    np.testing.assert_array_equal(doc.image_view()[:, W:], np.repeat(image_before[:, -1:], 384 - W, axis=1))
    assert not canvas.view.frame_dragging()
    assert canvas.view.frame_label_text().startswith("384 × 200")

    doc.undo_stack.undo()
    assert (doc.width, doc.height) == (W, H)
    np.testing.assert_array_equal(doc.image_view(), image_before)
    np.testing.assert_array_equal(doc.mask_view(), mask_before)


def test_escape_mid_drag_changes_nothing(canvas):
    doc = canvas.view.document
    image_before, mask_before = doc.image_view().copy(), doc.mask_view().copy()
    start = press_handle(canvas, "bottom_right")
    move(canvas, start + QPoint(90, 70))
    assert canvas.view.frame_extension().width > W and canvas.view.frame_extension().height > H
    QTest.keyClick(canvas.view, Qt.Key.Key_Escape)
    assert not canvas.view.frame_dragging()
    assert canvas.view.frame_label_text().startswith(f"{W} × {H}:")
    move(canvas, start + QPoint(120, 90))
    release(canvas, start + QPoint(120, 90))
    assert (doc.width, doc.height) == (W, H)
    assert doc.undo_stack.count() == 0
    np.testing.assert_array_equal(doc.image_view(), image_before)
    np.testing.assert_array_equal(doc.mask_view(), mask_before)


def test_return_mid_drag_applies_and_the_release_adds_nothing(canvas):
    doc = canvas.view.document
    start = press_handle(canvas, "top")
    move(canvas, start + QPoint(0, -40))
    expected = masks.outpaint_geometry(W, H, 0, 40, 0, 0)
    QTest.keyClick(canvas.view, Qt.Key.Key_Return)
    assert (doc.width, doc.height) == (expected.width, expected.height) == (W, 256)
    assert (doc.mask_view()[: expected.top] == 255).all()
    release(canvas, start + QPoint(0, -80))
    assert doc.undo_stack.count() == 1 and doc.height == 256


def test_corner_grows_two_sides_and_dragging_back_cancels_a_side(canvas):
    doc = canvas.view.document
    start = press_handle(canvas, "bottom_left")
    move(canvas, start + QPoint(-30, 50))
    assert canvas.view.frame_extension() == masks.outpaint_geometry(W, H, 30, 0, 0, 50)
    assert canvas.view.frame_label_text() == "384 × 256 (+144 left, +56 bottom)"
    move(canvas, start + QPoint(20, 50))  # back inside the image horizontally: only the bottom grows
    assert canvas.view.frame_extension() == masks.outpaint_geometry(W, H, 0, 0, 0, 50)
    assert canvas.view.frame_label_text() == "240 × 256 (+56 bottom)"
    release(canvas, start + QPoint(20, 50))
    assert (doc.width, doc.height) == (W, 256)
    assert doc.undo_stack.count() == 1


def test_a_click_on_a_handle_or_off_the_handles_extends_nothing(canvas):
    doc = canvas.view.document
    start = press_handle(canvas, "left")
    release(canvas, start)
    off = canvas.view.mapFromScene(QPointF(W / 2, H / 2))
    QTest.mousePress(canvas.view.viewport(), LEFT, NONE, off)
    move(canvas, off + QPoint(200, 0))
    release(canvas, off + QPoint(200, 0))
    assert (doc.width, doc.height) == (W, H) and doc.undo_stack.count() == 0
    assert (doc.mask_view() == 0).sum() == W * H - 50 * 40  # the frame tool never paints


def test_the_drag_follows_the_zoom(canvas):
    view, doc = canvas.view, canvas.view.document
    view.zoom_by(2.0)
    assert math.isclose(view.zoom(), 2.0)
    start = press_handle(canvas, "right")
    move(canvas, start + QPoint(200, 0))  # 200 screen px = 100 image px
    assert view.frame_extension() == masks.outpaint_geometry(W, H, 0, 0, 100, 0)
    release(canvas, start + QPoint(200, 0))
    assert doc.width == 384
    assert math.isclose(view.zoom(), 2.0)  # the zoom stays as it was


def test_every_handle_is_grabbable(canvas):
    for name in FRAME_HANDLES:
        point = canvas.view.frame_handle_point(name)
        assert canvas.view._handle_at(QPointF(point) + QPointF(0.5, 0.5)) == name


def test_return_and_escape_reach_the_drag_through_the_window_not_the_shortcuts(canvas, qtbot):
    canvas.activateWindow()
    qtbot.waitActive(canvas)
    canvas.view.setFocus()
    doc, fired = canvas.view.document, []
    canvas.actions_by_name["accept_candidate"].triggered.connect(lambda: fired.append("Return"))
    start = press_handle(canvas, "left")
    move(canvas, start + QPoint(-60, 0))
    QTest.keyClick(canvas.windowHandle(), Qt.Key.Key_Escape)
    assert not canvas.view.frame_dragging() and doc.width == W
    release(canvas, start + QPoint(-60, 0))
    start = press_handle(canvas, "left")
    move(canvas, start + QPoint(-60, 0))
    QTest.keyClick(canvas.windowHandle(), Qt.Key.Key_Return)
    assert doc.width == 384 and (doc.mask_view()[:, :144] == 255).all()
    assert fired == []  # the canvas's own Return (accept a candidate) did not fire
    release(canvas, start + QPoint(-60, 0))
    assert doc.undo_stack.count() == 1


def test_a_candidate_arriving_mid_drag_ends_the_drag_without_extending(canvas):
    doc = canvas.view.document
    start = press_handle(canvas, "right")
    move(canvas, start + QPoint(80, 0))
    doc.add_candidate(np.full((H, W, 3), 9, dtype=np.uint8))
    assert not canvas.view.frame_dragging() and not canvas.view.frame_shown()
    release(canvas, start + QPoint(80, 0))
    assert doc.width == W and doc.candidate_count() == 1  # the candidate is still there to judge
