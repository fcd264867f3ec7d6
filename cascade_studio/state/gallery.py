"""The gallery's Qt model: the entries of one output folder, filtered and sorted, with culling and trash.

Opening a folder is fast however large it is: the GUI thread only opens the index (repairing it if needed);
a background thread reads the rows already indexed (one query) and then scans the folder for new, changed
and removed files, handing the model batches as they are committed. Rows appear while the scan runs.

Culling changes (stars, pick/reject) are written to the index at once and update the row in place: under a
"by rating" sort a row does not jump while it is being rated; the order is refreshed when the filter or sort
changes. A row that stops matching the filter (e.g. rejected while showing only picks) leaves the view.

Threading: a `GalleryModel` lives in the GUI thread and all its methods are called there; its loading
thread only reads files and the index, and reports through queued signals. Call `shutdown()` when done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QAbstractListModel, QFile, QModelIndex, QObject, QPersistentModelIndex, Qt, QThread, Signal

from ..core.gallery import Entry, GalleryFilter, GalleryIndex, ScanBatch

ModelIndex = QModelIndex | QPersistentModelIndex


@dataclass(frozen=True)
class TrashedItem:
    entry: Entry  # as it was, rating and flag included
    trashed_path: str  # where the OS trash put the file


class _LoadThread(QThread):
    """Reads the indexed rows, then scans the folder. Emits (generation, payload) tuples."""

    loaded = Signal(object)  # (generation, list[Entry])
    batch = Signal(object)  # (generation, ScanBatch)
    failed = Signal(object)  # (generation, message)

    def __init__(self, folder: Path, generation: int, *, scan_only: bool = False, subfolders: bool = False):
        super().__init__()
        self.setObjectName(f"gallery-load-{generation}")
        self._folder = folder
        self._generation = generation
        self._scan_only = scan_only
        self._subfolders = subfolders

    def run(self) -> None:
        try:
            index = GalleryIndex(self._folder)
        except Exception as exc:
            self.failed.emit((self._generation, f"Could not open the gallery index in {self._folder}: {exc}"))
            return
        try:
            if not self._scan_only:
                entries = index.entries()
                if not self._subfolders:  # rows a scan with subfolders left: this scan drops them
                    entries = [e for e in entries if "/" not in e.name]
                self.loaded.emit((self._generation, entries))
            for batch in index.iter_scan(should_stop=self.isInterruptionRequested, subfolders=self._subfolders):
                if self.isInterruptionRequested():
                    return
                if batch.updated or batch.removed:
                    self.batch.emit((self._generation, batch))
        except Exception as exc:
            self.failed.emit((self._generation, f"Scanning {self._folder} failed: {exc}"))
        finally:
            index.close()


class GalleryModel(QAbstractListModel):
    """Entries of one folder as a flat list, in filter/sort order. See the module docstring."""

    EntryRole = Qt.ItemDataRole.UserRole + 1
    PathRole = Qt.ItemDataRole.UserRole + 2

    loading_changed = Signal(bool)
    counts_changed = Signal(int, int)  # shown, total
    entry_changed = Signal(str)  # a path whose entry (rating, flag, metadata) changed
    load_failed = Signal(str)
    trash_changed = Signal(int)  # how many trash operations can be undone

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._index: GalleryIndex | None = None
        self._folder: Path | None = None
        self._all: dict[Path, Entry] = {}
        self._rows: list[Entry] = []
        self._keys: list[tuple] = []
        self._row_of: dict[Path, int] | None = None
        self._filter = GalleryFilter()
        self._generation = 0
        self._thread: _LoadThread | None = None
        self._threads: list[_LoadThread] = []
        self._trash: list[list[TrashedItem]] = []
        self._subfolders = False
        self._have_rows = False  # the current folder's indexed rows have been delivered

    # -- Qt model ------------------------------------------------------------------------------------------

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        entry = self._rows[index.row()]
        if role == self.EntryRole:
            return entry
        if role == self.PathRole:
            return os.fspath(entry.path)
        if role == Qt.ItemDataRole.DisplayRole:
            return entry.name  # "2024-05-01/00012-42.png" for an image in a subfolder
        if role == Qt.ItemDataRole.ToolTipRole:
            return entry.prompt or entry.name
        return None

    def flags(self, index: ModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemNeverHasChildren

    # -- folder --------------------------------------------------------------------------------------------

    @property
    def folder(self) -> Path | None:
        return self._folder

    @property
    def gallery_index(self) -> GalleryIndex | None:
        """The GUI thread's index of the current folder."""
        return self._index

    @property
    def loading(self) -> bool:
        return self._thread is not None

    def set_folder(self, folder: str | os.PathLike[str] | None) -> None:
        self._stop_loading()
        if self._index is not None:
            self._index.close()
            self._index = None
        self._trash.clear()
        self.trash_changed.emit(0)
        self.beginResetModel()
        self._all, self._rows, self._keys, self._row_of = {}, [], [], None
        self._folder = None
        self._have_rows = False
        self.endResetModel()
        if folder is not None:
            try:
                # Opening repairs a missing or corrupt index before the scanning thread opens it too.
                self._index = GalleryIndex(folder)
            except (OSError, ValueError, sqlite3.Error) as exc:
                self.load_failed.emit(f"Could not open {folder}: {exc}")
            else:
                self._folder = self._index.folder
                self._start_loading(scan_only=False)
        self._emit_counts()

    @property
    def subfolders(self) -> bool:
        """Whether the folder's subfolders are indexed and shown too (see `core.gallery`)."""
        return self._subfolders

    def set_subfolders(self, on: bool) -> None:
        """Include the subfolders' images or not; rescans the current folder (rows come and go as it runs)."""
        if on == self._subfolders:
            return
        self._subfolders = on
        if self._folder is not None:
            self._stop_loading()
            # Turning them on reloads the index's rows too (it may hold nested rows a load without them left out);
            # turning them off needs only the scan that drops the nested rows, once the rows are in.
            self._start_loading(scan_only=self._have_rows and not on)

    def rescan(self) -> None:
        """Look for files added, changed or removed outside the app."""
        if self._folder is not None and self._thread is None:
            self._start_loading(scan_only=True)

    def _start_loading(self, *, scan_only: bool) -> None:
        self._generation += 1
        thread = _LoadThread(self._folder, self._generation, scan_only=scan_only, subfolders=self._subfolders)
        thread.loaded.connect(self._on_loaded)
        thread.batch.connect(self._on_batch)
        thread.failed.connect(self._on_failed)
        thread.finished.connect(self._on_thread_finished)
        self._thread = thread
        self._threads.append(thread)
        thread.start()
        self.loading_changed.emit(True)

    def _stop_loading(self) -> None:
        # Results of an old thread are ignored by generation; it is only waited for at shutdown.
        if self._thread is not None:
            self._thread.requestInterruption()
            self._thread = None
            self._generation += 1
            self.loading_changed.emit(False)

    def shutdown(self) -> None:
        """Stop loading and wait for the loading threads; close the index."""
        self._stop_loading()
        for thread in self._threads:
            thread.requestInterruption()
        for thread in self._threads:
            thread.wait()
        self._threads.clear()
        if self._index is not None:
            self._index.close()
            self._index = None

    def _on_thread_finished(self) -> None:
        thread = self.sender()
        if thread not in self._threads:
            return
        # `finished` is emitted just before the thread ends: wait() here returns at once.
        thread.wait()
        self._threads.remove(thread)
        if thread is self._thread:
            self._thread = None
            self.loading_changed.emit(False)
        thread.deleteLater()

    def _on_loaded(self, payload: tuple[int, list[Entry]]) -> None:
        generation, entries = payload
        if generation != self._generation:
            return
        self.beginResetModel()
        self._all = {e.path: e for e in entries}
        self._resort()
        self.endResetModel()
        self._have_rows = True
        self._emit_counts()

    def _on_batch(self, payload: tuple[int, ScanBatch]) -> None:
        generation, batch = payload
        if generation != self._generation:
            return
        for path in batch.removed:
            self._all.pop(path, None)
            self._remove_row(path)
        fresh = [e for e in batch.updated if e.path not in self._all]
        for entry in batch.updated:
            if entry.path in self._all:
                self._upsert(entry)
        self._insert_new(fresh)
        self._emit_counts()

    def _on_failed(self, payload: tuple[int, str]) -> None:
        generation, message = payload
        if generation == self._generation:
            self.load_failed.emit(message)

    # -- rows ----------------------------------------------------------------------------------------------

    def entry(self, row: int) -> Entry | None:
        return self._rows[row] if 0 <= row < len(self._rows) else None

    def entry_for(self, path: str | os.PathLike[str]) -> Entry | None:
        return self._all.get(self._key_path(path))

    def entries(self) -> list[Entry]:
        """The shown entries in display order."""
        return list(self._rows)

    def total(self) -> int:
        return len(self._all)

    def row_of(self, path: str | os.PathLike[str]) -> int:
        if self._row_of is None:
            self._row_of = {e.path: i for i, e in enumerate(self._rows)}
        return self._row_of.get(self._key_path(path), -1)

    def index_of(self, path: str | os.PathLike[str]) -> QModelIndex:
        row = self.row_of(path)
        return self.index(row, 0) if row >= 0 else QModelIndex()

    def _key_path(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        if self._folder is not None and path.parent != self._folder:
            with contextlib.suppress(OSError):
                path = path.resolve()
        return path

    def _resort(self) -> None:
        self._rows = self._filter.apply(self._all.values())
        self._keys = [self._filter.sort_key(e) for e in self._rows]
        self._row_of = None

    def _insert_new(self, entries: list[Entry]) -> None:
        """Entries not in the model yet, inserted in as few runs of rows as their sorted positions allow (a
        scan delivers files newest first, so under the default sort a batch is one run at the end)."""
        for entry in entries:
            self._all[entry.path] = entry
        keyed = sorted(
            ((self._filter.sort_key(e), e) for e in entries if self._filter.matches(e)), key=lambda item: item[0]
        )
        start = 0
        while start < len(keyed):
            row = bisect_right(self._keys, keyed[start][0])
            limit = self._keys[row] if row < len(self._keys) else None
            end = start + 1
            while end < len(keyed) and (limit is None or keyed[end][0] < limit):
                end += 1
            self.beginInsertRows(QModelIndex(), row, row + end - start - 1)
            self._keys[row:row] = [key for key, _ in keyed[start:end]]
            self._rows[row:row] = [entry for _, entry in keyed[start:end]]
            self._row_of = None
            self.endInsertRows()
            start = end

    def _upsert(self, entry: Entry) -> None:
        """A new or changed file: (re)placed at its sorted position, if it matches the filter."""
        if entry.path in self._all:
            self._remove_row(entry.path)
        self._all[entry.path] = entry
        if not self._filter.matches(entry):
            return
        key = self._filter.sort_key(entry)
        row = bisect_right(self._keys, key)
        self.beginInsertRows(QModelIndex(), row, row)
        self._rows.insert(row, entry)
        self._keys.insert(row, key)
        self._row_of = None
        self.endInsertRows()

    def _update_in_place(self, entry: Entry) -> None:
        """A culling change: the row stays where it is unless it no longer matches the filter."""
        self._all[entry.path] = entry
        row = self.row_of(entry.path)
        if row < 0:
            if self._filter.matches(entry):
                self._upsert(entry)
        elif not self._filter.matches(entry):
            self._remove_row(entry.path)
        else:
            self._rows[row] = entry
            index = self.index(row, 0)
            self.dataChanged.emit(index, index)
        self.entry_changed.emit(os.fspath(entry.path))

    def _remove_row(self, path: Path) -> None:
        row = self.row_of(path)
        if row < 0:
            return
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._rows[row]
        del self._keys[row]
        self._row_of = None
        self.endRemoveRows()

    def _emit_counts(self) -> None:
        self.counts_changed.emit(len(self._rows), len(self._all))

    # -- filter and sort -----------------------------------------------------------------------------------

    @property
    def filter(self) -> GalleryFilter:
        return self._filter

    def set_filter(self, wanted: GalleryFilter) -> None:
        if wanted == self._filter:
            return
        self._filter = wanted
        self.beginResetModel()
        self._resort()
        self.endResetModel()
        self._emit_counts()

    # -- changes -------------------------------------------------------------------------------------------

    def add_path(self, path: str | os.PathLike[str]) -> Entry | None:
        """Show a file just written into the folder (normally already indexed by `save_generated`)."""
        if self._index is None:
            return None
        entry = self._index.entry(path) or self._index.add_file(path)
        if entry is not None:
            self._upsert(entry)
            self._emit_counts()
            self.entry_changed.emit(os.fspath(entry.path))
        return entry

    def set_rating(self, paths: list[str] | list[Path], stars: int) -> None:
        self._cull(paths, lambda index, path: index.set_rating(path, stars))

    def set_flag(self, paths: list[str] | list[Path], flag: str | None) -> None:
        self._cull(paths, lambda index, path: index.set_flag(path, flag))

    def _cull(self, paths, change) -> None:
        if self._index is None:
            return
        for path in paths:
            change(self._index, path)
            entry = self._index.entry(path)
            if entry is not None:
                self._update_in_place(entry)
        self._emit_counts()

    def thumbnail_changed(self, path: str) -> None:
        row = self.row_of(path)
        if row >= 0:
            index = self.index(row, 0)
            self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])

    # -- trash ---------------------------------------------------------------------------------------------

    def move_to_trash(self, paths: list[str] | list[Path]) -> list[str]:
        """Move files to the OS trash and forget them (one undoable step). Returns the paths that could not
        be trashed."""
        if self._index is None:
            return [os.fspath(p) for p in paths]
        done: list[TrashedItem] = []
        failed: list[str] = []
        for path in paths:
            path = self._key_path(path)
            entry = self._index.entry(path) or self._all.get(path)
            file = QFile(os.fspath(path))
            if entry is None or not file.moveToTrash():
                failed.append(os.fspath(path))
                continue
            self._index.remove_entry(path)
            self._all.pop(path, None)
            self._remove_row(path)
            done.append(TrashedItem(entry, file.fileName()))
        if done:
            self._trash.append(done)
            self.trash_changed.emit(len(self._trash))
            self._emit_counts()
        return failed

    def can_undo_trash(self) -> bool:
        return bool(self._trash)

    def undo_trash(self) -> list[Path]:
        """Move the last trashed files back and restore their rows, ratings and flags. Returns the paths
        restored (a file whose name was taken meanwhile stays in the trash)."""
        if not self._trash or self._index is None:
            return []
        restored = []
        for item in reversed(self._trash.pop()):
            target = item.entry.path
            if target.exists() or not os.path.exists(item.trashed_path):
                continue
            try:
                shutil.move(item.trashed_path, target)
            except OSError:
                continue
            _forget_trash_info(Path(item.trashed_path))
            entry = self._index.restore_entry(item.entry)
            if entry is not None:
                self._upsert(entry)
                restored.append(entry.path)
        self.trash_changed.emit(len(self._trash))
        self._emit_counts()
        return restored


def _forget_trash_info(trashed: Path) -> None:
    # The freedesktop trash keeps `files/<name>` and `info/<name>.trashinfo`; once the file is back, the
    # info record would be an orphan that file managers list as a broken item. (Windows and macOS keep no
    # such side file that we can know of; there this does nothing.)
    if trashed.parent.name != "files":
        return
    with contextlib.suppress(OSError):
        (trashed.parent.parent / "info" / f"{trashed.name}.trashinfo").unlink()
