"""The gallery panel: a thumbnail grid built for culling, a metadata panel, and the actions on images.

Keys on the grid: P pick, X reject, U unflag, 1–5 stars (0 clears), arrows move, Delete moves to the trash
(Ctrl+Z or the notification's Undo brings it back with its rating), Enter sends to the canvas, C compares
the two selected. Every culling change is written to the folder's index at once.

Threading: GUI thread only. Thumbnails come from `workers.thumbnails.ThumbnailLoader`; the grid paints a
placeholder until they arrive. Call `shutdown()` before the application exits (the main window's
closeEvent); it is also called when the application is about to quit.
"""

from __future__ import annotations

import html
import math
import os
from datetime import datetime
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QModelIndex, QPoint, QPointF, QRect, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QColor, QKeySequence, QPainter, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QMenu,
    QSlider,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.gallery import Entry, GalleryFilter, entry_request, export_files
from ..state.gallery import GalleryModel
from ..workers.thumbnails import ThumbnailKey, ThumbnailLoader
from .compare import CompareDialog

MIN_THUMB, MAX_THUMB, DEFAULT_THUMB = 64, 256, 144
PAD = 6
STAR_ROW = 16
PICK_COLOR = QColor("#4caf50")
REJECT_COLOR = QColor("#e05050")
STAR_COLOR = QColor("#f0c040")

# (key, what it does) — for the help dialog
SHORTCUTS = [
    ("P", "Pick the selected images"),
    ("X", "Reject the selected images"),
    ("U", "Unflag the selected images"),
    ("1–5", "Rate the selected images (0 clears the rating)"),
    ("Arrows", "Move through the gallery"),
    ("Enter", "Send the current image to the canvas"),
    ("C", "Compare the two selected images"),
    ("Delete", "Move the selected images to the trash"),
    ("Ctrl+Z", "Undo the last move to the trash"),
]

_FLAG_KEYS = {Qt.Key.Key_P: "pick", Qt.Key.Key_X: "reject", Qt.Key.Key_U: None}
_STAR_KEYS = {getattr(Qt.Key, f"Key_{n}"): n for n in range(6)}


def thumbnail_key(entry: Entry) -> ThumbnailKey:
    return ThumbnailKey(os.fspath(entry.path), entry.mtime_ns, entry.size)


def _star(center: QPointF, radius: float) -> QPolygonF:
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        points.append(QPointF(center.x() + r * math.cos(angle), center.y() + r * math.sin(angle)))
    return QPolygonF(points)


class ThumbnailDelegate(QStyledItemDelegate):
    """Paints one cell: the thumbnail (or a placeholder), the stars under it, and a pick/reject badge."""

    def __init__(self, loader: ThumbnailLoader, parent=None):
        super().__init__(parent)
        self.loader = loader
        self.side = DEFAULT_THUMB

    def cell_size(self) -> QSize:
        return QSize(self.side + 2 * PAD, self.side + 2 * PAD + STAR_ROW)

    def sizeHint(self, option, index) -> QSize:
        return self.cell_size()

    def paint(self, painter: QPainter, option, index: QModelIndex) -> None:
        entry: Entry | None = index.data(GalleryModel.EntryRole)
        if entry is None:
            return
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        cell = QRectF(option.rect).adjusted(1, 1, -1, -1)
        palette = option.palette
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        if selected:
            highlight = QColor(palette.highlight().color())
            highlight.setAlpha(110)
            painter.setPen(QPen(palette.highlight().color(), 2))
            painter.setBrush(highlight)
            painter.drawRoundedRect(cell, 5, 5)
        elif option.state & QStyle.StateFlag.State_MouseOver:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor(255, 255, 255, 18))
            painter.drawRoundedRect(cell, 5, 5)

        box = QRectF(option.rect.x() + PAD, option.rect.y() + PAD, self.side, self.side)
        image = self.loader.get(thumbnail_key(entry))
        if image is None or image.isNull():
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor(255, 255, 255, 14))
            painter.drawRoundedRect(box, 3, 3)
            if image is not None:  # decoding failed
                painter.setPen(palette.placeholderText().color())
                painter.drawText(box, Qt.AlignmentFlag.AlignCenter, "cannot\nread")
        else:
            scale = min(box.width() / image.width(), box.height() / image.height())
            w, h = image.width() * scale, image.height() * scale
            target = QRectF(box.x() + (box.width() - w) / 2, box.y() + (box.height() - h) / 2, w, h)
            painter.drawImage(target, image)
            if entry.flag == "reject":
                painter.fillRect(target, QColor(0, 0, 0, 140))
        self._paint_badge(painter, box, entry.flag)
        self._paint_stars(painter, option.rect, entry.rating, selected)
        painter.restore()

    def _paint_badge(self, painter: QPainter, box: QRectF, flag: str | None) -> None:
        if flag is None:
            return
        radius = 9.0
        center = QPointF(box.x() + radius + 3, box.y() + radius + 3)
        painter.setPen(QPen(QColor(0, 0, 0, 120), 1))
        painter.setBrush(PICK_COLOR if flag == "pick" else REJECT_COLOR)
        painter.drawEllipse(center, radius, radius)
        pen = QPen(QColor("white"), 2.2)
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        painter.setPen(pen)
        path = QPainterPath()
        if flag == "pick":
            path.moveTo(center + QPointF(-4.5, 0.5))
            path.lineTo(center + QPointF(-1.2, 3.8))
            path.lineTo(center + QPointF(4.5, -3.5))
        else:
            path.moveTo(center + QPointF(-3.6, -3.6))
            path.lineTo(center + QPointF(3.6, 3.6))
            path.moveTo(center + QPointF(3.6, -3.6))
            path.lineTo(center + QPointF(-3.6, 3.6))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawPath(path)

    def _paint_stars(self, painter: QPainter, rect: QRect, rating: int, selected: bool) -> None:
        if rating == 0 and not selected:
            return
        radius = 5.5
        step = 2 * radius + 3
        x0 = rect.x() + rect.width() / 2 - 2 * step
        y = rect.y() + PAD + self.side + STAR_ROW / 2 + 1
        for i in range(5):
            polygon = _star(QPointF(x0 + i * step, y), radius)
            if i < rating:
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(STAR_COLOR)
            else:
                painter.setPen(QPen(QColor(255, 255, 255, 70), 1))
                painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawPolygon(polygon)


class GalleryView(QListView):
    """The grid. Culling keys are handled here so they never fire while typing in the search box."""

    def __init__(self, panel: GalleryPanel):
        super().__init__(panel)
        self._panel = panel
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setMovement(QListView.Movement.Static)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(True)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(500)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setMouseTracking(True)
        self.setSpacing(2)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)

    def keyPressEvent(self, event) -> None:
        if not event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier and self._panel.handle_key(event.key()):
            event.accept()
            return
        super().keyPressEvent(event)


class GalleryPanel(QWidget):
    recall_requested = Signal(object, object)  # GenerationRequest, the image's "device · precision" or None
    send_to_canvas_requested = Signal(str)
    use_as_source_requested = Signal(str)
    current_changed = Signal(str)  # path, or "" when nothing is current
    thumbnail_size_changed = Signal(int)
    subfolders_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None, *, thumbnail_cache_dir: str | os.PathLike[str] | None = None):
        super().__init__(parent)
        self.model = GalleryModel(self)
        self.thumbnails = ThumbnailLoader(thumbnail_cache_dir, parent=self)
        self.delegate = ThumbnailDelegate(self.thumbnails, self)
        self._compare: CompareDialog | None = None
        self._shut_down = False

        self._build_filter_bar()
        self.view = GalleryView(self)
        self.view.setModel(self.model)
        self.view.setItemDelegate(self.delegate)
        self.metadata = QTextBrowser(self)
        self.metadata.setOpenLinks(False)
        self.metadata.setPlaceholderText("Select an image to see how it was made.")
        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.addWidget(self.view)
        splitter.addWidget(self.metadata)
        splitter.setStretchFactor(0, 4)
        splitter.setStretchFactor(1, 1)
        splitter.setChildrenCollapsible(False)
        self._build_actions()
        self._build_undo_bar()

        self.size_slider = QSlider(Qt.Orientation.Horizontal, self)
        self.size_slider.setRange(MIN_THUMB, MAX_THUMB)
        self.size_slider.setSingleStep(16)
        self.size_slider.setPageStep(32)
        self.size_slider.setToolTip("Thumbnail size")
        self.size_slider.setMaximumWidth(160)
        self.size_slider.valueChanged.connect(self.set_thumbnail_size)
        self.count_label = QLabel(self)
        self.status_label = QLabel(self)
        self.status_label.setObjectName("note")
        self.subfolders_check = QCheckBox("Subfolders", self)
        self.subfolders_check.setToolTip(
            "Also show the images in the folder's subfolders (as A1111 writes them, one folder per day), down to "
            "8 levels. Hidden folders are left out."
        )
        self.subfolders_check.toggled.connect(self._subfolders_toggled)
        bottom = QHBoxLayout()
        bottom.setContentsMargins(4, 0, 4, 0)
        bottom.addWidget(self.count_label)
        bottom.addWidget(self.status_label, 1)
        bottom.addWidget(self.subfolders_check)
        bottom.addWidget(QLabel("Size"))
        bottom.addWidget(self.size_slider)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(3)
        layout.addLayout(self._filter_layout)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.undo_bar)
        layout.addLayout(self._action_layout)
        layout.addLayout(bottom)

        self.model.counts_changed.connect(self._show_counts)
        self.model.loading_changed.connect(lambda _: self._show_counts(self.model.rowCount(), self.model.total()))
        self.model.load_failed.connect(self.status_label.setText)
        self.model.entry_changed.connect(self._entry_changed)
        self.model.trash_changed.connect(lambda n: self.undo_action.setEnabled(n > 0))
        self.model.modelReset.connect(self._schedule_retain)
        self.thumbnails.thumbnail_ready.connect(lambda t: self.model.thumbnail_changed(t.key.path))
        self.view.selectionModel().currentChanged.connect(self._current_changed)
        self.view.selectionModel().selectionChanged.connect(self._update_actions)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.doubleClicked.connect(lambda _: self.send_to_canvas())
        self._retain_timer = QTimer(self, singleShot=True, interval=60)
        self._retain_timer.timeout.connect(self.retain_visible)
        self.view.verticalScrollBar().valueChanged.connect(self._schedule_retain)
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

        self.size_slider.setValue(DEFAULT_THUMB)
        self.set_thumbnail_size(DEFAULT_THUMB)
        self._update_actions()
        self._show_counts(0, 0)

    # -- building ------------------------------------------------------------------------------------------

    def _build_filter_bar(self) -> None:
        self.flag_filter = QComboBox(self)
        for label, value in (("All", None), ("Picks", "pick"), ("Rejects", "reject"), ("Unflagged", "unflagged")):
            self.flag_filter.addItem(label, value)
        self.flag_filter.setToolTip("Show images by flag")
        self.stars_filter = QComboBox(self)
        self.stars_filter.addItem("Any rating", 0)
        for n in range(1, 6):
            self.stars_filter.addItem(f"{'★' * n} or more", n)
        self.stars_filter.setToolTip("Minimum rating")
        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Search prompt, model, seed…")
        self.search.setClearButtonEnabled(True)
        self.sort = QComboBox(self)
        for label, value in (("Newest first", "date"), ("Oldest first", "oldest"), ("Best rated", "rating")):
            self.sort.addItem(label, value)
        self.sort.setToolTip("Sort order")
        self._search_timer = QTimer(self, singleShot=True, interval=150)
        self._search_timer.timeout.connect(self._apply_filter)
        self.search.textChanged.connect(self._search_timer.start)
        self.flag_filter.currentIndexChanged.connect(self._apply_filter)
        self.stars_filter.currentIndexChanged.connect(self._apply_filter)
        self.sort.currentIndexChanged.connect(self._apply_filter)
        self._filter_layout = QHBoxLayout()
        self._filter_layout.setContentsMargins(2, 2, 2, 0)
        self._filter_layout.addWidget(self.search, 1)
        self._filter_layout.addWidget(self.flag_filter)
        self._filter_layout.addWidget(self.stars_filter)
        self._filter_layout.addWidget(self.sort)

    def _action(self, text: str, tip: str, slot, shortcut: str | None = None) -> QAction:
        action = QAction(text, self)
        action.setToolTip(f"{tip} ({shortcut})" if shortcut else tip)
        action.triggered.connect(slot)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.addAction(action)
        return action

    def _build_actions(self) -> None:
        self.recall_action = self._action("Recall", "Put this image's settings back into the prompt panel", self.recall)
        self.canvas_action = self._action("To canvas", "Show this image on the canvas", self.send_to_canvas)
        self.source_action = self._action(
            "Use as source", "Use this image for a variation or image-to-image", self.use_as_source
        )
        self.compare_action = self._action("Compare", "Compare the two selected images (C)", self.compare_selected)
        self.export_action = self._action("Export…", "Copy the selected images to a folder", self.export_selected)
        self.delete_action = self._action("Delete", "Move the selected images to the trash", self.delete_selected)
        self.delete_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        self.delete_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.undo_action = self._action("Undo delete", "Bring back what was last moved to the trash", self.undo_delete)
        self.undo_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Undo))
        self.undo_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.addAction(self.undo_action)
        self.undo_action.setEnabled(False)
        self.rescan_action = self._action("Rescan", "Look for files added or removed outside the app", self.rescan)
        self.view.addAction(self.delete_action)
        self._action_layout = QHBoxLayout()
        self._action_layout.setContentsMargins(2, 0, 2, 0)
        self._action_layout.setSpacing(2)
        for action in (
            self.recall_action,
            self.canvas_action,
            self.source_action,
            self.compare_action,
            self.export_action,
            self.delete_action,
        ):
            button = QToolButton(self)
            button.setDefaultAction(action)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            self._action_layout.addWidget(button)
        self._action_layout.addStretch(1)

    def _build_undo_bar(self) -> None:
        self.undo_bar = QFrame(self)
        self.undo_bar.setFrameShape(QFrame.Shape.StyledPanel)
        self.undo_label = QLabel(self.undo_bar)
        undo = QToolButton(self.undo_bar)
        undo.setDefaultAction(self.undo_action)
        undo.setText("Undo")
        self.undo_button = undo
        dismiss = QToolButton(self.undo_bar, text="✕", autoRaise=True)
        dismiss.setToolTip("Dismiss")
        dismiss.clicked.connect(self.undo_bar.hide)
        row = QHBoxLayout(self.undo_bar)
        row.setContentsMargins(6, 2, 2, 2)
        row.addWidget(self.undo_label, 1)
        row.addWidget(undo)
        row.addWidget(dismiss)
        self.undo_bar.hide()
        self._undo_bar_timer = QTimer(self, singleShot=True, interval=12_000)
        self._undo_bar_timer.timeout.connect(self.undo_bar.hide)

    # -- folder --------------------------------------------------------------------------------------------

    def set_folder(self, path: str | os.PathLike[str] | None) -> None:
        self.thumbnails.retain(())
        self.undo_bar.hide()
        self.model.set_folder(path)
        self.metadata.clear()
        self.current_changed.emit("")

    def folder(self) -> Path | None:
        return self.model.folder

    def set_subfolders(self, on: bool) -> None:
        """Show the subfolders' images too, or not (the "Subfolders" box; `subfolders_changed` when it changes)."""
        self.subfolders_check.setChecked(on)  # comes back through _subfolders_toggled when it changes

    def _subfolders_toggled(self, on: bool) -> None:
        self.model.set_subfolders(on)
        self.subfolders_changed.emit(on)

    def add_path(self, path: str | os.PathLike[str]) -> None:
        """A new image the GPU worker just wrote and indexed."""
        entry = self.model.add_path(path)
        if entry is not None and not self.view.currentIndex().isValid():
            self.select_paths([entry.path])

    def rescan(self) -> None:
        self.model.rescan()

    def shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        self.thumbnails.shutdown()
        self.model.shutdown()

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    # -- thumbnails ----------------------------------------------------------------------------------------

    def thumbnail_size(self) -> int:
        return self.delegate.side

    def set_thumbnail_size(self, side: int) -> None:
        side = max(MIN_THUMB, min(MAX_THUMB, int(side)))
        if self.size_slider.value() != side:
            self.size_slider.setValue(side)  # comes back here
            return
        changed = side != self.delegate.side
        self.delegate.side = side
        self.view.setGridSize(self.delegate.cell_size() + QSize(4, 4))
        self.view.setIconSize(QSize(side, side))
        self.view.doItemsLayout()
        self._schedule_retain()
        if changed:
            self.thumbnail_size_changed.emit(side)

    def _schedule_retain(self, *_: object) -> None:
        self._retain_timer.start()

    def visible_entries(self) -> list[Entry]:
        """Entries whose cells intersect the viewport now."""
        grid = self.view.gridSize()
        step_x, step_y = max(8, grid.width() // 2), max(8, grid.height() // 2)
        viewport = self.view.viewport().rect()
        rows: set[int] = set()
        for y in range(0, viewport.height() + step_y, step_y):
            for x in range(0, viewport.width() + step_x, step_x):
                index = self.view.indexAt(QPoint(min(x, viewport.width() - 1), min(y, viewport.height() - 1)))
                if index.isValid():
                    rows.add(index.row())
        return [self.model.entry(r) for r in sorted(rows)]

    def retain_visible(self) -> int:
        """Drop thumbnail work for items no longer on screen; returns how many requests were dropped."""
        return self.thumbnails.retain(thumbnail_key(e) for e in self.visible_entries())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._schedule_retain()

    # -- selection -----------------------------------------------------------------------------------------

    def current_entry(self) -> Entry | None:
        index = self.view.currentIndex()
        return self.model.entry(index.row()) if index.isValid() else None

    def current_path(self) -> str:
        entry = self.current_entry()
        return os.fspath(entry.path) if entry else ""

    def selected_entries(self) -> list[Entry]:
        rows = sorted(index.row() for index in self.view.selectionModel().selectedIndexes())
        entries = [self.model.entry(r) for r in rows]
        if not entries and self.current_entry() is not None:
            entries = [self.current_entry()]
        return [e for e in entries if e is not None]

    def selected_paths(self) -> list[str]:
        return [os.fspath(e.path) for e in self.selected_entries()]

    def select_paths(self, paths) -> None:
        selection = self.view.selectionModel()
        selection.clearSelection()
        first = True
        for path in paths:
            index = self.model.index_of(path)
            if not index.isValid():
                continue
            flags = selection.SelectionFlag.Select
            if first:
                selection.setCurrentIndex(index, flags)
                self.view.scrollTo(index)
                first = False
            else:
                selection.select(index, flags)

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        entry = self.model.entry(current.row()) if current.isValid() else None
        self._show_metadata(entry)
        self._update_actions()
        self.current_changed.emit(os.fspath(entry.path) if entry else "")

    def _entry_changed(self, path: str) -> None:
        if path == self.current_path():
            self._show_metadata(self.current_entry())

    def _update_actions(self, *_: object) -> None:
        current = self.current_entry()
        selected = self.view.selectionModel().selectedIndexes()
        self.recall_action.setEnabled(current is not None and entry_request(current) is not None)
        self.canvas_action.setEnabled(current is not None)
        self.source_action.setEnabled(current is not None)
        self.compare_action.setEnabled(len(selected) == 2)
        self.export_action.setEnabled(bool(selected) or current is not None)
        self.delete_action.setEnabled(bool(selected) or current is not None)

    def _show_counts(self, shown: int, total: int) -> None:
        text = f"{shown} of {total}" if shown != total else f"{total} image{'s' * (total != 1)}"
        if self.model.loading:
            text += " · scanning…"
        self.count_label.setText(text)

    def _show_metadata(self, entry: Entry | None) -> None:
        if entry is None:
            self.metadata.clear()
            return

        def row(label: str, value: str) -> str:
            return f"<tr><td style='color:#9a9aa0;padding-right:8px'>{label}</td><td>{value}</td></tr>"

        def text(value: object) -> str:
            return html.escape(str(value)).replace("\n", "<br>")

        flag = {"pick": "picked", "reject": "rejected"}.get(entry.flag or "", "")
        stars = "★" * entry.rating + "☆" * (5 - entry.rating)
        rows = [
            row("Prompt", text(entry.prompt) or "<i>none</i>"),
            row("Negative", text(entry.negative_prompt) or "<i>none</i>"),
            row("Seed", text(entry.seed) if entry.seed is not None else "—"),
            row("Size", f"{entry.width} × {entry.height}"),
            row("Model", text(entry.model or "—")),
            *([row("Made with", text(entry.made_with))] if entry.made_with else []),
            row("Source", text(entry.source)),
            row("Rating", f"{stars} {flag}"),
            row("Created", datetime.fromtimestamp(entry.created).strftime("%Y-%m-%d %H:%M:%S")),
            row("Path", text(entry.path)),
        ]
        self.metadata.setHtml(f"<table cellspacing='2'>{''.join(rows)}</table>")

    # -- culling -------------------------------------------------------------------------------------------

    def handle_key(self, key: int) -> bool:
        """Culling and action keys of the grid. Returns whether the key was used."""
        paths = self.selected_paths()
        if key in _FLAG_KEYS:
            self.model.set_flag(paths, _FLAG_KEYS[key])
        elif key in _STAR_KEYS:
            self.model.set_rating(paths, _STAR_KEYS[key])
        elif key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.send_to_canvas()
        elif key == Qt.Key.Key_C:
            self.compare_selected()
        else:
            return False
        return True

    def set_flag(self, flag: str | None) -> None:
        self.model.set_flag(self.selected_paths(), flag)

    def set_rating(self, stars: int) -> None:
        self.model.set_rating(self.selected_paths(), stars)

    # -- actions -------------------------------------------------------------------------------------------

    def recall(self) -> None:
        entry = self.current_entry()
        request = entry_request(entry) if entry else None
        if request is not None:
            self.recall_requested.emit(request, entry.made_with)

    def send_to_canvas(self) -> None:
        if self.current_path():
            self.send_to_canvas_requested.emit(self.current_path())

    def use_as_source(self) -> None:
        if self.current_path():
            self.use_as_source_requested.emit(self.current_path())

    def compare_selected(self) -> CompareDialog | None:
        entries = self.selected_entries()
        if len(entries) != 2:
            self.status_label.setText("Select exactly two images to compare.")
            return None
        if self._compare is not None:
            self._compare.close()
        self._compare = CompareDialog(entries[0].path, entries[1].path, self)
        self._compare.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self._compare.destroyed.connect(self._forget_compare)
        self._compare.show()
        return self._compare

    @property
    def compare_dialog(self) -> CompareDialog | None:
        """The open compare dialog, if any."""
        return self._compare

    def _forget_compare(self) -> None:
        self._compare = None

    def export_selected_to(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Copy the selected images (metadata included) into `folder`; existing files are never replaced."""
        paths = self.selected_paths()
        try:
            written = export_files(paths, folder)
        except OSError as exc:
            self.status_label.setText(f"Export failed: {exc}")
            return []
        self.status_label.setText(f"Exported {len(written)} image{'s' * (len(written) != 1)} to {folder}")
        return written

    def export_selected(self) -> None:
        if not self.selected_paths():
            return
        folder = QFileDialog.getExistingDirectory(self, "Export selected images to")
        if folder:
            self.export_selected_to(folder)

    def delete_selected(self) -> None:
        paths = self.selected_paths()
        if not paths:
            return
        next_row = min(self.model.row_of(p) for p in paths)
        failed = self.model.move_to_trash(paths)
        moved = len(paths) - len(failed)
        if failed:
            self.status_label.setText(f"Could not move {len(failed)} file(s) to the trash: {failed[0]}")
        if moved:
            self.undo_label.setText(f"Moved {moved} image{'s' * (moved != 1)} to the trash.")
            self.undo_bar.show()
            self._undo_bar_timer.start()
            row = min(next_row, self.model.rowCount() - 1)
            if row >= 0:
                self.view.setCurrentIndex(self.model.index(row, 0))

    def undo_delete(self) -> list[Path]:
        restored = self.model.undo_trash()
        self.undo_bar.hide()
        if restored:
            self.select_paths(restored)
            self.status_label.setText(f"Restored {len(restored)} image{'s' * (len(restored) != 1)}.")
        return restored

    def _apply_filter(self) -> None:
        current = self.current_path()
        self.model.set_filter(
            GalleryFilter(
                text=self.search.text(),
                flag=self.flag_filter.currentData(),
                min_rating=self.stars_filter.currentData() or 0,
                sort=self.sort.currentData() or "date",
            )
        )
        if current and self.model.row_of(current) >= 0:
            self.select_paths([current])

    def _context_menu(self, pos: QPoint) -> None:
        index = self.view.indexAt(pos)
        if index.isValid() and not self.view.selectionModel().isSelected(index):
            self.view.setCurrentIndex(index)
        menu = QMenu(self)
        for action in (self.recall_action, self.canvas_action, self.source_action):
            menu.addAction(action)
        menu.addSeparator()
        for label, flag in (("Pick\tP", "pick"), ("Reject\tX", "reject"), ("Unflag\tU", None)):
            menu.addAction(label, lambda f=flag: self.set_flag(f))
        rating = menu.addMenu("Rating")
        for n in range(6):
            rating.addAction(f"{'★' * n or 'No stars'}\t{n}", lambda n=n: self.set_rating(n))
        menu.addSeparator()
        for action in (self.compare_action, self.export_action, self.delete_action, self.rescan_action):
            menu.addAction(action)
        menu.exec(self.view.viewport().mapToGlobal(pos))
