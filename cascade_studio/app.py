"""Starting the window: `cascade-studio` with no arguments (or `cascade-studio window [--demo]`) calls `run`.

Nothing here imports torch: the window shows first, then the GPU service starts and loads torch on its own
thread.
"""

from __future__ import annotations

import sys

ORGANIZATION = "Cascade Studio"
APPLICATION = "Cascade Studio"


def create_application(argv: list[str] | None = None):
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from .ui import theme

    app = QApplication.instance()
    if app is None:
        # Qt 6 scales for HiDPI by itself; pass fractional factors (150 %) through instead of rounding them.
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        app = QApplication(list(argv) if argv is not None else sys.argv[:1])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName(APPLICATION)
    app.setDesktopFileName("cascade-studio")
    theme.apply(app)
    return app


def run(argv: list[str] | None = None, *, demo: bool = False) -> int:
    """Open the studio window and run until it closes; returns the exit status."""
    from .core.paths import default_models_dir
    from .state.settings import Settings
    from .ui.main_window import MainWindow

    app = create_application(argv)
    settings = Settings(models_dir_default=default_models_dir())
    window = MainWindow(settings, demo=demo)
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(run(demo="--demo" in sys.argv[1:]))
