"""The centre viewer: one image (a file or a live preview), fit / 100 % / zoom to the cursor, pan by dragging.

Files are decoded into a `QImage` on the global thread pool (a 4096² PNG takes a noticeable time), and only
the newest request is shown; previews arrive as uint8 arrays and become a `QImage` here, in the GUI thread,
copied so the array can be released at once.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QPoint, QRectF, QRunnable, Qt, QThreadPool, Signal
from PySide6.QtGui import QImage, QImageReader, QPainter, QPixmap
from PySide6.QtWidgets import QFrame, QGraphicsPixmapItem, QGraphicsScene, QGraphicsView

MIN_ZOOM, MAX_ZOOM = 0.02, 32.0
WHEEL_STEP = 1.25
HINT = "Write a prompt and press Ctrl+Enter.\nPreviews and results appear here."


class LoadSignals(QObject):
    loaded = Signal(int, QImage, str, str)  # ticket, image (null on failure), path, error message


class LoadImage(QRunnable):
    """Decodes one file on a pool thread; reports through `signals` (queued into the GUI thread)."""

    def __init__(self, ticket: int, path: str, signals: LoadSignals):
        super().__init__()
        self.ticket, self.path, self.signals = ticket, path, signals

    def run(self) -> None:
        reader = QImageReader(self.path)
        reader.setAutoTransform(True)
        image = reader.read()
        error = "" if not image.isNull() else f"Cannot open {self.path}: {reader.errorString()}"
        with contextlib.suppress(RuntimeError):  # the view was closed meanwhile
            self.signals.loaded.emit(self.ticket, image, self.path, error)


def array_to_qimage(pixels: np.ndarray) -> QImage:
    """A QImage owning a copy of an (H, W, 3) or (H, W, 4) uint8 array."""
    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) or (H, W, 4) uint8 array, got shape {array.shape}")
    h, w, c = array.shape
    fmt = QImage.Format.Format_RGB888 if c == 3 else QImage.Format.Format_RGBA8888
    return QImage(array.data, w, h, w * c, fmt).copy()


class ImageView(QGraphicsView):
    """Shows one image. `show_path` (async), `show_array` / `show_image` (at once); `fit`, `actual_size`."""

    image_changed = Signal(str)  # the path shown now, "" for a preview or nothing
    load_failed = Signal(str)  # a readable message
    zoom_changed = Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self._item = QGraphicsPixmapItem()
        self._item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.scene().addItem(self._item)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setRenderHints(QPainter.RenderHint.SmoothPixmapTransform | QPainter.RenderHint.Antialiasing)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setBackgroundBrush(self.palette().dark())
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._fitting = True
        self._path = ""
        self._ticket = 0
        self._signals = LoadSignals(self)
        self._signals.loaded.connect(self._on_loaded)

    # -- what is shown ---------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def has_image(self) -> bool:
        return not self._item.pixmap().isNull()

    @property
    def image_size(self) -> tuple[int, int]:
        pixmap = self._item.pixmap()
        return pixmap.width(), pixmap.height()

    @property
    def zoom(self) -> float:
        return self.transform().m11()

    @property
    def fitting(self) -> bool:
        return self._fitting

    def show_path(self, path: str | Path) -> None:
        """Load and show a file; decoding happens off the GUI thread, the newest call wins."""
        self._ticket += 1
        QThreadPool.globalInstance().start(LoadImage(self._ticket, str(path), self._signals))

    def _on_loaded(self, ticket: int, image: QImage, path: str, error: str) -> None:
        if ticket != self._ticket:
            return  # a newer image was asked for meanwhile
        if error:
            self.load_failed.emit(error)
            return
        self._set_image(image, path)

    def show_array(self, pixels: np.ndarray) -> None:
        """Show a live preview: an (H, W, 3) uint8 array (copied here, so the caller may drop it)."""
        self._ticket += 1  # a file still loading must not replace the newer preview
        self._set_image(array_to_qimage(pixels), "")

    def show_image(self, image: QImage, path: str = "") -> None:
        self._ticket += 1
        self._set_image(image, path)

    def clear(self) -> None:
        self._ticket += 1
        self._item.setPixmap(QPixmap())
        self._path = ""
        self.scene().setSceneRect(QRectF())
        self.viewport().update()
        self.image_changed.emit("")

    def _set_image(self, image: QImage, path: str) -> None:
        old_size = self.image_size
        self._item.setPixmap(QPixmap.fromImage(image))
        self.scene().setSceneRect(QRectF(self._item.boundingRect()))
        self._path = path
        if self._fitting or old_size != self.image_size:
            # A preview (192 px) and its final image (1024 px) differ in size: show both at the same place.
            if self._fitting or old_size == (0, 0):
                self.fit()
            else:
                self._scale_to(self.zoom * old_size[0] / max(1, self.image_size[0]))
        self.viewport().update()
        self.image_changed.emit(path)

    # -- zoom and pan ----------------------------------------------------------------------------------

    def fit(self) -> None:
        self._fitting = True
        if self.has_image:
            self.fitInView(self._item, Qt.AspectRatioMode.KeepAspectRatio)
            self.zoom_changed.emit(self.zoom)

    def actual_size(self) -> None:
        self._fitting = False
        self._scale_to(1.0)

    def zoom_in(self) -> None:
        self._fitting = False
        self._scale_to(self.zoom * WHEEL_STEP)

    def zoom_out(self) -> None:
        self._fitting = False
        self._scale_to(self.zoom / WHEEL_STEP)

    def _scale_to(self, zoom: float) -> None:
        zoom = min(MAX_ZOOM, max(MIN_ZOOM, zoom))
        factor = zoom / self.zoom
        self.scale(factor, factor)
        self.zoom_changed.emit(self.zoom)

    def wheelEvent(self, event) -> None:  # noqa: N802 - Qt override
        if not self.has_image:
            return
        steps = event.angleDelta().y() / 120
        if steps:
            self._fitting = False
            self.zoom_at(self.zoom * WHEEL_STEP**steps, event.position().toPoint())
        event.accept()

    def zoom_at(self, zoom: float, pos: QPoint) -> None:
        """Zoom keeping the image point under `pos` (viewport coordinates) where it is."""
        # AnchorUnderMouse would use the last mouse *move*, which a wheel event does not update
        before = self.mapToScene(pos)
        self._scale_to(zoom)
        moved = self.mapFromScene(before) - pos
        self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() + moved.x())
        self.verticalScrollBar().setValue(self.verticalScrollBar().value() + moved.y())

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        if self._fitting:
            self.fit()

    def drawForeground(self, painter: QPainter, rect) -> None:  # noqa: N802 - Qt override
        if self.has_image:
            return
        painter.save()
        painter.resetTransform()
        painter.setPen(self.palette().placeholderText().color())
        painter.drawText(self.viewport().rect(), Qt.AlignmentFlag.AlignCenter, HINT)
        painter.restore()
