"""A/B compare of two images: a slider view (drag the divider) and side by side."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QPointF, QRect, QRectF, QSize, Qt, QThreadPool, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import (
    QButtonGroup,
    QDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .image_view import LoadImage, LoadSignals

MODES = ("slider", "side_by_side")


def _fit(size: QSize, bounds: QRect) -> QRectF:
    if size.isEmpty() or bounds.isEmpty():
        return QRectF()
    scale = min(bounds.width() / size.width(), bounds.height() / size.height())
    w, h = size.width() * scale, size.height() * scale
    return QRectF(bounds.x() + (bounds.width() - w) / 2, bounds.y() + (bounds.height() - h) / 2, w, h)


class CompareView(QWidget):
    """Paints two images either overlaid with a draggable divider or next to each other."""

    divider_changed = Signal(float)
    mode_changed = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._a = QImage()
        self._b = QImage()
        self._labels = ("A", "B")
        self._mode = "slider"
        self._divider = 0.5
        self.setMinimumSize(320, 240)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(False)

    def set_images(self, a: QImage, b: QImage, labels: tuple[str, str] = ("A", "B")) -> None:
        self._a, self._b, self._labels = a, b, labels
        self.update()

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} (got {mode!r})")
        if mode != self._mode:
            self._mode = mode
            self.update()
            self.mode_changed.emit(mode)

    @property
    def divider(self) -> float:
        return self._divider

    def set_divider(self, value: float) -> None:
        value = min(1.0, max(0.0, float(value)))
        if value != self._divider:
            self._divider = value
            self.update()
            self.divider_changed.emit(value)

    def swap(self) -> None:
        self.set_images(self._b, self._a, (self._labels[1], self._labels[0]))

    def _bounds(self) -> QRect:
        return self.rect().adjusted(8, 8, -8, -8)

    def image_rect(self) -> QRectF:
        """The area the slider spans: both images fitted (each keeping its own aspect ratio) and united."""
        rects = [_fit(image.size(), self._bounds()) for image in (self._a, self._b) if not image.isNull()]
        if not rects:
            return QRectF()
        return rects[0].united(rects[-1])

    # -- painting ------------------------------------------------------------------------------------------

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().base())
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        if self._mode == "slider":
            self._paint_slider(painter)
        else:
            self._paint_side_by_side(painter)
        painter.end()

    def _paint_slider(self, painter: QPainter) -> None:
        target = self.image_rect()
        if target.isEmpty():
            return
        split = target.x() + target.width() * self._divider
        painter.save()
        painter.setClipRect(QRectF(target.x(), target.y(), split - target.x(), target.height()))
        if not self._a.isNull():
            painter.drawImage(_fit(self._a.size(), self._bounds()), self._a)
        painter.restore()
        painter.save()
        painter.setClipRect(QRectF(split, target.y(), target.right() - split, target.height()))
        if not self._b.isNull():
            painter.drawImage(_fit(self._b.size(), self._bounds()), self._b)
        painter.restore()
        painter.setPen(QPen(QColor(255, 255, 255, 220), 2))
        painter.drawLine(QPointF(split, target.top()), QPointF(split, target.bottom()))
        painter.setBrush(QColor(40, 40, 44, 230))
        painter.drawEllipse(QPointF(split, target.center().y()), 10, 10)
        self._label(painter, QPointF(target.left() + 8, target.top() + 8), self._labels[0], left=True)
        self._label(painter, QPointF(target.right() - 8, target.top() + 8), self._labels[1], left=False)

    def _paint_side_by_side(self, painter: QPainter) -> None:
        bounds = self.rect().adjusted(8, 8, -8, -8)
        half = bounds.width() // 2
        for i, (image, label) in enumerate(((self._a, self._labels[0]), (self._b, self._labels[1]))):
            cell = QRect(bounds.x() + i * (half + 4), bounds.y(), half - 4, bounds.height())
            target = _fit(image.size(), cell)
            if not target.isEmpty():
                painter.drawImage(target, image)
                self._label(painter, QPointF(target.left() + 8, target.top() + 8), label, left=True)

    def _label(self, painter: QPainter, at: QPointF, text: str, *, left: bool) -> None:
        metrics = painter.fontMetrics()
        w, h = metrics.horizontalAdvance(text) + 12, metrics.height() + 6
        box = QRectF(at.x() if left else at.x() - w, at.y(), w, h)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 160))
        painter.drawRoundedRect(box, 4, 4)
        painter.setPen(QColor("white"))
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)

    # -- interaction ---------------------------------------------------------------------------------------

    def _drag_to(self, x: float) -> None:
        target = self.image_rect()
        if self._mode == "slider" and target.width() > 0:
            self.set_divider((x - target.x()) / target.width())

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._drag_to(event.position().x())

    def mouseMoveEvent(self, event) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._drag_to(event.position().x())

    def keyPressEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_Left:
            self.set_divider(self._divider - 0.05)
        elif event.key() == Qt.Key.Key_Right:
            self.set_divider(self._divider + 0.05)
        else:
            super().keyPressEvent(event)


class CompareDialog(QDialog):
    """Compare two images. Keys: S switches slider / side by side, W swaps, Left/Right move the divider."""

    loaded = Signal()  # both images decoded (either may be null: the note says which could not be opened)

    def __init__(self, path_a: str | os.PathLike[str], path_b: str | os.PathLike[str], parent: QWidget | None = None):
        super().__init__(parent)
        self.paths = (Path(path_a), Path(path_b))
        self.setWindowTitle(f"Compare — {self.paths[0].name} vs {self.paths[1].name}")
        self.resize(1100, 720)
        self.view = CompareView(self)
        # Two full images, decoded on the thread pool when the user asks to compare them; the dialog opens at once
        # and shows them when both have arrived (`loaded`).
        self.images: tuple[QImage, QImage] = (QImage(), QImage())
        self._pending = {0, 1}
        self._signals = LoadSignals(self)
        self._signals.loaded.connect(self._arrived)
        for i, path in enumerate(self.paths):
            QThreadPool.globalInstance().start(LoadImage(i, os.fspath(path), self._signals))

        self.slider_button = QToolButton(text="Slider", checkable=True, checked=True)
        self.side_button = QToolButton(text="Side by side", checkable=True)
        group = QButtonGroup(self)
        group.setExclusive(True)
        group.addButton(self.slider_button)
        group.addButton(self.side_button)
        self.slider_button.toggled.connect(lambda on: on and self.view.set_mode("slider"))
        self.side_button.toggled.connect(lambda on: on and self.view.set_mode("side_by_side"))
        self.view.mode_changed.connect(self._sync_buttons)
        # The checked view button must stand out whatever the application style makes of checked tool buttons.
        self.setStyleSheet("QToolButton:checked { background: palette(highlight); color: palette(highlighted-text); }")
        swap = QPushButton("Swap A/B")
        swap.setAutoDefault(False)
        swap.clicked.connect(self.view.swap)
        close = QPushButton("Close")
        close.setAutoDefault(False)
        close.clicked.connect(self.accept)
        self.note = note = QLabel("Opening the two images…")
        note.setEnabled(False)

        bar = QHBoxLayout()
        bar.addWidget(self.slider_button)
        bar.addWidget(self.side_button)
        bar.addWidget(swap)
        bar.addSpacing(12)
        bar.addWidget(note, 1)
        bar.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.view, 1)
        layout.addLayout(bar)
        self.view.setFocus()

    def _arrived(self, index: int, image: QImage, _path: str, _error: str) -> None:
        images = list(self.images)
        images[index] = image
        self.images = (images[0], images[1])
        self._pending.discard(index)
        if self._pending:
            return
        self.view.set_images(*self.images, labels=(f"A · {self.paths[0].name}", f"B · {self.paths[1].name}"))
        errors = [f"Cannot open {p.name}" for p, im in zip(self.paths, self.images) if im.isNull()]
        self.note.setText("; ".join(errors) or "Drag across the image to move the divider · S switch view · W swap")
        self.note.setEnabled(not errors)
        self.loaded.emit()

    def keyPressEvent(self, event) -> None:
        # Plain keys, not QShortcuts: they work whenever the dialog has focus, also before it is activated.
        if event.key() == Qt.Key.Key_S:
            self.toggle_mode()
        elif event.key() == Qt.Key.Key_W:
            self.view.swap()
        else:
            super().keyPressEvent(event)

    def set_mode(self, mode: str) -> None:
        self.view.set_mode(mode)

    def toggle_mode(self) -> None:
        self.view.set_mode("side_by_side" if self.view.mode == "slider" else "slider")

    def _sync_buttons(self, mode: str) -> None:
        (self.slider_button if mode == "slider" else self.side_button).setChecked(True)
