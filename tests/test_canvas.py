"""The canvas: pointer strokes (mouse and tablet) paint the expected mask pixels, every change undoes exactly,
tools, keys, view navigation, files, candidates and remembered brush settings."""

import math

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, QRect, QSettings, Qt
from PySide6.QtGui import QGuiApplication, QImage, QInputDevice, QPointingDevice, QTabletEvent, QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from cascade_studio.core import mask as masks
from cascade_studio.state.document import BrushSettings, Document
from cascade_studio.ui.canvas import CanvasWidget

W, H = 240, 200


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def canvas(qtbot, settings):
    widget = CanvasWidget(settings)
    qtbot.addWidget(widget)
    widget.resize(700, 560)
    rng = np.random.default_rng(0)
    widget.document.set_image(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    widget.document.undo_stack.clear()
    widget.brush.set("tool", "brush")
    widget.brush.set("size", 21)
    widget.brush.set("hardness", 1.0)
    widget.brush.set("opacity", 1.0)
    widget.show()
    qtbot.waitExposed(widget)
    widget.view.actual_size()
    widget.view.centerOn(W / 2, H / 2)
    return widget


def vp(canvas, x, y):
    """The viewport pixel over the centre of image pixel (x, y)."""
    exact = canvas.view.viewportTransform().map(QPointF(x + 0.5, y + 0.5))
    return QPoint(math.floor(exact.x()), math.floor(exact.y()))


def drag(canvas, points, button=Qt.MouseButton.LeftButton, modifiers=Qt.KeyboardModifier.NoModifier):
    viewport = canvas.view.viewport()
    QTest.mousePress(viewport, button, modifiers, vp(canvas, *points[0]))
    for point in points[1:]:
        QTest.mouseMove(viewport, vp(canvas, *point))
    QTest.mouseRelease(viewport, button, modifiers, vp(canvas, *points[-1]))


DEVICES = {}


def pen(kind=QPointingDevice.PointerType.Pen):
    if kind not in DEVICES:
        caps = QInputDevice.Capability.Position | QInputDevice.Capability.Pressure
        DEVICES[kind] = QPointingDevice(
            f"test {kind.name}", 4242 + len(DEVICES), QInputDevice.DeviceType.Stylus, kind, caps, 1, 3
        )
    return DEVICES[kind]


def tablet(canvas, kind, x, y, pressure, tip=QPointingDevice.PointerType.Pen):
    pos = canvas.view.viewportTransform().map(QPointF(x + 0.5, y + 0.5))
    buttons = Qt.MouseButton.NoButton if kind == QEvent.Type.TabletRelease else Qt.MouseButton.LeftButton
    event = QTabletEvent(
        kind,
        pen(tip),
        pos,
        pos,
        pressure,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        Qt.KeyboardModifier.NoModifier,
        Qt.MouseButton.LeftButton,
        buttons,
    )
    QApplication.sendEvent(canvas.view.viewport(), event)
    return event


def tablet_dab(canvas, x, y, pressure):
    tablet(canvas, QEvent.Type.TabletPress, x, y, pressure)
    tablet(canvas, QEvent.Type.TabletRelease, x, y, pressure)


def mask(canvas):
    return canvas.document.mask_array()


def test_mouse_stroke_paints_a_hard_line_and_is_one_undo_step(canvas):
    drag(canvas, [(40, 100), (80, 100), (120, 100), (160, 100)])
    m = mask(canvas)
    assert (m[100, 40:161] == 255).all()  # a continuous line, no gaps between events or dabs
    assert (m[100 - 9 : 100 + 10, 60:140] == 255).all()  # full width (diameter 21)
    assert (m[100 - 12, :] == 0).all() and (m[100 + 12, :] == 0).all()  # nothing beyond the radius
    assert m[:, :25].sum() == 0 and m[:, 176:].sum() == 0
    assert canvas.document.undo_stack.count() == 1
    # the overlay shows exactly the mask (premultiplied alpha = mask value)
    np.testing.assert_array_equal(canvas.view._overlay._buffer[:, :, 3], m)


def test_undo_redo_restores_the_mask_byte_for_byte(canvas):
    doc = canvas.document
    states = [mask(canvas)]
    drag(canvas, [(30, 30), (120, 90)])
    states.append(mask(canvas))
    canvas.brush.set("hardness", 0.3)
    drag(canvas, [(100, 40), (100, 160), (200, 160)])
    states.append(mask(canvas))
    canvas.brush.tool = "eraser"
    drag(canvas, [(20, 40), (220, 120)])
    states.append(mask(canvas))
    assert doc.undo_stack.count() == 3
    assert not np.array_equal(states[2], states[3])
    for expected in reversed(states[:-1]):
        doc.undo_stack.undo()
        np.testing.assert_array_equal(mask(canvas), expected)
    for expected in states[1:]:
        doc.undo_stack.redo()
        np.testing.assert_array_equal(mask(canvas), expected)
    np.testing.assert_array_equal(canvas.view._overlay._buffer[:, :, 3], states[-1])


def test_a_stroke_stores_only_its_changed_rectangle(canvas):
    drag(canvas, [(50, 50), (70, 60)])
    command = canvas.document.undo_stack.command(0)
    x, y, w, h = command.rect
    assert (x, y) == (40, 40) and w < 60 and h < 40
    assert command.before.shape == command.after.shape == (h, w)
    assert command.before.sum() == 0


def test_eraser_clears_and_leaves_the_rest(canvas):
    canvas.document.fill_rect((0, 0, W, H))
    canvas.brush.tool = "eraser"
    drag(canvas, [(120, 100), (121, 100)])
    m = mask(canvas)
    assert m[100, 120] == 0 and m[100, 130] == 0 and m[100, 132] == 255
    assert (m[:80] == 255).all()
    canvas.document.undo_stack.undo()
    assert (mask(canvas) == 255).all()


def test_hardness_controls_the_soft_rim(canvas):
    canvas.brush.set("size", 41)
    canvas.brush.set("hardness", 1.0)
    drag(canvas, [(60, 100)])
    hard = mask(canvas)[100, 60:90].astype(int)
    canvas.brush.set("hardness", 0.0)
    drag(canvas, [(170, 100)])
    soft = mask(canvas)[100, 170:200].astype(int)
    assert hard[0] == 255 and (hard[:20] == 255).all() and hard[22] == 0
    assert soft[0] == 255
    assert np.all(np.diff(soft) <= 0) and np.all(np.diff(soft[:20]) < 0)  # falls off from the centre
    assert 0 < soft[10] < 255 and 0 < soft[18] < soft[10]


def test_opacity_limits_the_mask_value(canvas):
    canvas.brush.set("opacity", 0.5)
    drag(canvas, [(60, 60), (100, 60), (60, 60)])  # overlapping dabs do not build up
    assert mask(canvas).max() == 128


def test_tablet_pressure_shrinks_the_dab(canvas):
    canvas.brush.set("size", 41)
    canvas.brush.set("pressure_size", True)
    canvas.brush.set("pressure_opacity", False)
    tablet_dab(canvas, 60, 100, 1.0)
    tablet_dab(canvas, 180, 100, 0.25)
    m = mask(canvas)
    full, light = (m[:, :120] > 0).sum(), (m[:, 120:] > 0).sum()
    assert m[100, 60] == 255 and m[100, 180] == 255
    assert light < full / 8  # diameter ~10 against ~41
    assert m[100, 180 + 7] == 0 and m[100, 60 + 19] == 255
    assert canvas.document.undo_stack.count() == 2


def test_tablet_pressure_fades_the_dab(canvas):
    canvas.brush.set("pressure_size", False)
    canvas.brush.set("pressure_opacity", True)
    tablet_dab(canvas, 100, 100, 0.4)
    m = mask(canvas)
    assert m[100, 100] == round(0.4 * 255) and m.max() == round(0.4 * 255)
    assert (m > 0).sum() > 300  # full size


def test_tablet_stroke_accepts_events_and_paints_between_points(canvas):
    canvas.brush.set("pressure_size", True)
    press = tablet(canvas, QEvent.Type.TabletPress, 40, 60, 1.0)
    assert press.isAccepted()
    for x in range(50, 200, 30):
        tablet(canvas, QEvent.Type.TabletMove, x, 60, 1.0 - (x - 40) / 200)
    tablet(canvas, QEvent.Type.TabletRelease, 200, 60, 0.2)
    m = mask(canvas)
    assert (m[60, 40:200] == 255).all()
    widths = [(m[:, x] > 0).sum() for x in (50, 120, 190)]
    assert widths[0] > widths[1] > widths[2] > 0  # the line thins as the pressure falls
    assert canvas.document.undo_stack.count() == 1


def test_the_eraser_end_of_the_pen_erases(canvas):
    canvas.document.fill_rect((0, 0, W, H))
    tablet(canvas, QEvent.Type.TabletPress, 100, 100, 1.0, QPointingDevice.PointerType.Eraser)
    tablet(canvas, QEvent.Type.TabletRelease, 100, 100, 1.0, QPointingDevice.PointerType.Eraser)
    assert mask(canvas)[100, 100] == 0 and mask(canvas)[10, 10] == 255
    assert canvas.brush.tool == "brush"


def test_rectangle_and_lasso_fill_and_erase(canvas):
    doc = canvas.document
    canvas.brush.tool = "rectangle"
    drag(canvas, [(20, 30), (60, 50), (100, 80)])
    m = mask(canvas)
    assert (m[30:81, 20:101] == 255).all() and m.sum() == 255 * 51 * 81  # both corner pixels included
    canvas.brush.tool = "lasso"
    drag(canvas, [(150, 20), (220, 20), (220, 120), (150, 120)])
    m = mask(canvas)
    assert m[70, 185] == 255 and m[70, 140] == 0
    drag(canvas, [(40, 40), (80, 40), (80, 70), (40, 70)], modifiers=Qt.KeyboardModifier.AltModifier)
    assert mask(canvas)[55, 60] == 0 and mask(canvas)[75, 25] == 255
    assert doc.undo_stack.count() == 3
    doc.undo_stack.undo()
    assert mask(canvas)[55, 60] == 255


@pytest.mark.parametrize(
    "operation",
    [
        lambda d: d.invert_mask(),
        lambda d: d.clear_mask(),
        lambda d: d.grow_mask(6),
        lambda d: d.shrink_mask(4),
        lambda d: d.feather_mask(5),
    ],
    ids=["invert", "clear", "grow", "shrink", "feather"],
)
def test_mask_operations_are_one_undo_step_each(canvas, operation):
    doc = canvas.document
    doc.fill_rect((60, 60, 80, 50))
    before = mask(canvas)
    operation(doc)
    after = mask(canvas)
    assert not np.array_equal(before, after)
    assert doc.undo_stack.count() == 2
    doc.undo_stack.undo()
    np.testing.assert_array_equal(mask(canvas), before)
    doc.undo_stack.redo()
    np.testing.assert_array_equal(mask(canvas), after)


def test_extend_canvas_for_outpainting_and_undo(canvas):
    doc = canvas.document
    image = doc.image_array()
    ext = doc.extend(0, 0, 100, 0)  # 240 + 100 = 340 -> 384
    assert (doc.width, doc.height) == (384, H) and ext.right == 144
    expected = np.zeros((H, 384), np.uint8)
    expected[:, W:] = 255
    np.testing.assert_array_equal(doc.mask_array(), expected)
    np.testing.assert_array_equal(doc.image_array()[:, :W], image)
    assert canvas.view._overlay.boundingRect().width() == 384
    doc.undo_stack.undo()
    assert (doc.width, doc.height) == (W, H) and doc.mask_array().sum() == 0
    np.testing.assert_array_equal(doc.image_array(), image)
    doc.undo_stack.redo()
    assert doc.width == 384


def test_candidates_composite_accept_and_undo(canvas):
    doc = canvas.document
    source = doc.image_array()
    doc.fill_rect((80, 80, 40, 40))
    result = np.full_like(source, 7)
    doc.add_candidate(result, band=8)
    doc.add_candidate(np.full_like(source, 9))
    assert doc.candidate_count() == 2 and doc.candidate_index() == 1
    drag(canvas, [(10, 10), (30, 10)])  # painting is off while candidates are shown
    assert mask(canvas)[10, 10] == 0
    doc.previous_candidate()
    doc.accept_candidate()
    assert doc.candidate_count() == 0
    image = doc.image_array()
    outside = masks.grow(doc.mask_array(), 8) == 0
    np.testing.assert_array_equal(image[outside], source[outside])
    assert (image[90:110, 90:110] == 7).all()
    doc.undo_stack.undo()
    np.testing.assert_array_equal(doc.image_array(), source)


def test_the_brush_outline_hides_when_a_candidate_appears(canvas):
    QTest.mouseMove(canvas.view.viewport(), vp(canvas, 60, 60))
    outline = canvas.view._cursor_item
    assert outline.isVisible()
    canvas.document.add_candidate(np.full_like(canvas.document.image_array(), 5))
    assert not outline.isVisible()


def test_bracket_keys_resize_and_settings_persist(canvas, settings):
    canvas.view.setFocus()
    QTest.keyClick(canvas.view, Qt.Key.Key_BracketRight)
    assert canvas.brush.size > 21
    QTest.keyClick(canvas.view, Qt.Key.Key_BracketLeft)
    QTest.keyClick(canvas.view, Qt.Key.Key_BracketLeft)
    assert canvas.brush.size < 21
    size = canvas.brush.size
    canvas.brush.set("hardness", 0.35)
    canvas.brush.set("mask_color", "#00ff00")
    canvas.brush.set("pressure_opacity", True)
    settings.sync()
    again = BrushSettings(QSettings(settings.fileName(), QSettings.Format.IniFormat))
    assert again.size == size and again.hardness == 0.35
    assert again.get("mask_color") == "#00ff00" and again.get("pressure_opacity") is True


def test_wheel_zooms_to_the_cursor_middle_button_pans_fit_and_actual_size(canvas):
    view = canvas.view
    anchor = vp(canvas, 60, 50)
    scene_before = view.mapToScene(anchor)
    event = QWheelEvent(
        QPointF(anchor),
        QPointF(view.viewport().mapToGlobal(anchor)),
        QPoint(),
        QPoint(0, 120),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(view.viewport(), event)
    assert view.zoom() == pytest.approx(1.25)
    after = view.mapToScene(anchor)
    assert abs(after.x() - scene_before.x()) < 1.5 and abs(after.y() - scene_before.y()) < 1.5
    before_pan = view.mapToScene(QPoint(100, 100))
    drag(canvas, [(100, 100), (80, 90)], button=Qt.MouseButton.MiddleButton)
    assert view.mapToScene(QPoint(100, 100)) != before_pan
    assert mask(canvas).sum() == 0  # panning never paints
    view.fit()
    assert view.zoom() == pytest.approx(min(view.viewport().width() / W, view.viewport().height() / H), rel=0.05)
    view.actual_size()
    assert view.zoom() == 1.0


def test_space_drag_pans_instead_of_painting(canvas):
    view = canvas.view
    view.setFocus()
    QTest.keyPress(view, Qt.Key.Key_Space)
    before = view.mapToScene(QPoint(100, 100))
    drag(canvas, [(100, 100), (60, 60)])
    QTest.keyRelease(view, Qt.Key.Key_Space)
    assert mask(canvas).sum() == 0
    assert view.mapToScene(QPoint(100, 100)) != before


def test_paste_save_export_and_open(canvas, tmp_path, qtbot):
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, :, 0] = np.arange(96)
    image[:, :, 1] = 200
    qimage = QImage(image.data, 96, 64, 96 * 3, QImage.Format.Format_RGB888).copy()
    # setImage, not setMimeData(QMimeData()): the clipboard takes ownership of mime data made in Python, and
    # PySide then deletes it a second time at exit (a segfault after the tests pass).
    QGuiApplication.clipboard().setImage(qimage)
    assert canvas.paste()
    doc = canvas.document
    np.testing.assert_array_equal(doc.image_array(), image)
    doc.fill_rect((10, 10, 20, 20))
    doc.save_image(tmp_path / "out.png")
    doc.save_mask(tmp_path / "mask.png")
    other = Document()
    other.open(tmp_path / "out.png")
    np.testing.assert_array_equal(other.image_array(), image)
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "mask.png")), doc.mask_array())
    with qtbot.waitSignal(canvas.opened, timeout=5_000):
        assert canvas.open_path(str(tmp_path / "out.png"))  # decoded on the thread pool
    assert doc.path().endswith("out.png")
    np.testing.assert_array_equal(doc.image_array(), image)
    errors = []
    canvas.error.connect(errors.append)
    assert not canvas.open_path(str(tmp_path / "missing.png")) and errors
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert canvas.open_path(str(tmp_path / "broken.png"))
    qtbot.waitUntil(lambda: len(errors) == 2, timeout=5_000)
    assert "broken.png" in errors[1] and doc.path().endswith("out.png")  # the canvas kept its image


def test_strokes_update_only_dirty_rectangles(canvas):
    rects = []
    canvas.document.mask_changed.connect(lambda rect: rects.append(rect))
    drag(canvas, [(40, 100), (50, 100), (60, 104), (70, 108)])
    assert len(rects) == 4  # press + three moves; the release adds nothing that was not painted already
    assert all(r.width() * r.height() <= 40 * 40 for r in rects)
    assert canvas.document.undo_stack.count() == 1


def test_drop_a_file_opens_it(canvas, tmp_path, qtbot):
    from PIL import Image
    from PySide6.QtCore import QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent

    pixels = np.full((40, 50, 3), 77, np.uint8)
    Image.fromarray(pixels).save(tmp_path / "dropped.png")
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(tmp_path / "dropped.png"))])
    args = (Qt.DropAction.CopyAction, data, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    enter = QDragEnterEvent(QPoint(50, 50), *args)
    QApplication.sendEvent(canvas.view.viewport(), enter)  # Qt delivers a drop only to the accepted drag target
    assert enter.isAccepted()
    with qtbot.waitSignal(canvas.opened, timeout=5_000):  # decoded on the thread pool
        QApplication.sendEvent(canvas.view.viewport(), QDropEvent(QPointF(50, 50), *args))
    np.testing.assert_array_equal(canvas.document.image_array(), pixels)
    assert canvas.document.path().endswith("dropped.png")
    canvas.document.undo_stack.undo()
    assert canvas.document.width == W


def test_effective_mask_overlay_shows_until_the_mask_changes(canvas):
    view = canvas.view
    effective = np.zeros((H, W), np.uint8)
    effective[10:50, 10:50] = 255
    view.set_effective_mask(effective, QRect(0, 0, 64, 64))
    assert view.effective_mask_shown()
    np.testing.assert_array_equal(view._effective._buffer[:, :, 3], effective)
    assert view._overlay.opacity() == 0.0
    drag(canvas, [(120, 120)])
    assert not view.effective_mask_shown() and view._overlay.opacity() == canvas.brush.get("mask_opacity")
