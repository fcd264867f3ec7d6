"""The mask-painting canvas: the document's image with its mask drawn as a coloured overlay.

Painting is incremental: each pointer event stamps precomputed brush dabs into the document's mask (only their
rectangle), and the overlay re-colours and repaints only that rectangle, so a 4096² canvas stays fast.
A stroke (press → release) is one undo step. Tablet pressure scales the dab size and/or its opacity.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QEvent, QPoint, QPointF, QRect, QRectF, QSettings, Qt, QThreadPool, Signal
from PySide6.QtGui import (
    QAction,
    QColor,
    QGuiApplication,
    QImage,
    QKeySequence,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
    QPointingDevice,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QGraphicsEllipseItem,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QMessageBox,
    QVBoxLayout,
    QWidget,
)

from cascade_studio.core import mask as masks
from cascade_studio.state.document import BrushSettings, Document
from cascade_studio.ui.canvas_jobs import DecodeImage, TaskSignals
from cascade_studio.ui.image_view import array_to_qimage

MIN_ZOOM, MAX_ZOOM = 0.02, 32.0
WHEEL_STEP = 1.25
DAB_SPACING = 0.12  # of the diameter, between dabs along a stroke
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff)"
TABLET_EVENTS = (QEvent.Type.TabletPress, QEvent.Type.TabletMove, QEvent.Type.TabletRelease)
HANDLE_SIZE = 10  # screen px, the frame tool's handles
HANDLE_REACH = 9  # screen px from a handle's centre that still grabs it
FRAME_DEAD_ZONE = 4  # screen px a side must be dragged out before it counts (a click never extends)
MAX_FRAME_SIDE = 4096  # image px one drag may add to a side (as the Extend canvas dialog allows)
# The frame tool's handles: (x, y) of each as a fraction of the frame, (0, 0) top-left, (1, 1) bottom-right.
FRAME_HANDLES = {
    "top_left": (0, 0),
    "top": (0.5, 0),
    "top_right": (1, 0),
    "right": (1, 0.5),
    "bottom_right": (1, 1),
    "bottom": (0.5, 1),
    "bottom_left": (0, 1),
    "left": (0, 0.5),
}
FRAME_KEYS = (Qt.Key.Key_Escape, Qt.Key.Key_Return, Qt.Key.Key_Enter)
HANDLE_CURSORS = {
    "top_left": Qt.CursorShape.SizeFDiagCursor,
    "bottom_right": Qt.CursorShape.SizeFDiagCursor,
    "top_right": Qt.CursorShape.SizeBDiagCursor,
    "bottom_left": Qt.CursorShape.SizeBDiagCursor,
    "left": Qt.CursorShape.SizeHorCursor,
    "right": Qt.CursorShape.SizeHorCursor,
    "top": Qt.CursorShape.SizeVerCursor,
    "bottom": Qt.CursorShape.SizeVerCursor,
}


def qimage_to_rgb(image: QImage) -> np.ndarray:
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    h, w, bpl = rgb.height(), rgb.width(), rgb.bytesPerLine()
    array = np.frombuffer(rgb.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return array[:, : w * 3].reshape(h, w, 3).copy()


class MaskOverlay(QGraphicsItem):
    """The mask as a coloured, translucent layer. Keeps a premultiplied ARGB buffer the size of the image;
    `refresh(rect)` re-colours and repaints only that rectangle."""

    def __init__(self, parent: QGraphicsItem | None = None):
        super().__init__(parent)
        self._buffer = np.zeros((0, 0, 4), dtype=np.uint8)
        self._image = QImage()
        self._color = QColor("#ff3366")
        self._mask: np.ndarray | None = None
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)

    def set_mask(self, mask: np.ndarray) -> None:
        """Bind to the document's live mask (re-bind whenever the document's arrays are replaced)."""
        self.prepareGeometryChange()
        self._mask = mask
        h, w = mask.shape
        self._buffer = np.zeros((h, w, 4), dtype=np.uint8)
        # The QImage reads the numpy buffer directly (no copy); `_buffer` keeps that memory alive.
        self._image = QImage(self._buffer.data, w, h, w * 4, QImage.Format.Format_ARGB32_Premultiplied)
        self.refresh(QRect(0, 0, w, h))

    def set_color(self, color: QColor) -> None:
        self._color = QColor(color)
        if self._mask is not None:
            self.refresh(QRect(0, 0, self._mask.shape[1], self._mask.shape[0]))

    def refresh(self, rect: QRect) -> None:
        if self._mask is None or rect.isEmpty():
            return
        x, y, w, h = rect.x(), rect.y(), rect.width(), rect.height()
        alpha = self._mask[y : y + h, x : x + w].astype(np.uint16)
        out = self._buffer[y : y + h, x : x + w]
        # ARGB32 little-endian in memory: B, G, R, A; premultiplied by alpha.
        for channel, value in ((0, self._color.blue()), (1, self._color.green()), (2, self._color.red())):
            out[:, :, channel] = (alpha * value + 127) // 255
        out[:, :, 3] = alpha
        self.update(QRectF(x, y, w, h))

    def boundingRect(self) -> QRectF:
        return QRectF(0, 0, self._buffer.shape[1], self._buffer.shape[0])

    def paint(self, painter: QPainter, option, widget=None) -> None:
        if self._image.isNull():
            return
        exposed = option.exposedRect.toAlignedRect().intersected(self._image.rect())
        if not exposed.isEmpty():
            painter.drawImage(QRectF(exposed), self._image, QRectF(exposed))


class CanvasView(QGraphicsView):
    """The canvas proper. Mouse: left paints with the current tool, middle (or left while Space is held)
    pans, the wheel zooms to the cursor. Keys: [ and ] size the brush. Tablet pressure is honoured.
    The Frame tool instead drags the canvas edges outward (outpainting): the release, or Return, extends the
    canvas to the frame, snapped like `Document.extend`, as one undo step; Escape cancels the drag."""

    zoom_changed = Signal(float)
    cursor_moved = Signal(int, int)  # image pixel under the pointer
    image_dropped = Signal(str)  # a file dropped onto the canvas (already opened into the document)

    def __init__(self, document: Document, brush: BrushSettings, parent: QWidget | None = None):
        super().__init__(parent)
        self.document, self.brush = document, brush
        self.setScene(QGraphicsScene(self))
        self.setFrameShape(QFrame.Shape.NoFrame)
        # Pan with space-drag or the middle button instead; scroll bars only crowd the image.
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setBackgroundBrush(QColor("#202124"))
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.NoAnchor)  # zoom_by anchors itself
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.MinimalViewportUpdate)
        self.setOptimizationFlag(QGraphicsView.OptimizationFlag.DontSavePainterState, True)
        self.setMouseTracking(True)
        self.setAcceptDrops(True)
        self.viewport().setAcceptDrops(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.viewport().setAttribute(Qt.WidgetAttribute.WA_TabletTracking, True)
        self.viewport().setCursor(Qt.CursorShape.CrossCursor)

        self._image_item = QGraphicsPixmapItem()
        self._image_item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._frame = QGraphicsRectItem()
        self._frame.setPen(QPen(QColor(255, 255, 255, 90), 0))
        self._overlay = MaskOverlay()
        self._shape_item = QGraphicsPathItem()
        pen = QPen(QColor("white"), 0, Qt.PenStyle.DashLine)
        self._shape_item.setPen(pen)
        self._cursor_item = QGraphicsEllipseItem()
        self._cursor_item.setPen(QPen(QColor(255, 255, 255, 200), 0))
        self._cursor_item.setVisible(False)
        # What a job will really repaint (after grow, feather, context crop), set by whoever prepares the job.
        self._effective = MaskOverlay()
        self._effective.set_color(QColor("#33ccff"))
        self._effective.setOpacity(0.45)
        self._effective.setVisible(False)
        self._context_item = QGraphicsRectItem()
        self._context_item.setPen(QPen(QColor("#33ccff"), 0, Qt.PenStyle.DashLine))
        self._context_item.setVisible(False)
        # The frame tool: a dashed outline of the canvas-to-be with 8 handles and its size; the handles and the
        # label keep their screen size at any zoom.
        self._outpaint_frame = QGraphicsRectItem()
        self._outpaint_frame.setPen(QPen(QColor("#ffd166"), 0, Qt.PenStyle.DashLine))
        self._outpaint_frame.setVisible(False)
        self._handles: dict[str, QGraphicsRectItem] = {}
        for name in FRAME_HANDLES:
            half = HANDLE_SIZE / 2
            handle = QGraphicsRectItem(-half, -half, HANDLE_SIZE, HANDLE_SIZE, self._outpaint_frame)
            handle.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
            handle.setPen(QPen(QColor("black"), 1))
            handle.setBrush(QColor("#ffd166"))
            self._handles[name] = handle
        self._frame_label_box = QGraphicsRectItem(self._outpaint_frame)
        self._frame_label_box.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        self._frame_label_box.setPen(QPen(Qt.PenStyle.NoPen))
        self._frame_label_box.setBrush(QColor(0, 0, 0, 180))
        self._frame_label = QGraphicsSimpleTextItem(self._frame_label_box)
        self._frame_label.setBrush(QColor("white"))
        items = (
            self._image_item,
            self._frame,
            self._overlay,
            self._effective,
            self._context_item,
            self._shape_item,
            self._cursor_item,
            self._outpaint_frame,
        )
        for z, item in enumerate(items):
            item.setZValue(z)
            self.scene().addItem(item)

        self._dabs: OrderedDict[tuple[int, float], np.ndarray] = OrderedDict()
        self._stroking = False
        self._erasing = False
        self._last: tuple[float, float, float] | None = None  # x, y, pressure of the previous dab
        self._shape_points: list[QPointF] = []
        self._shape_origin: QPointF | None = None
        self._shape_erase = False
        self._panning = False
        self._space_held = False
        self._pan_from = None
        self._fitted = True
        self._frame_handle: str | None = None  # the frame handle being dragged
        self._frame_from: QPointF | None = None  # where that drag began (scene)
        self._frame_sides = (0, 0, 0, 0)  # left, top, right, bottom asked for by the drag (image px, unsnapped)

        document.image_changed.connect(self._on_image_changed)
        document.mask_changed.connect(self._overlay.refresh)
        document.mask_changed.connect(self._hide_effective_mask)
        document.image_changed.connect(self._hide_effective_mask)
        document.candidates_changed.connect(self._show_pixels)
        document.candidates_changed.connect(self._frame_reset)  # a result arriving mid-drag ends the drag
        brush.settings_changed.connect(self._on_brush_changed)
        self._apply_overlay_style()
        self._on_image_changed()

    # --- view -------------------------------------------------------------------------------------------
    def zoom(self) -> float:
        return self.transform().m11()

    def fit(self) -> None:
        if self.document.is_empty():
            return
        self._fitted = True
        self.fitInView(QRectF(0, 0, self.document.width, self.document.height), Qt.AspectRatioMode.KeepAspectRatio)
        self.zoom_changed.emit(self.zoom())

    def actual_size(self) -> None:
        self._fitted = False
        self.resetTransform()
        self.zoom_changed.emit(1.0)

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        """Zoom keeping the scene point under `anchor` (a viewport point; default the centre) in place."""
        if anchor is None:
            anchor = QPointF(self.viewport().width() / 2, self.viewport().height() / 2)
        target = min(MAX_ZOOM, max(MIN_ZOOM, self.zoom() * factor))
        before = self._scene_pos(anchor, pixel_centre=False)
        self._fitted = False
        self.scale(target / self.zoom(), target / self.zoom())
        delta = self._scene_pos(anchor, pixel_centre=False) - before
        self.translate(delta.x(), delta.y())
        self.zoom_changed.emit(self.zoom())

    def wheelEvent(self, event) -> None:  # noqa: N802
        steps = event.angleDelta().y() / 120
        if steps:
            self.zoom_by(WHEEL_STEP**steps, event.position())
        event.accept()

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self._fitted:
            self.fit()

    def set_effective_mask(self, mask: np.ndarray | None, context: QRect | None = None) -> None:
        """Overlay the mask a job will really use (e.g. grown and feathered; (H, W) uint8, canvas-sized) and the
        context rectangle it crops, instead of the painted mask. None hides it again. Not kept across edits:
        any change to the mask or image hides it, since it no longer describes the job."""
        doc = self.document
        if mask is None or mask.shape != (doc.height, doc.width):
            self._effective.setVisible(False)
            self._context_item.setVisible(False)
            self._overlay.setOpacity(self.brush.get("mask_opacity"))
            return
        self._effective_mask = np.ascontiguousarray(mask, dtype=np.uint8).copy()
        self._effective.set_mask(self._effective_mask)
        self._effective.setVisible(True)
        self._overlay.setOpacity(0.0)
        self._context_item.setVisible(context is not None and not context.isEmpty())
        if context is not None:
            self._context_item.setRect(QRectF(context))

    def effective_mask_shown(self) -> bool:
        return self._effective.isVisible()

    def _hide_effective_mask(self, *_args) -> None:
        if self._effective.isVisible():
            self.set_effective_mask(None)

    def _on_image_changed(self) -> None:
        doc = self.document
        self._overlay.set_mask(doc.mask_view())
        rect = QRectF(0, 0, doc.width, doc.height)
        self._frame.setRect(rect)
        self.scene().setSceneRect(rect.adjusted(-doc.width, -doc.height, doc.width, doc.height))
        self._frame_reset()
        self._show_pixels()
        if self._fitted:
            self.fit()

    def _show_pixels(self) -> None:
        doc = self.document
        pixels = doc.current_candidate()
        self._overlay.setVisible(pixels is None)  # a candidate is judged on its own, without the mask over it
        self._update_cursor(None)  # no brush outline over a candidate: painting is off while one is shown
        if pixels is None:
            pixels = doc.image_view()
        self._image_item.setPixmap(QPixmap.fromImage(array_to_qimage(pixels)) if pixels.size else QPixmap())

    def _on_brush_changed(self, key: str) -> None:
        if key in ("mask_color", "mask_opacity"):
            self._apply_overlay_style()
        if key in ("size", "tool"):
            self._update_cursor(None)
        if key == "tool":
            self._frame_reset()
            if not self._space_held and not self._panning:
                self.viewport().setCursor(Qt.CursorShape.CrossCursor)

    def _apply_overlay_style(self) -> None:
        self._overlay.set_color(QColor(self.brush.get("mask_color")))
        self._overlay.setOpacity(0.0 if self._effective.isVisible() else self.brush.get("mask_opacity"))

    # --- brush --------------------------------------------------------------------------------------------
    def dab(self, diameter: float) -> np.ndarray:
        key = (max(1, round(diameter)), round(self.brush.hardness, 3))
        dab = self._dabs.get(key)
        if dab is None:
            dab = masks.brush_dab(key[0], key[1])
            self._dabs[key] = dab
            if len(self._dabs) > 96:
                self._dabs.popitem(last=False)
        else:
            self._dabs.move_to_end(key)
        return dab

    def _dab_for(self, x: float, y: float, pressure: float) -> tuple[np.ndarray, int, int, float]:
        size = self.brush.size * (pressure if self.brush.get("pressure_size") else 1.0)
        amount = self.brush.opacity * (pressure if self.brush.get("pressure_opacity") else 1.0)
        return self.dab(size), math.floor(x), math.floor(y), amount

    def _stroke_begin(self, pos: QPointF, pressure: float, eraser_tip: bool = False) -> None:
        self._stroking = True
        self._erasing = self.brush.tool == "eraser" or eraser_tip
        self.document.begin_stroke("Erase" if self._erasing else "Brush stroke")
        self._last = (pos.x(), pos.y(), pressure)
        self.document.stamp([self._dab_for(pos.x(), pos.y(), pressure)], self._erasing)

    def _stroke_to(self, pos: QPointF, pressure: float) -> None:
        """Dabs every DAB_SPACING·diameter from the last dab towards `pos`; the last dab becomes the anchor."""
        assert self._last is not None
        x0, y0, p0 = self._last
        x1, y1 = pos.x(), pos.y()
        dist = math.hypot(x1 - x0, y1 - y0)
        dabs = []
        walked, anchor = 0.0, None
        while dist > 0:
            p = p0 + (pressure - p0) * walked / dist
            size = self.brush.size * (p if self.brush.get("pressure_size") else 1.0)
            walked += max(1.0, DAB_SPACING * size)
            if walked > dist:
                break
            t = walked / dist
            anchor = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, p0 + (pressure - p0) * t)
            dabs.append(self._dab_for(*anchor))
        if dabs:
            self._last = anchor
            self.document.stamp(dabs, self._erasing)

    def _stroke_end(self, pos: QPointF | None, pressure: float) -> None:
        if pos is not None:
            self._stroke_to(pos, pressure)
        self._stroking = False
        self._last = None
        self.document.end_stroke()

    # --- rectangle / lasso --------------------------------------------------------------------------------
    def _shape_begin(self, pos: QPointF) -> None:
        self._shape_origin = pos
        self._shape_points = [pos]
        self._update_shape(pos)

    def _update_shape(self, pos: QPointF) -> None:
        path = QPainterPath()
        if self.brush.tool == "rectangle" and self._shape_origin is not None:
            path.addRect(QRectF(self._shape_origin, pos).normalized())
        else:
            self._shape_points.append(pos)
            path.moveTo(self._shape_points[0])
            for point in self._shape_points[1:]:
                path.lineTo(point)
            path.closeSubpath()
        self._shape_item.setPath(path)

    def _shape_end(self, pos: QPointF, erase: bool) -> None:
        if self.brush.tool == "rectangle" and self._shape_origin is not None:
            r = QRectF(self._shape_origin, pos).normalized()
            x0, y0 = math.floor(r.left()), math.floor(r.top())
            x1, y1 = math.ceil(r.right()), math.ceil(r.bottom())
            self.document.fill_rect((x0, y0, x1 - x0, y1 - y0), erase)
        elif len(self._shape_points) >= 3:
            self._shape_points.append(pos)
            self.document.fill_polygon([(p.x(), p.y()) for p in self._shape_points], erase)
        self._shape_origin = None
        self._shape_points = []
        self._shape_item.setPath(QPainterPath())

    # --- frame (outpainting by dragging the canvas edges) -----------------------------------------------------
    def frame_shown(self) -> bool:
        doc = self.document
        return self.brush.tool == "frame" and not doc.is_empty() and not doc.candidate_count()

    def frame_extension(self) -> masks.Extension:
        """What the frame shows now, snapped exactly as `Document.extend` will snap it (nothing while not dragged)."""
        doc = self.document
        return masks.outpaint_geometry(doc.width, doc.height, *self._frame_sides)

    def frame_dragging(self) -> bool:
        return self._frame_handle is not None

    def frame_label_text(self) -> str:
        return self._frame_label.text() if self._outpaint_frame.isVisible() else ""

    def frame_handle_point(self, name: str) -> QPoint:
        """The viewport pixel at the centre of a frame handle (a key of FRAME_HANDLES)."""
        point = self.viewportTransform().map(self._handles[name].scenePos())
        return QPoint(math.floor(point.x()), math.floor(point.y()))

    def _update_frame(self, *_args) -> None:
        show = self.frame_shown()
        self._outpaint_frame.setVisible(show)
        if not show:
            return
        ext = self.frame_extension()
        rect = QRectF(-ext.left, -ext.top, ext.width, ext.height)
        self._outpaint_frame.setRect(rect)
        for name, (fx, fy) in FRAME_HANDLES.items():
            self._handles[name].setPos(rect.left() + fx * rect.width(), rect.top() + fy * rect.height())
        self._frame_label.setText(frame_size_text(ext))
        text = self._frame_label.boundingRect()
        # Inside the frame's top-left corner, clear of its handle, at any zoom (the box keeps its screen size).
        self._frame_label_box.setRect(QRectF(HANDLE_SIZE, HANDLE_SIZE, text.width() + 12, text.height() + 6))
        self._frame_label.setPos(HANDLE_SIZE + 6, HANDLE_SIZE + 3)
        self._frame_label_box.setPos(rect.topLeft())

    def _handle_at(self, viewport_point: QPointF) -> str | None:
        if not self._outpaint_frame.isVisible():
            return None
        best, reach = None, float(HANDLE_REACH)
        for name, handle in self._handles.items():
            centre = self.viewportTransform().map(handle.scenePos())
            distance = max(abs(centre.x() - viewport_point.x()), abs(centre.y() - viewport_point.y()))
            if distance <= reach:
                best, reach = name, distance
        return best

    def _frame_begin(self, pos: QPointF) -> None:
        handle = self._handle_at(self.viewportTransform().map(pos))
        if handle is not None:
            self._frame_handle, self._frame_from = handle, pos
            self._frame_sides = (0, 0, 0, 0)
            self._update_frame()

    def _frame_drag(self, pos: QPointF) -> None:
        """Grow the frame on the dragged handle's sides; dragging back to (or inside) the image cancels a side."""
        assert self._frame_handle is not None and self._frame_from is not None
        fx, fy = FRAME_HANDLES[self._frame_handle]
        dx, dy = pos.x() - self._frame_from.x(), pos.y() - self._frame_from.y()
        dead = FRAME_DEAD_ZONE / max(self.zoom(), 1e-6)

        def outward(delta: float) -> int:
            return min(MAX_FRAME_SIDE, round(delta)) if delta > dead else 0

        self._frame_sides = (
            outward(-dx) if fx == 0 else 0,
            outward(-dy) if fy == 0 else 0,
            outward(dx) if fx == 1 else 0,
            outward(dy) if fy == 1 else 0,
        )
        self._update_frame()

    def frame_apply(self) -> masks.Extension | None:
        """Extend the canvas to the frame (one undo step; the new area is masked). The view keeps showing the
        same part of the picture unless it is fitted to the window."""
        sides = self._frame_sides
        self._frame_reset()
        if not any(sides):
            return None
        centre = self._scene_pos(QPointF(self.viewport().width() / 2, self.viewport().height() / 2), False)
        ext = self.document.extend(*sides)
        if not self._fitted:
            self.centerOn(centre + QPointF(ext.left, ext.top))
        return ext

    def frame_cancel(self) -> None:
        self._frame_reset()

    def _frame_reset(self, *_args) -> None:
        self._frame_handle, self._frame_from = None, None
        self._frame_sides = (0, 0, 0, 0)
        self._update_frame()

    # --- pointer events -----------------------------------------------------------------------------------
    def _press(self, pos: QPointF, pressure: float, modifiers, eraser_tip: bool = False) -> None:
        if self.document.is_empty() or self.document.candidate_count():
            return
        tool = self.brush.tool
        if tool == "frame":
            self._frame_begin(pos)
        elif tool in ("brush", "eraser"):
            self._stroke_begin(pos, pressure, eraser_tip)
        else:
            self._shape_begin(pos)
            self._shape_erase = self.brush.get("shape_erase") != bool(modifiers & Qt.KeyboardModifier.AltModifier)

    def _move(self, pos: QPointF, pressure: float) -> None:
        if self._stroking:
            self._stroke_to(pos, pressure)
        elif self._shape_origin is not None:
            self._update_shape(pos)
        elif self._frame_handle is not None:
            self._frame_drag(pos)
        elif self.brush.tool == "frame" and not self._space_held:
            handle = self._handle_at(self.viewportTransform().map(pos))
            self.viewport().setCursor(HANDLE_CURSORS.get(handle, Qt.CursorShape.ArrowCursor))
        self._update_cursor(pos, pressure)
        self.cursor_moved.emit(math.floor(pos.x()), math.floor(pos.y()))

    def _release(self, pos: QPointF, pressure: float) -> None:
        if self._stroking:
            self._stroke_end(pos, pressure)
        elif self._shape_origin is not None:
            self._shape_end(pos, self._shape_erase)
        elif self._frame_handle is not None:
            self._frame_drag(pos)
            self.frame_apply()

    def _start_pan(self, event) -> None:
        self._panning = True
        self._pan_from = event.position()
        self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)

    def mousePressEvent(self, event) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.MiddleButton or (
            event.button() == Qt.MouseButton.LeftButton and self._space_held
        ):
            self._start_pan(event)
        elif event.button() == Qt.MouseButton.LeftButton:
            self._press(self._scene_pos(event.position()), 1.0, event.modifiers())
        event.accept()

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        if self._panning and self._pan_from is not None:
            delta = event.position() - self._pan_from
            self._pan_from = event.position()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - round(delta.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - round(delta.y()))
        else:
            self._move(self._scene_pos(event.position()), 1.0)
        event.accept()

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        if self._panning and event.button() in (Qt.MouseButton.MiddleButton, Qt.MouseButton.LeftButton):
            self._panning = False
            self.viewport().setCursor(Qt.CursorShape.OpenHandCursor if self._space_held else Qt.CursorShape.CrossCursor)
        elif event.button() == Qt.MouseButton.LeftButton:
            self._release(self._scene_pos(event.position()), 1.0)
        event.accept()

    def _scene_pos(self, position: QPointF, pixel_centre: bool = True) -> QPointF:
        """Exact (sub-pixel) scene position of a viewport point. A mouse position names a viewport pixel, so it
        maps from that pixel's centre; a tablet position is already the pen's exact point."""
        if pixel_centre:
            position = QPointF(math.floor(position.x()) + 0.5, math.floor(position.y()) + 0.5)
        return self.viewportTransform().inverted()[0].map(position)

    def viewportEvent(self, event) -> bool:  # noqa: N802
        if event.type() in TABLET_EVENTS:
            self._tablet(event)
            return True
        return super().viewportEvent(event)

    def _tablet(self, event) -> None:
        pos = self._scene_pos(event.position(), pixel_centre=False)
        pressure = max(0.0, min(1.0, event.pressure()))
        kind = event.type()
        if kind == QEvent.Type.TabletPress and event.button() == Qt.MouseButton.LeftButton:
            eraser_tip = event.pointerType() == QPointingDevice.PointerType.Eraser  # the pen turned over
            self._press(pos, pressure, event.modifiers(), eraser_tip)
        elif kind == QEvent.Type.TabletMove:
            self._move(pos, pressure)
        elif kind == QEvent.Type.TabletRelease:
            self._release(pos, pressure)
        event.accept()  # no synthesised mouse events: the pen already painted

    def _update_cursor(self, pos: QPointF | None, pressure: float = 1.0) -> None:
        doc = self.document
        show = self.brush.tool in ("brush", "eraser") and not doc.is_empty() and not doc.candidate_count()
        self._cursor_item.setVisible(show and (pos is not None or self._cursor_item.isVisible()))
        if not show:
            return
        centre = self._cursor_item.rect().center() if pos is None else pos
        d = self.brush.size * (pressure if self.brush.get("pressure_size") and self._stroking else 1.0)
        self._cursor_item.setRect(QRectF(centre.x() - d / 2, centre.y() - d / 2, d, d))

    def leaveEvent(self, event) -> None:  # noqa: N802
        self._cursor_item.setVisible(False)
        super().leaveEvent(event)

    # --- keys ----------------------------------------------------------------------------------------------
    def event(self, event) -> bool:
        # While a frame is dragged, Return applies it and Escape cancels it, before any shortcut sees them.
        if (
            event.type() == QEvent.Type.ShortcutOverride
            and self._frame_handle is not None
            and event.key() in FRAME_KEYS
        ):
            event.accept()
            return True
        return super().event(event)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        key = event.key()
        if self._frame_handle is not None and key in FRAME_KEYS:
            if key == Qt.Key.Key_Escape:
                self.frame_cancel()
            else:
                self.frame_apply()
        elif key == Qt.Key.Key_BracketLeft:
            self.brush.size = smaller_size(self.brush.size)
        elif key == Qt.Key.Key_BracketRight:
            self.brush.size = larger_size(self.brush.size)
        elif key == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space_held = True
            self.viewport().setCursor(Qt.CursorShape.OpenHandCursor)
        elif key == Qt.Key.Key_Space:
            pass
        else:
            super().keyPressEvent(event)
            return
        event.accept()

    def focusOutEvent(self, event) -> None:  # noqa: N802
        # A Space released in another window never reaches us: do not stay in pan mode.
        self._space_held = False
        self._panning = False
        self.viewport().setCursor(Qt.CursorShape.CrossCursor)
        super().focusOutEvent(event)

    def keyReleaseEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space_held = False
            self._panning = False
            self.viewport().setCursor(Qt.CursorShape.CrossCursor)
            event.accept()
            return
        super().keyReleaseEvent(event)

    # --- drag and drop ---------------------------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if _dropped_path(event.mimeData()) or event.mimeData().hasImage():
            event.acceptProposedAction()
        else:
            event.ignore()

    dragMoveEvent = dragEnterEvent  # noqa: N815

    def dropEvent(self, event) -> None:  # noqa: N802
        data = event.mimeData()
        path = _dropped_path(data)
        if path:
            self.image_dropped.emit(path)
        elif data.hasImage():
            self.document.set_image(qimage_to_rgb(QImage(data.imageData())), text="Drop image")
        event.acceptProposedAction()


def frame_size_text(ext: masks.Extension) -> str:
    """ "1280 × 1024 (+256 right)": the canvas size a frame gives and what each side grows by."""
    sides = (("left", ext.left), ("top", ext.top), ("right", ext.right), ("bottom", ext.bottom))
    grown = ", ".join(f"+{pixels} {side}" for side, pixels in sides if pixels)
    size = f"{ext.width} × {ext.height}"
    return f"{size} ({grown})" if grown else f"{size}: drag a handle outward to extend"


def smaller_size(size: float) -> float:
    return max(BrushSettings.MIN_SIZE, size - 1 if size <= 10 else round(size / 1.2))


def larger_size(size: float) -> float:
    return min(BrushSettings.MAX_SIZE, size + 1 if size < 10 else round(size * 1.2))


def _dropped_path(data) -> str:
    for url in data.urls() if data.hasUrls() else []:
        if url.isLocalFile() and Path(url.toLocalFile()).suffix.lower() in (
            ".png",
            ".jpg",
            ".jpeg",
            ".webp",
            ".bmp",
            ".tif",
            ".tiff",
        ):
            return url.toLocalFile()
    return ""


class CanvasWidget(QWidget):
    """The canvas with its tool bar: what the main window embeds.

    `CanvasWidget(settings=None, document=None, parent=None)`; `settings` is a QSettings that remembers the
    brush. The document (`self.document`) holds image, mask, candidates and the undo stack. Its actions
    (`self.actions_by_name`) have shortcuts active while the canvas has focus."""

    error = Signal(str)  # a readable message (a file that could not be opened or written)
    opened = Signal(str)  # a file became the canvas image (after its decode on the thread pool)

    def __init__(
        self, settings: QSettings | None = None, document: Document | None = None, parent: QWidget | None = None
    ):
        super().__init__(parent)
        from cascade_studio.ui.canvas_tools import CanvasToolBar

        self.document = document if document is not None else Document(self)
        self.brush = BrushSettings(settings, self)
        self.view = CanvasView(self.document, self.brush, self)
        self.actions_by_name: dict[str, QAction] = {}
        self._build_actions()
        self.toolbar = CanvasToolBar(self, self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.toolbar)
        layout.addWidget(self.view, 1)
        self.view.image_dropped.connect(self.open_path)
        self._tasks = TaskSignals(self)
        self._tasks.decoded.connect(self._opened)
        self._open_ticket = 0
        self._opening: tuple[int, str, Callable[[], None] | None] | None = None

    def _build_actions(self) -> None:
        doc = self.document
        undo = doc.undo_stack.createUndoAction(self, "Undo")
        undo.setShortcut(QKeySequence.StandardKey.Undo)
        redo = doc.undo_stack.createRedoAction(self, "Redo")
        redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self._register("undo", undo)
        self._register("redo", redo)
        specs = [
            ("open", "Open image…", "Ctrl+O", self.open_dialog),
            ("paste", "Paste image", "Ctrl+V", self.paste),
            ("save", "Save image as…", "Ctrl+Shift+S", self.save_dialog),
            ("export_mask", "Export mask…", "Ctrl+Shift+M", self.export_mask_dialog),
            ("fit", "Fit", "Ctrl+0", self.view.fit),
            ("actual_size", "100 %", "Ctrl+1", self.view.actual_size),
            ("zoom_in", "Zoom in", "Ctrl+=", lambda: self.view.zoom_by(WHEEL_STEP)),
            ("zoom_out", "Zoom out", "Ctrl+-", lambda: self.view.zoom_by(1 / WHEEL_STEP)),
            ("brush", "Brush", "B", lambda: self.brush.set("tool", "brush")),
            ("eraser", "Eraser", "E", lambda: self.brush.set("tool", "eraser")),
            ("rectangle", "Rectangle", "R", lambda: self.brush.set("tool", "rectangle")),
            ("lasso", "Lasso", "L", lambda: self.brush.set("tool", "lasso")),
            ("frame", "Frame", "F", lambda: self.brush.set("tool", "frame")),
            ("invert", "Invert mask", "Ctrl+I", doc.invert_mask),
            ("clear", "Clear mask", "Ctrl+Shift+Backspace", doc.clear_mask),
            ("next_candidate", "Next candidate", "N", doc.next_candidate),
            ("previous_candidate", "Previous candidate", "Shift+N", doc.previous_candidate),
            ("accept_candidate", "Accept candidate", "Return", doc.accept_candidate),
            ("discard_candidate", "Discard candidate", "Delete", doc.discard_candidate),
        ]
        for name, text, shortcut, slot in specs:
            action = QAction(text, self)
            action.setShortcut(QKeySequence(shortcut))
            action.triggered.connect(slot)
            self._register(name, action)

    def _register(self, name: str, action: QAction) -> None:
        action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.addAction(action)
        self.actions_by_name[name] = action

    # --- files --------------------------------------------------------------------------------------------
    def open_path(self, path: str, then: Callable[[], None] | None = None) -> bool:
        """Make the image file `path` the canvas image (one undo step), decoded on the thread pool so that a large
        file never holds up the window; `then` runs once it is on the canvas. False (and `error`) when there is
        no such file; a decode error arrives later through `error`. A later open supersedes an unfinished one."""
        if not path or not Path(path).is_file():
            self.error.emit(f"Cannot open {path}: no such file")
            return False
        self._open_ticket += 1
        self._opening = (self._open_ticket, path, then)
        QThreadPool.globalInstance().start(DecodeImage(self._open_ticket, path, self._tasks))
        return True

    def _opened(self, ticket: int, pixels: np.ndarray | None, error: str) -> None:
        if self._opening is None or ticket != self._opening[0]:
            return  # superseded by a later open
        _, path, then = self._opening
        self._opening = None
        if pixels is None:
            self.error.emit(error)
            return
        self.document.set_image(pixels, text=f"Open {Path(path).name}", path=path)
        self.view.fit()
        self.opened.emit(path)
        if then is not None:
            then()

    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image", "", IMAGE_FILTER)
        if path:
            self.open_path(path)

    def paste(self) -> bool:
        data = QGuiApplication.clipboard().mimeData()
        if data is not None and data.hasImage():
            image = QImage(data.imageData())
            if not image.isNull():
                self.document.set_image(qimage_to_rgb(image), text="Paste image", path="")
                self.view.fit()
                return True
        path = _dropped_path(data) if data is not None else ""
        return self.open_path(path) if path else False

    def save_dialog(self) -> None:
        if self.document.is_empty():
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save image", self._suggest("canvas.png"), "PNG (*.png)")
        if path:
            self._write(self.document.save_image, path)

    def export_mask_dialog(self) -> None:
        if self.document.is_empty():
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export mask", self._suggest("mask.png"), "PNG (*.png)")
        if path:
            self._write(self.document.save_mask, path)

    def _suggest(self, name: str) -> str:
        current = self.document.path()
        return str(Path(current).with_name(Path(current).stem + "_" + name)) if current else name

    def _write(self, writer, path: str) -> None:
        try:
            writer(path)
        except OSError as exc:
            self.error.emit(f"Cannot write {path}: {exc}")
            QMessageBox.warning(self, "Cascade Studio", f"Cannot write {path}:\n{exc}")
