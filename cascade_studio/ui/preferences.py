"""Preferences: the weights and output folders and the GPU worker's device, precision, memory, previews and
torch.compile."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..state.settings import DEVICES_HINT, DTYPES, MEMORY_MODES, Settings

DTYPE_LABELS = {"auto": "Automatic (bf16 where supported)", "bf16": "bfloat16", "fp32": "float32"}
MEMORY_LABELS = {
    "auto": "Automatic (one stage at a time below 12 GiB)",
    "resident": "Keep every network loaded (fastest)",
    "sequential": "One stage at a time (least memory)",
}


def _folder_row(edit: QLineEdit, title: str, parent: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addWidget(edit, 1)
    browse = QPushButton("Choose…")

    def choose() -> None:
        folder = QFileDialog.getExistingDirectory(parent, title, edit.text())
        if folder:
            edit.setText(folder)

    browse.clicked.connect(choose)
    row.addWidget(browse)
    return row


class PreferencesDialog(QDialog):
    """Edits a copy of the values; OK writes them to `settings` (each write emits its `<name>_changed`)."""

    def __init__(self, settings: Settings, parent: QWidget | None = None):
        super().__init__(parent)
        self.settings = settings
        self.setWindowTitle("Preferences")
        self.models_edit = QLineEdit(settings.models_dir)
        self.output_edit = QLineEdit(settings.output_dir)
        self.device_combo = QComboBox(editable=True)
        self.device_combo.addItems(list(DEVICES_HINT))
        self.device_combo.setCurrentText(settings.device)
        self.device_combo.setToolTip("auto, cpu, cuda, cuda:N or mps")
        self.dtype_combo = QComboBox()
        for value in DTYPES:
            self.dtype_combo.addItem(DTYPE_LABELS[value], value)
        self.dtype_combo.setCurrentIndex(self.dtype_combo.findData(settings.dtype))
        self.dtype_combo.setToolTip(
            "Automatic: bfloat16 on CUDA GPUs and on CPUs with native bf16 (AVX512-BF16 or AMX, where it halves the\n"
            "time), float32 elsewhere. fp16 is not offered: Stage C overflows in it."
        )
        self.memory_combo = QComboBox()
        for value in MEMORY_MODES:
            self.memory_combo.addItem(MEMORY_LABELS[value], value)
        self.memory_combo.setCurrentIndex(self.memory_combo.findData(settings.memory))
        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(0, 100)
        self.preview_spin.setSpecialValueText("never")
        self.preview_spin.setPrefix("every ")
        self.preview_spin.setSuffix(" step(s)")
        self.preview_spin.setValue(settings.preview_every)
        self.compile_check = QCheckBox("Compile the networks (torch.compile)")
        self.compile_check.setChecked(settings.compile)
        self.compile_check.setToolTip(
            "Runs Stage C and Stage B through torch.compile. The first image at each new size, batch or LoRA "
            "set waits for a compilation (tens of seconds on a CPU, a minute or more for the full models on a "
            "GPU); later ones run the fused kernels. Pays off for many images at one size.\n"
            "Needs a working C++ compiler (and Triton on a GPU)."
        )

        form = QFormLayout(self)
        form.addRow("Weights folder", _folder_row(self.models_edit, "Weights folder", self))
        form.addRow("Output folder", _folder_row(self.output_edit, "Output folder", self))
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.dtype_combo)
        form.addRow("Memory", self.memory_combo)
        form.addRow("Stage C previews", self.preview_spin)
        form.addRow("", self.compile_check)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def accept(self) -> None:
        s = self.settings
        if self.models_edit.text().strip():
            s.models_dir = self.models_edit.text().strip()
        if self.output_edit.text().strip():
            s.output_dir = self.output_edit.text().strip()
        s.device = self.device_combo.currentText().strip()
        s.dtype = self.dtype_combo.currentData()
        s.memory = self.memory_combo.currentData()
        s.preview_every = self.preview_spin.value()
        s.compile = self.compile_check.isChecked()
        super().accept()
