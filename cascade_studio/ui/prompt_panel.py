"""The prompt panel: widgets bound two-way to a `SessionModel`; it holds no values of its own.

`bind(...)` connects one model field to one widget in both directions (krita-ai-diffusion's pattern): the
model's `<name>_changed` updates the widget, the widget's signal sets the model; both sides only signal on a
real change, so each edit settles after one round. Setting `panel.session` rebinds everything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QMetaObject, QObject, QRegularExpression, QSize, Qt, Signal
from PySide6.QtGui import QAction, QImageReader, QKeySequence, QPixmap, QRegularExpressionValidator
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.geometry import MAX_SIZE, MIN_SIZE, SIZE_STEP
from ..core.paths import LORA_SUFFIX
from ..core.request import MASK_MODES, MAX_MASK_PIXELS, MAX_SEED, STRENGTH_MODES
from ..state.session import (
    CUSTOM,
    MAX_BATCH,
    MAX_COUNT,
    MAX_GROW,
    MAX_PADDING,
    MAX_STEPS,
    SIZE_PRESETS,
    SessionModel,
)
from .lora_list import LoraList

MODE_LABELS = {
    "text": "Text to image",
    "variation": "Image variation",
    "img2img": "Image to image",
    "inpaint": "Inpaint (canvas mask)",
    "outpaint": "Outpaint (extend the canvas)",
    "canny": "Canny edges",
    "upscale": "Upscale ×2",
}
CONTEXT_LABELS = {"image": "Whole image", "mask": "Masked area + padding"}
METHOD_LABELS = {"auto": "Auto", "controlnet": "Inpainting ControlNet", "latent_blend": "Latent blending"}
INPUT_LABELS = {"canvas": "The canvas", "file": "An image file"}
SIDES = ("left", "top", "right", "bottom")
CONTROL_MODES = ("inpaint", "outpaint", "canny", "upscale")
HINT_COLOUR = "#9aa0a6"  # explanations (the theme's "note" colour is for warnings)
SEED_LABELS = {"random": "Random", "fixed": "Fixed", "increment": "Increment"}
VARIANT_LABELS = {"lite": "Lite (1B, ≤ 16 GB VRAM)", "full": "Full (3.6B)"}
SAMPLER_LABELS = {"ddpm": "DDPM", "ddim": "DDIM"}
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff)"


def _dropped_files(mime, suffixes: set[str]) -> list[str]:
    """Local files in a drop whose suffix (lower case, with its dot) is one of ``suffixes``."""
    paths = [url.toLocalFile() for url in mime.urls() if url.isLocalFile()] if mime.hasUrls() else []
    return [p for p in paths if Path(p).suffix.lower() in suffixes and Path(p).is_file()]


def image_paths_from_mime(mime) -> list[str]:
    """Local files in a drop that Qt can read as images."""
    return _dropped_files(mime, {"." + bytes(f).decode().lower() for f in QImageReader.supportedImageFormats()})


def lora_paths_from_mime(mime) -> list[str]:
    """Local LoRA files (.safetensors) in a drop."""
    return _dropped_files(mime, {LORA_SUFFIX})


# -- bindings ------------------------------------------------------------------------------------------


def bind(
    model: QObject,
    name: str,
    widget_signal: Any,
    set_widget: Callable[[Any], None],
    get_widget: Callable[[], Any],
) -> list[QMetaObject.Connection]:
    """Keep `model.<name>` and a widget equal; returns the connections (to undo with `unbind`)."""

    updating = False

    def to_widget(value: Any) -> None:
        nonlocal updating
        if get_widget() != value:
            updating = True  # a widget that rounds (a spin box's decimals) must not write back its rounding
            try:
                set_widget(value)
            finally:
                updating = False

    def to_model(*_: Any) -> None:
        if updating:
            return
        value = get_widget()
        if value is not None and getattr(model, name) != value:  # None: the widget holds nothing usable
            setattr(model, name, value)
        # the model may have changed the value (snapped a size) to what it already held: show that
        to_widget(getattr(model, name))

    to_widget(getattr(model, name))
    return [getattr(model, f"{name}_changed").connect(to_widget), widget_signal.connect(to_model)]


def bind_combo(model: QObject, name: str, combo: QComboBox) -> list[QMetaObject.Connection]:
    """A combo box whose items carry the model's values as item data."""
    return bind(
        model,
        name,
        combo.currentIndexChanged,
        lambda value: combo.setCurrentIndex(combo.findData(value)),
        combo.currentData,
    )


def bind_text(model: QObject, name: str, edit: QPlainTextEdit) -> list[QMetaObject.Connection]:
    # setPlainText resets the cursor and the undo stack, so it only runs when the text really differs
    return bind(model, name, edit.textChanged, edit.setPlainText, edit.toPlainText)


def bind_spin(model: QObject, name: str, spin: QSpinBox | QDoubleSpinBox) -> list[QMetaObject.Connection]:
    return bind(model, name, spin.valueChanged, spin.setValue, spin.value)


def unbind(connections: list[QMetaObject.Connection]) -> None:
    for connection in connections:
        QObject.disconnect(connection)
    connections.clear()


def _combo(labels: dict[str, str]) -> QComboBox:
    combo = QComboBox()
    for value, label in labels.items():
        combo.addItem(label, value)
    return combo


def _spin(low: int, high: int, step: int = 1) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setKeyboardTracking(False)  # the model hears the value once typing is done, not per keystroke
    return spin


def _double(low: float, high: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setDecimals(decimals)
    spin.setKeyboardTracking(False)
    return spin


class _PromptEdit(QPlainTextEdit):
    def __init__(self, placeholder: str, lines: int):
        super().__init__()
        self.setPlaceholderText(placeholder)
        self.setTabChangesFocus(True)
        self._lines = lines

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        line = self.fontMetrics().lineSpacing()
        return QSize(260, line * self._lines + 12)


class PromptPanel(QWidget):
    """Every generation setting, bound to `session`. Ctrl+Enter (the `generate_action`) asks to generate."""

    generate_requested = Signal()
    extend_requested = Signal()  # extend the canvas now by the outpaint extents
    effective_mask_toggled = Signal(bool)  # show what an inpaint/outpaint job will repaint on the canvas
    edges_toggled = Signal(bool)  # show the canny edge layer on the canvas

    def __init__(self, session: SessionModel, parent: QWidget | None = None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self._connections: list[QMetaObject.Connection] = []
        self._session: SessionModel | None = None

        self.generate_action = QAction("Generate", self)
        self.generate_action.setShortcuts([QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")])
        self.generate_action.setToolTip("Queue the images these settings describe (Ctrl+Enter)")
        self.generate_action.triggered.connect(self._generate)
        self.addAction(self.generate_action)

        self.prompt_edit = _PromptEdit("Prompt — what the picture shows. (word:1.2) weights a word.", 5)
        self.negative_edit = _PromptEdit("Negative prompt — what it should not show", 2)
        self.negative_edit.setMaximumHeight(self.negative_edit.fontMetrics().lineSpacing() * 5 + 12)
        self.previous_button = QToolButton(text="◀", toolTip="Previous prompt from the history (Alt+Up)")
        self.next_button = QToolButton(text="▶", toolTip="Next prompt from the history (Alt+Down)")

        self.mode_combo = _combo(MODE_LABELS)
        self.source_thumb = QLabel(alignment=Qt.AlignmentFlag.AlignCenter)
        self.source_thumb.setFixedSize(56, 56)
        self.source_thumb.setFrameShape(QFrame.Shape.StyledPanel)
        self.source_label = QLabel(wordWrap=True)
        self.source_button = QPushButton("Choose…", toolTip="Choose the source image (or drop one on this panel)")
        self.source_clear = QToolButton(text="✕", toolTip="Forget the source image")
        self.strength_spin = _double(0.01, 1.0, 0.05)
        self.strength_spin.setToolTip("How much of the source image is replaced: 1 keeps only its composition")

        self._make_canvas_widgets()

        self.preset_combo = QComboBox()
        for key, (w, h) in SIZE_PRESETS.items():
            self.preset_combo.addItem(f"{key}  ({w} × {h})", key)
        self.preset_combo.addItem("Custom", CUSTOM)
        self.width_spin = _spin(MIN_SIZE, MAX_SIZE, SIZE_STEP)
        self.height_spin = _spin(MIN_SIZE, MAX_SIZE, SIZE_STEP)
        for spin in (self.width_spin, self.height_spin):
            spin.setSuffix(" px")
        self.swap_button = QToolButton(text="⇅", toolTip="Swap width and height")
        self.size_note = QLabel(objectName="note", wordWrap=True)

        self.seed_policy_combo = _combo(SEED_LABELS)
        self.seed_edit = QLineEdit()
        self.seed_edit.setValidator(QRegularExpressionValidator(QRegularExpression(r"\d{1,20}"), self.seed_edit))
        self.seed_edit.setToolTip("Seed of the first image; image i of a batch uses seed + i")
        self.dice_button = QToolButton(toolTip="A new random seed")
        self.dice_button.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_BrowserReload))
        self.batch_spin = _spin(1, MAX_BATCH)
        self.batch_spin.setToolTip("Images made together in one run (uses more memory)")
        self.count_spin = _spin(1, MAX_COUNT)
        self.count_spin.setToolTip("Runs queued by one Generate press")

        self.steps_c_spin = _spin(1, MAX_STEPS)
        self.cfg_c_spin = _double(0.0, 30.0, 0.5)
        self.shift_spin = _double(0.01, 20.0, 0.25)
        self.steps_b_spin = _spin(1, MAX_STEPS)
        self.cfg_b_spin = _double(0.0, 30.0, 0.1)
        self.sampler_combo = _combo(SAMPLER_LABELS)
        self.variant_combo = _combo(VARIANT_LABELS)
        self.lora_list = LoraList()

        self.generate_button = QPushButton("Generate", objectName="generate")
        self.generate_button.setToolTip("Queue the images (Ctrl+Enter)")
        self.generate_button.clicked.connect(self.generate_action.trigger)

        self._layout()
        self.previous_button.clicked.connect(lambda: self._session and self._session.history_previous())
        self.next_button.clicked.connect(lambda: self._session and self._session.history_next())
        self.swap_button.clicked.connect(lambda: self._session and self._session.swap_size())
        self.dice_button.clicked.connect(lambda: self._session and self._session.new_random_seed())
        self.source_button.clicked.connect(self.choose_source_image)
        self.source_clear.clicked.connect(self._forget_source)
        self.session = session

    def _make_canvas_widgets(self) -> None:
        """The settings of the canvas modes: inpaint, outpaint, canny, upscale."""
        self.canvas_note = QLabel(wordWrap=True)
        self.canvas_note.setStyleSheet(f"color: {HINT_COLOUR};")
        self.input_combo = _combo(INPUT_LABELS)
        self.input_combo.setToolTip("Canny and upscale read the canvas image, or the chosen image file")
        self.control_strength_spin = _double(0.0, 2.0, 0.05)
        self.control_strength_spin.setToolTip("How strongly the ControlNet steers the picture (1 = as trained)")
        self.grow_spin = _spin(-MAX_GROW, MAX_GROW)
        self.grow_spin.setSuffix(" px")
        self.grow_spin.setToolTip("Grow (or, negative, shrink) the painted mask before use")
        self.feather_spin = _spin(0, MAX_MASK_PIXELS)
        self.feather_spin.setSuffix(" px")
        self.feather_spin.setToolTip("Width of the soft transition band outside the mask; beyond it every pixel "
                                     "stays exactly as it was")  # fmt: skip
        self.context_combo = _combo(CONTEXT_LABELS)
        self.context_combo.setToolTip("Generate the whole image, or only the masked area plus padding (more "
                                      "detail for small masks; the result is pasted back)")  # fmt: skip
        self.padding_spin = _spin(0, MAX_PADDING, 16)
        self.padding_spin.setSuffix(" px")
        self.padding_spin.setToolTip("Context around the masked area")
        self.method_combo = _combo(METHOD_LABELS)
        self.method_combo.setToolTip("Auto: the inpainting ControlNet where it fits the Stage C (the full 3.6B "
                                     "one), latent blending otherwise (the lite one)")  # fmt: skip
        self.side_spins = {}
        for side in SIDES:
            spin = _spin(0, 4096, 128)
            spin.setSuffix(" px")
            spin.setToolTip(f"Pixels added on the {side}")
            self.side_spins[side] = spin
        self.outpaint_note = QLabel("Each growing axis is rounded up to the 128 px grid.", wordWrap=True)
        self.outpaint_note.setStyleSheet(f"color: {HINT_COLOUR};")
        self.extend_button = QPushButton("Extend canvas now")
        self.extend_button.setToolTip("Add these margins to the canvas now (undoable); Generate then fills them")
        self.extend_button.clicked.connect(self.extend_requested)
        self.show_mask_check = QCheckBox("Show effective mask")
        self.show_mask_check.setToolTip("Overlay what the job will repaint (after grow) and the context box")
        self.show_mask_check.toggled.connect(self.effective_mask_toggled)
        self.show_edges_check = QCheckBox("Show edges")
        self.show_edges_check.setToolTip("Overlay the canny edges the ControlNet will follow")
        self.show_edges_check.toggled.connect(self.edges_toggled)

        self.canvas_box = QGroupBox("Canvas")
        form = QFormLayout(self.canvas_box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow(self.canvas_note)
        self.input_label = QLabel("Picture")
        form.addRow(self.input_label, self.input_combo)
        self.control_strength_label = QLabel("Control")
        form.addRow(self.control_strength_label, self.control_strength_spin)
        # The masked modes' finer settings fold away (closed at first), so that the panel's sampling settings
        # stay in view; closed, a line says what they are.
        self.mask_options_button = QToolButton(text="Mask options", checkable=True, autoRaise=True)
        self.mask_options_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.mask_options_button.setArrowType(Qt.ArrowType.RightArrow)
        self.mask_options_button.setToolTip("Grow mask, band, context and method")
        self.mask_options_button.toggled.connect(self._fold_mask_options)
        self.mask_summary = QLabel(wordWrap=True)
        self.mask_summary.setStyleSheet(f"color: {HINT_COLOUR};")
        self.mask_options = QWidget()
        options = QFormLayout(self.mask_options)
        options.setContentsMargins(0, 0, 0, 0)
        options.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.grow_label, self.feather_label = QLabel("Grow mask"), QLabel("Band")
        options.addRow(self.grow_label, self.grow_spin)
        options.addRow(self.feather_label, self.feather_spin)
        self.context_label, self.padding_label = QLabel("Context"), QLabel("Padding")
        options.addRow(self.context_label, self.context_combo)
        options.addRow(self.padding_label, self.padding_spin)
        self.method_label = QLabel("Method")
        options.addRow(self.method_label, self.method_combo)
        form.addRow(self.mask_options_button)
        form.addRow(self.mask_summary)
        form.addRow(self.mask_options)
        for spin in (self.grow_spin, self.feather_spin, self.padding_spin):
            spin.valueChanged.connect(self._summarise_mask_options)
        for combo in (self.context_combo, self.method_combo):
            combo.currentIndexChanged.connect(self._summarise_mask_options)
        sides = QGridLayout()
        for i, side in enumerate(SIDES):
            sides.addWidget(QLabel(side.capitalize()), i // 2, (i % 2) * 2)
            sides.addWidget(self.side_spins[side], i // 2, (i % 2) * 2 + 1)
        self.outpaint_box = QWidget()
        box = QVBoxLayout(self.outpaint_box)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(sides)
        box.addWidget(self.outpaint_note)
        box.addWidget(self.extend_button)
        form.addRow(self.outpaint_box)
        form.addRow(self.show_mask_check)
        form.addRow(self.show_edges_check)

    def _layout(self) -> None:
        history = QHBoxLayout()
        history.addStretch()
        history.addWidget(self.previous_button)
        history.addWidget(self.next_button)

        source_text = QVBoxLayout()
        source_text.addWidget(self.source_label)
        row = QHBoxLayout()
        row.addWidget(self.source_button)
        row.addWidget(self.source_clear)
        row.addStretch()
        source_text.addLayout(row)
        source = QHBoxLayout()
        source.addWidget(self.source_thumb)
        source.addLayout(source_text, 1)
        self.source_box = QWidget()
        self.source_box.setLayout(source)
        source.setContentsMargins(0, 0, 0, 0)

        size = QHBoxLayout()
        size.addWidget(self.width_spin, 1)
        size.addWidget(QLabel("×"))
        size.addWidget(self.height_spin, 1)
        size.addWidget(self.swap_button)

        seed = QHBoxLayout()
        seed.addWidget(self.seed_policy_combo)
        seed.addWidget(self.seed_edit, 1)
        seed.addWidget(self.dice_button)

        runs = QHBoxLayout()
        runs.addWidget(QLabel("Batch"))
        runs.addWidget(self.batch_spin, 1)
        runs.addWidget(QLabel("Count"))
        runs.addWidget(self.count_spin, 1)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Mode", self.mode_combo)
        form.addRow(self.source_box)
        self.strength_label = QLabel("Strength")
        form.addRow(self.strength_label, self.strength_spin)
        form.addRow(self.canvas_box)
        self.size_label = QLabel("Size")
        form.addRow(self.size_label, self.preset_combo)
        form.addRow("", size)
        form.addRow(self.size_note)
        form.addRow("Seed", seed)
        form.addRow("Images", runs)
        form.addRow("Model", self.variant_combo)
        self.lora_label = QLabel("LoRA")
        self.lora_label.setToolTip("Stage C LoRAs (style or subject add-ons) and their weights")
        self.lora_label.setBuddy(self.lora_list.add_button)
        form.addRow(self.lora_label, self.lora_list)

        stages = QGroupBox("Sampling")
        grid = QGridLayout(stages)
        grid.addWidget(QLabel("Steps"), 0, 1)
        grid.addWidget(QLabel("Guidance"), 0, 2)
        grid.addWidget(QLabel("Stage C"), 1, 0)
        grid.addWidget(self.steps_c_spin, 1, 1)
        grid.addWidget(self.cfg_c_spin, 1, 2)
        grid.addWidget(QLabel("Stage B"), 2, 0)
        grid.addWidget(self.steps_b_spin, 2, 1)
        grid.addWidget(self.cfg_b_spin, 2, 2)
        grid.addWidget(QLabel("Shift"), 3, 0)
        grid.addWidget(self.shift_spin, 3, 1)
        grid.addWidget(self.sampler_combo, 3, 2)

        content = QWidget()
        column = QVBoxLayout(content)
        column.addWidget(QLabel("Prompt"))
        column.addWidget(self.prompt_edit, 1)
        column.addWidget(QLabel("Negative prompt"))
        column.addWidget(self.negative_edit)
        column.addLayout(history)
        column.addLayout(form)
        column.addWidget(stages)

        scroll = QScrollArea()
        scroll.setWidget(content)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.addWidget(scroll, 1)
        outer.addWidget(self.generate_button)

    # -- the model -------------------------------------------------------------------------------------

    @property
    def session(self) -> SessionModel | None:
        return self._session

    @session.setter
    def session(self, session: SessionModel) -> None:
        unbind(self._connections)
        self._session = session
        m, c = session, self._connections
        c += bind_text(m, "prompt", self.prompt_edit)
        c += bind_text(m, "negative", self.negative_edit)
        c += bind_combo(m, "mode", self.mode_combo)
        c += bind_spin(m, "strength", self.strength_spin)
        c += bind_combo(m, "size_preset", self.preset_combo)
        c += bind_spin(m, "width", self.width_spin)
        c += bind_spin(m, "height", self.height_spin)
        c += bind_combo(m, "seed_policy", self.seed_policy_combo)
        c += bind(m, "seed", self.seed_edit.editingFinished, lambda v: self.seed_edit.setText(str(v)), self._seed)
        c += bind_spin(m, "batch_size", self.batch_spin)
        c += bind_spin(m, "count", self.count_spin)
        c += bind_spin(m, "steps_c", self.steps_c_spin)
        c += bind_spin(m, "cfg_c", self.cfg_c_spin)
        c += bind_spin(m, "shift", self.shift_spin)
        c += bind_spin(m, "steps_b", self.steps_b_spin)
        c += bind_spin(m, "cfg_b", self.cfg_b_spin)
        c += bind_combo(m, "sampler", self.sampler_combo)
        c += bind_combo(m, "variant", self.variant_combo)
        c += bind_combo(m, "input", self.input_combo)
        c += bind_spin(m, "control_strength", self.control_strength_spin)
        c += bind_spin(m, "mask_grow", self.grow_spin)
        c += bind_spin(m, "mask_feather", self.feather_spin)
        c += bind_combo(m, "context", self.context_combo)
        c += bind_spin(m, "context_padding", self.padding_spin)
        c += bind_combo(m, "method", self.method_combo)
        self.lora_list.session = m  # rows are made and removed with the list: bound in ui/lora_list.py
        for i, side in enumerate(SIDES):
            c.append(self.side_spins[side].valueChanged.connect(lambda value, i=i: self._set_side(i, value)))
        c.append(m.outpaint_changed.connect(self._show_outpaint))
        c.append(m.context_changed.connect(lambda _: self._show_mode(m.mode)))
        c.append(m.input_changed.connect(lambda _: self._show_mode(m.mode)))
        c.append(m.control_image_changed.connect(lambda _: self._show_source(m.chosen_image)))
        self._show_outpaint(m.outpaint)
        # one-way: what the model says about itself
        c.append(m.size_note_changed.connect(self._show_size_note))
        c.append(m.mode_changed.connect(self._show_mode))
        c.append(m.source_image_changed.connect(lambda _: self._show_source(m.chosen_image)))
        c.append(m.history_changed.connect(self._show_history))
        self._show_size_note(m.size_note)
        self._show_mode(m.mode)
        self._show_source(m.chosen_image)
        self._show_history()

    def set_models_dir(self, models_dir: str | Path | None) -> None:
        """The models folder whose lora/ folder the LoRA menu lists (and where listed LoRAs are looked up)."""
        self.lora_list.set_models_dir(models_dir)

    def _seed(self) -> int | None:
        text = self.seed_edit.text()
        return min(MAX_SEED, int(text)) if text else None

    def _show_size_note(self, note: str) -> None:
        self.size_note.setText(note)
        self.size_note.setVisible(bool(note))

    def _set_side(self, index: int, value: int) -> None:
        session = self._session
        if session is None or session.outpaint is None:
            return
        sides = list(session.outpaint)
        sides[index] = value
        session.outpaint = tuple(sides)

    def _show_outpaint(self, sides) -> None:
        for side, value in zip(SIDES, sides or (0, 0, 0, 0), strict=True):
            spin = self.side_spins[side]
            if spin.value() != value:
                spin.blockSignals(True)
                spin.setValue(value)
                spin.blockSignals(False)

    def _show_mode(self, mode: str) -> None:
        session = self._session
        from_file = session is not None and session.input == "file"
        masked = mode in MASK_MODES
        self.source_box.setVisible(mode in ("variation", "img2img") or (mode in ("canny", "upscale") and from_file))
        self.strength_label.setVisible(mode in STRENGTH_MODES)
        self.strength_spin.setVisible(mode in STRENGTH_MODES)
        self.canvas_box.setVisible(mode in CONTROL_MODES)
        self.canvas_box.setTitle(MODE_LABELS.get(mode, "Canvas").split(" (")[0])
        notes = {
            "inpaint": "Paint the area to repaint on the canvas. Results arrive there as candidates.",
            "outpaint": "Set the margins (or extend the canvas first); the new area is generated. Results "
                        "arrive on the canvas as candidates.",
            "canny": "The picture's edges guide a new image.",
            "upscale": "Twice the width and height of the picture.",
        }  # fmt: skip
        self.canvas_note.setText(notes.get(mode, ""))
        for widget in (self.input_label, self.input_combo):
            widget.setVisible(mode in ("canny", "upscale"))
        opened = self.mask_options_button.isChecked()
        self.mask_options_button.setVisible(masked)
        self.mask_options.setVisible(masked and opened)
        self.mask_summary.setVisible(masked and not opened)
        self.show_mask_check.setVisible(masked)
        show_padding = session is not None and session.context == "mask"
        self.padding_label.setVisible(show_padding)
        self.padding_spin.setVisible(show_padding)
        self._summarise_mask_options()
        self.outpaint_box.setVisible(mode == "outpaint")
        self.show_edges_check.setVisible(mode == "canny")
        for widget in (self.size_label, self.preset_combo, self.width_spin, self.height_spin, self.swap_button):
            widget.setVisible(mode != "upscale")
        self.size_label.setText("Pixels" if masked else "Size")
        self.size_label.setToolTip("The generation's pixel count: the engine keeps the canvas's aspect" if masked
                                   else "")  # fmt: skip
        if mode not in MASK_MODES and self.show_mask_check.isChecked():
            self.show_mask_check.setChecked(False)
        if mode != "canny" and self.show_edges_check.isChecked():
            self.show_edges_check.setChecked(False)

    def _fold_mask_options(self, opened: bool) -> None:
        self.mask_options_button.setArrowType(Qt.ArrowType.DownArrow if opened else Qt.ArrowType.RightArrow)
        if self._session is not None:
            self._show_mode(self._session.mode)

    def _summarise_mask_options(self) -> None:
        context = self.context_combo.currentData()
        parts = [
            f"grow {self.grow_spin.value()} px",
            f"band {self.feather_spin.value()} px",
            f"masked area + {self.padding_spin.value()} px" if context == "mask" else "whole image",
            f"method: {self.method_combo.currentText()}",
        ]
        self.mask_summary.setText(" · ".join(parts))

    def _show_source(self, path: str) -> None:
        if not path:
            self.source_thumb.clear()
            self.source_thumb.setText("none")
            self.source_label.setText("Drop an image here, choose one, or use one from the gallery.")
            self.source_clear.setEnabled(False)
            return
        self.source_label.setText(Path(path).name)
        self.source_label.setToolTip(path)
        self.source_clear.setEnabled(True)
        reader = QImageReader(path)  # a small scaled decode: JPEG and PNG readers scale while reading
        size = reader.size()
        if size.isValid():
            reader.setScaledSize(size.scaled(self.source_thumb.size(), Qt.AspectRatioMode.KeepAspectRatio))
        image = reader.read()
        if image.isNull():
            self.source_thumb.setText("?")
            self.source_label.setText(f"{Path(path).name} (cannot be read)")
        else:
            self.source_thumb.setPixmap(QPixmap.fromImage(image))

    def _forget_source(self) -> None:
        if self._session is not None:
            setattr(self._session, "control_image" if self._session.mode == "canny" else "source_image", "")

    def _show_history(self) -> None:
        self.previous_button.setEnabled(self._session.can_go_previous)
        self.next_button.setEnabled(self._session.can_go_next)

    def _generate(self) -> None:
        self.commit_edits()
        self.generate_requested.emit()

    def commit_edits(self) -> None:
        """Hand the model what is still being typed: Ctrl+Enter reaches the action before the field sees a
        Return or loses focus (the spin boxes and the seed commit only then)."""
        for spin in self.findChildren(QAbstractSpinBox):
            spin.interpretText()
        if self.seed_edit.isModified():
            self.seed_edit.setModified(False)
            self.seed_edit.editingFinished.emit()

    # -- source image ----------------------------------------------------------------------------------

    def set_source_image(self, path: str) -> None:
        """Use `path` as the source of image variation / image-to-image (from a drop, a dialog or the gallery)."""
        self._session.use_source_image(str(path))

    def choose_source_image(self) -> None:
        chosen = self._session.chosen_image
        start = str(Path(chosen).parent) if chosen else ""
        path, _ = QFileDialog.getOpenFileName(self, "Source image", start, IMAGE_FILTER)
        if path:
            self.set_source_image(path)

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt override
        if image_paths_from_mime(event.mimeData()) or lora_paths_from_mime(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt override
        """An image becomes the source image; LoRA files (.safetensors) join the LoRA list."""
        loras = lora_paths_from_mime(event.mimeData())
        for path in loras:
            self.lora_list.add_file(path)
        paths = image_paths_from_mime(event.mimeData())
        if paths:
            self.set_source_image(paths[0])
        if paths or loras:
            event.acceptProposedAction()
