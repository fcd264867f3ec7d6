"""The dark theme: Fusion, a dark palette, and a small style sheet for what the palette cannot say."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

ACCENT = "#4c8dd6"
WARNING = "#e0a040"

_COLORS = {
    QPalette.ColorRole.Window: "#2b2b2e",
    QPalette.ColorRole.WindowText: "#dcdcdc",
    QPalette.ColorRole.Base: "#1f1f22",
    QPalette.ColorRole.AlternateBase: "#28282b",
    QPalette.ColorRole.ToolTipBase: "#3a3a3e",
    QPalette.ColorRole.ToolTipText: "#e8e8e8",
    QPalette.ColorRole.PlaceholderText: "#808084",
    QPalette.ColorRole.Text: "#dcdcdc",
    QPalette.ColorRole.Button: "#353538",
    QPalette.ColorRole.ButtonText: "#dcdcdc",
    QPalette.ColorRole.BrightText: "#ff6060",
    QPalette.ColorRole.Light: "#4a4a4e",
    QPalette.ColorRole.Midlight: "#3e3e42",
    QPalette.ColorRole.Mid: "#2f2f32",
    QPalette.ColorRole.Dark: "#1a1a1c",
    QPalette.ColorRole.Shadow: "#101011",
    QPalette.ColorRole.Highlight: ACCENT,
    QPalette.ColorRole.HighlightedText: "#ffffff",
    QPalette.ColorRole.Link: "#7fb4ef",
}
_DISABLED = {
    QPalette.ColorRole.WindowText: "#7a7a7e",
    QPalette.ColorRole.Text: "#7a7a7e",
    QPalette.ColorRole.ButtonText: "#7a7a7e",
    QPalette.ColorRole.Highlight: "#4a4a4e",
}

STYLE_SHEET = f"""
QDockWidget::title {{ padding: 4px 6px; background: #323236; }}
QToolTip {{ border: 1px solid #55555a; padding: 3px; }}
QPushButton#generate {{ background: {ACCENT}; color: white; font-weight: bold; padding: 6px 14px;
                        border: 1px solid #3a73b5; border-radius: 3px; }}
QPushButton#generate:hover {{ background: #5a9ae0; }}
QPushButton#generate:pressed {{ background: #3f7bc0; }}
QLabel#note {{ color: {WARNING}; }}
QLabel#demo {{ color: {WARNING}; padding: 0 6px; }}
QStatusBar QLabel {{ padding: 0 6px; }}
"""


def dark_palette() -> QPalette:
    palette = QPalette()
    for role, color in _COLORS.items():
        palette.setColor(role, QColor(color))
    for role, color in _DISABLED.items():
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(color))
    return palette


def apply(app: QApplication) -> None:
    app.setStyle("Fusion")
    app.setPalette(dark_palette())
    app.setStyleSheet(STYLE_SHEET)
