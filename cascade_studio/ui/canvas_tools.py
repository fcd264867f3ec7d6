"""The canvas tool bar: tools, brush options, mask display, mask operations and canvas extension.

Every control binds to the canvas's `BrushSettings` model (both ways) or calls a `Document` method; it owns no
state of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QActionGroup, QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from cascade_studio.ui.canvas import CanvasWidget

TOOLS = ("brush", "eraser", "rectangle", "lasso", "frame")


class CanvasToolBar(QWidget):
    """Two rows: the tools and brush options (`self.tools`), then the mask and canvas operations
    (`self.mask_tools`)."""

    def __init__(self, canvas: CanvasWidget, parent: QWidget | None = None):
        super().__init__(parent)
        self.canvas = canvas
        brush, doc, actions = canvas.brush, canvas.document, canvas.actions_by_name
        self.tools, self.mask_tools = QToolBar("Canvas tools"), QToolBar("Mask")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        for bar in (self.tools, self.mask_tools):
            bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            layout.addWidget(bar)
        self._bar = self.tools

        group = QActionGroup(self)
        for name in TOOLS:
            action = actions[name]
            action.setCheckable(True)
            action.setChecked(brush.tool == name)
            if name == "frame":
                action.setToolTip("Frame (F): drag the canvas edges outward to extend it for outpainting")
            group.addAction(action)
            self._bar.addAction(action)
        self._bar.addSeparator()

        self.size = self._spin(QSpinBox(), "size", "Size", 1, int(brush.MAX_SIZE), " px", "Brush size ( [ and ] )")
        self.hardness = self._spin(QDoubleSpinBox(), "hardness", "Hardness", 0, 1, "", "Hardness: 0 soft, 1 hard edge")
        self.opacity = self._spin(QDoubleSpinBox(), "opacity", "Opacity", 0.05, 1, "", "Brush opacity")
        self.pressure_size = self._check("Pen size", "pressure_size", "Tablet pressure changes the brush size")
        self.pressure_opacity = self._check(
            "Pen opacity", "pressure_opacity", "Tablet pressure changes the brush opacity"
        )
        self.shape_erase = self._check("Shapes erase", "shape_erase", "Rectangle and lasso erase the mask (Alt flips)")
        self._bar.addSeparator()
        for name in ("undo", "redo", "fit", "actual_size"):
            self._bar.addAction(actions[name])

        self._bar = bar = self.mask_tools
        bar.addWidget(QLabel(" Mask colour "))
        self.color = QToolButton()
        self.color.setToolTip("Mask colour")
        self.color.clicked.connect(self._pick_color)
        bar.addWidget(self.color)
        self.mask_opacity = self._spin(QDoubleSpinBox(), "mask_opacity", "Opacity", 0, 1, "", "Mask overlay opacity")
        bar.addSeparator()

        bar.addAction(actions["invert"])
        bar.addAction(actions["clear"])
        bar.addSeparator()
        self.amount = QSpinBox()
        self.amount.setRange(1, 512)
        self.amount.setValue(16)
        self.amount.setSuffix(" px")
        self.amount.setToolTip("Pixels for grow, shrink and feather")
        bar.addWidget(QLabel(" by "))
        bar.addWidget(self.amount)
        bar.addAction("Grow", lambda: doc.grow_mask(self.amount.value()))
        bar.addAction("Shrink", lambda: doc.shrink_mask(self.amount.value()))
        bar.addAction("Feather", lambda: doc.feather_mask(self.amount.value()))
        bar.addSeparator()
        bar.addAction("Extend canvas…", self.extend_dialog)
        self.candidate_label = QLabel()
        bar.addWidget(self.candidate_label)

        brush.settings_changed.connect(self._sync)
        doc.candidates_changed.connect(self._sync_candidates)
        self._sync("")
        self._sync_candidates()

    def _spin(self, box, key: str, title: str, low: float, high: float, suffix: str, tip: str):
        box.setRange(low, high)
        if isinstance(box, QDoubleSpinBox):
            box.setSingleStep(0.05)
            box.setDecimals(2)
        box.setSuffix(suffix)
        box.setToolTip(tip)
        box.setKeyboardTracking(False)
        box.valueChanged.connect(lambda value: self.canvas.brush.set(key, value))
        self._bar.addWidget(QLabel(f" {title} "))
        self._bar.addWidget(box)
        box.setProperty("setting", key)
        return box

    def _check(self, text: str, key: str, tip: str = "") -> QCheckBox:
        box = QCheckBox(text)
        box.setToolTip(tip or text)
        box.toggled.connect(lambda on: self.canvas.brush.set(key, on))
        box.setProperty("setting", key)
        self._bar.addWidget(box)
        return box

    def _sync(self, _key: str) -> None:
        brush = self.canvas.brush
        for box in (self.size, self.hardness, self.opacity, self.mask_opacity):
            key = box.property("setting")
            box.blockSignals(True)
            box.setValue(brush.get(key))
            box.blockSignals(False)
        for box in (self.pressure_size, self.pressure_opacity, self.shape_erase):
            box.blockSignals(True)
            box.setChecked(brush.get(box.property("setting")))
            box.blockSignals(False)
        for name in TOOLS:
            self.canvas.actions_by_name[name].setChecked(brush.tool == name)
        color = QColor(brush.get("mask_color"))
        self.color.setStyleSheet(f"background: {color.name()}; min-width: 18px;")

    def _sync_candidates(self) -> None:
        doc = self.canvas.document
        count = doc.candidate_count()
        self.candidate_label.setText(
            f"  Candidate {doc.candidate_index() + 1}/{count} — Enter accept · Delete discard · N next" if count else ""
        )

    def _pick_color(self) -> None:
        color = QColorDialog.getColor(QColor(self.canvas.brush.get("mask_color")), self, "Mask colour")
        if color.isValid():
            self.canvas.brush.set("mask_color", color.name())

    def extend_dialog(self) -> None:
        doc = self.canvas.document
        if doc.is_empty():
            return
        dialog = ExtendDialog(doc.width, doc.height, self)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            doc.extend(*dialog.values())


class ExtendDialog(QDialog):
    """Outpainting: pixels to add per side; the new size is shown snapped to the 128 px grid."""

    def __init__(self, width: int, height: int, parent: QWidget | None = None):
        super().__init__(parent)
        from cascade_studio.core.mask import outpaint_geometry

        self.setWindowTitle("Extend canvas")
        self._geometry = lambda *sides: outpaint_geometry(width, height, *sides)
        form = QFormLayout(self)
        self.sides = []
        for name in ("Left", "Top", "Right", "Bottom"):
            box = QSpinBox()
            box.setRange(0, 4096)
            box.setSingleStep(128)
            box.setSuffix(" px")
            box.valueChanged.connect(self._update)
            form.addRow(name, box)
            self.sides.append(box)
        self.result_label = QLabel()
        form.addRow("New size", self.result_label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self._update()

    def values(self) -> tuple[int, int, int, int]:
        return tuple(box.value() for box in self.sides)  # type: ignore[return-value]

    def _update(self) -> None:
        ext = self._geometry(*self.values())
        self.result_label.setText(
            f"{ext.width} × {ext.height} (left {ext.left}, top {ext.top}, right {ext.right}, bottom {ext.bottom})"
        )
