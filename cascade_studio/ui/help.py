"""The keyboard-shortcut list, read from the window's real `QAction`s so it can never go stale.

Keys a panel handles itself (the gallery's culling keys, when it reads them in `keyPressEvent` instead of
through actions) are listed from `EXTRA_KEYS`, unless an action already claims the same key.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QMenu,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

#: (group, what, keys) handled outside actions: the gallery's culling keys (issue 4, features.md)
EXTRA_KEYS: list[tuple[str, str, str]] = [
    ("Gallery", "Pick", "P"),
    ("Gallery", "Reject", "X"),
    ("Gallery", "Unflag", "U"),
    ("Gallery", "Rate 1 to 5 stars", "1, 2, 3, 4, 5"),
    ("Gallery", "Clear the rating", "0"),
    ("Gallery", "Show on the canvas", "Return"),
    ("Gallery", "Compare the two selected images", "C"),
    ("Gallery", "Previous / next image", "Left, Right, Up, Down"),
    ("Canvas", "Frame tool: apply / cancel the drag", "Return, Escape"),
    ("Image view", "Zoom to the cursor", "Mouse wheel"),
    ("Image view", "Pan", "Drag"),
]


def _label(action: QAction) -> str:
    return action.text().replace("&&", "\0").replace("&", "").replace("\0", "&").removesuffix("…").strip()


def _group_of(action: QAction, window: QWidget) -> str:
    for widget in action.associatedObjects():
        if isinstance(widget, QMenu) and widget.title():
            return _label(widget.menuAction())
    parent = action.parent()
    while parent is not None and parent is not window:
        title = parent.windowTitle() if isinstance(parent, QWidget) else ""
        if title:
            return title
        parent = parent.parent()
    return "Window"


def shortcut_rows(window: QWidget, extra: list[tuple[str, str, str]] | None = None) -> list[tuple[str, str, str]]:
    """(group, action, keys) for every action under `window` that has a shortcut, then the extra keys."""
    rows: list[tuple[str, str, str]] = []
    claimed: set[str] = set()
    seen: set[int] = set()
    for action in window.findChildren(QAction):
        shortcuts = [s for s in action.shortcuts() if not s.isEmpty()]
        if not shortcuts or id(action) in seen or action.isSeparator():
            continue
        seen.add(id(action))
        keys = [s.toString(QKeySequence.SequenceFormat.NativeText) for s in shortcuts]
        claimed.update(s.toString(QKeySequence.SequenceFormat.PortableText) for s in shortcuts)
        rows.append((_group_of(action, window), _label(action), ", ".join(keys)))
    for group, what, keys in EXTRA_KEYS if extra is None else extra:
        if not set(k.strip() for k in keys.split(",")) <= claimed:
            rows.append((group, what, keys))
    # menus in menu-bar order first, then the panels; within a group, the order the actions were made
    menus = [_label(a) for a in window.menuBar().actions()] if hasattr(window, "menuBar") else []
    groups = list(dict.fromkeys(menus + [row[0] for row in rows]))
    return sorted(rows, key=lambda row: groups.index(row[0]))


class ShortcutsDialog(QDialog):
    def __init__(self, window: QWidget, parent: QWidget | None = None):
        super().__init__(parent or window)
        self.setWindowTitle("Keyboard shortcuts")
        self.resize(520, 560)
        rows = shortcut_rows(window)
        self.table = QTableWidget(len(rows), 3, self)
        self.table.setHorizontalHeaderLabels(["Where", "Action", "Keys"])
        for row, values in enumerate(rows):
            for column, text in enumerate(values):
                self.table.setItem(row, column, QTableWidgetItem(text))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.resizeColumnToContents(0)
        self.table.resizeColumnToContents(2)
        self.table.setSortingEnabled(False)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        note = QLabel("Every shortcut of the window's menus and panels:")
        note.setTextFormat(Qt.TextFormat.PlainText)
        layout.addWidget(note)
        layout.addWidget(self.table)
        layout.addWidget(buttons)

    def rows(self) -> list[tuple[str, str, str]]:
        return [
            tuple(self.table.item(r, c).text() for c in range(3))  # type: ignore[misc]
            for r in range(self.table.rowCount())
        ]
