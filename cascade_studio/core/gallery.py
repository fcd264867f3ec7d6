"""The gallery's index of an output folder: the folder is the source of truth, the index a cache of it.

Layout, all inside the output folder so the folder stays self-contained when it is moved:

    <folder>/.cascade-studio/index.sqlite   sqlite (WAL) cache: one row per image, plus the culling table
    <folder>/.cascade-studio/culling.jsonl  append-only culling journal: the durable record of ratings/flags

Every rating or flag change is appended to the journal (one JSON object per line: `{"n": name, "r": stars,
"f": flag}`, the full new state of that file, so the last line for a name wins) and then written to sqlite
with the journal offset it has reached. Opening replays any journal tail the database has not seen, so a
change whose sqlite commit was lost still counts. When the database is missing or corrupt it is set aside
and rebuilt: the culling table from the whole journal, the image rows from the PNGs' metadata by `scan()`.
A torn last line (a crash mid-write) fails to parse and is skipped; before the next append a newline is
added so a torn line never swallows a good one. Both stores are flushed on every change but not fsynced:
they survive the application crashing, which is what culling needs, without an fsync per key press.

Ratings are keyed by the file's path inside the folder (its name, for a top-level file; `2024-05-01/x.png`,
with forward slashes, in a subfolder), so an image deleted outside the app keeps its rating should it come back
(e.g. restored from the trash by a file manager). Deleting through `remove_entry` forgets it explicitly.

A scan indexes the folder's top level, where we write; with `subfolders=True` also the images in its
subfolders (A1111 writes one folder per day), down to `MAX_DEPTH` levels, not following links to folders.
Hidden files and folders (ours, `.cascade-studio`, included) are never indexed. A scan without subfolders drops
the rows of nested images (their ratings stay in the culling table for when they are indexed again).

Threading: a `GalleryIndex` holds one sqlite connection and must be used from the thread that made it.
Several instances on the same folder (GUI thread, GPU thread, a scanning thread) are fine: sqlite's WAL
mode serialises their short write transactions, and metadata is read from files outside transactions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from .geometry import snap_size
from .metadata import fsync_directory, png_text_chunks, read_metadata, save_png_atomic
from .request import MAX_SEED, GenerationRequest

HIDDEN_DIR = ".cascade-studio"
INDEX_NAME = "index.sqlite"
JOURNAL_NAME = "culling.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FLAGS = ("pick", "reject")
SCHEMA_VERSION = 2
# Per-file bound on the metadata read while indexing: big enough for any real ComfyUI workflow, small
# enough that a hostile folder cannot make a scan read gigabytes.
MAX_METADATA_BYTES = 2 * 1024 * 1024
MAX_JOURNAL_BYTES = 4 * 1024 * 1024  # rewritten (compacted) from the culling table above this
MAX_JOURNAL_LINE = 64 * 1024
MAX_DEPTH = 8  # subfolder levels below the gallery folder that a scan with subfolders reads

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    name TEXT PRIMARY KEY,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    negative_prompt TEXT NOT NULL,
    seed TEXT,
    model TEXT,
    source TEXT NOT NULL,
    request_json TEXT,
    made_with TEXT
);
CREATE TABLE IF NOT EXISTS culling (name TEXT PRIMARY KEY, rating INTEGER NOT NULL, flag TEXT);
"""

_COLUMNS = (
    "e.name, e.mtime_ns, e.size, e.created, e.width, e.height, e.prompt, e.negative_prompt, e.seed, "
    "e.model, e.source, e.request_json, e.made_with, COALESCE(c.rating, 0), c.flag"
)


@dataclass(frozen=True)
class Entry:
    path: Path
    created: float
    width: int
    height: int
    prompt: str
    negative_prompt: str
    seed: int | None
    model: str | None
    source: str  # "cascade_studio", "a1111", "comfyui", "invokeai", ... or "none"
    request_json: str | None  # our GenerationRequest JSON (recall) when the PNG has it
    rating: int  # 0..5
    flag: str | None  # "pick" | "reject" | None
    # The file's identity when indexed; thumbnails are cached under (path, mtime_ns, size).
    mtime_ns: int = 0
    size: int = 0
    made_with: str | None = None  # "cuda · bfloat16": the device and precision our PNG metadata records
    #: the path inside the gallery folder, with forward slashes (the index's key); "" means the file's name
    key: str = ""

    @property
    def name(self) -> str:
        return self.key or self.path.name


@dataclass
class ScanBatch:
    """One step of `iter_scan`: rows written (new or changed files) and paths whose files are gone."""

    updated: list[Entry] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    done: int = 0  # files examined so far
    total: int = 0  # files to examine (new or changed)


@dataclass
class ScanSummary:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0


class GalleryIndex:
    """The index of one output folder. One per thread (each holds its own sqlite connection)."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hidden = self.folder / HIDDEN_DIR
        self.hidden.mkdir(exist_ok=True)
        self.index_path = self.hidden / INDEX_NAME
        self.journal_path = self.hidden / JOURNAL_NAME
        self.rebuilt = False  # True when this open found no usable index and started a new one
        self._journal = None
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError:
            self._set_aside_corrupt()
            self._db = self._connect()
        self._replay_journal()

    # -- opening -------------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.index_path, isolation_level=None, timeout=10.0, check_same_thread=True)
        try:
            db.execute("PRAGMA busy_timeout = 10000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                raise sqlite3.DatabaseError(f"index failed its integrity check: {check}")
            db.executescript(_SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                # A fresh database has seen none of the journal.
                db.execute("INSERT OR REPLACE INTO meta VALUES ('journal_offset', '0')")
                self.rebuilt = True
            elif version[0] == "1":
                _migrate_from_1(db)
            elif version[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"index schema {version[0]} is not {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside_corrupt(self) -> None:
        # Keep the latest damaged file for inspection rather than deleting the evidence.
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for old in self.hidden.glob(f"{INDEX_NAME}*.corrupt-*"):
            with contextlib.suppress(OSError):
                old.unlink()
        for suffix in ("", "-wal", "-shm"):
            src = self.index_path.with_name(INDEX_NAME + suffix)
            if src.exists():
                with contextlib.suppress(OSError):
                    os.replace(src, self.hidden / f"{INDEX_NAME}{suffix}.corrupt-{stamp}")
        self.rebuilt = True

    def _replay_journal(self) -> None:
        try:
            size = self.journal_path.stat().st_size
        except FileNotFoundError:
            size = 0
        row = self._db.execute("SELECT value FROM meta WHERE key = 'journal_offset'").fetchone()
        offset = int(row[0]) if row and row[0].isdigit() else 0
        if offset > size:  # the journal was replaced or truncated: everything in it is news
            offset = 0
        if offset < size:
            state: dict[str, tuple[int, str | None]] = {}
            with open(self.journal_path, "rb") as f:
                f.seek(offset)
                for line in f:
                    parsed = _parse_journal_line(line)
                    if parsed is not None:
                        state[parsed[0]] = parsed[1:]
            with self._transaction():
                for name, (rating, flag) in state.items():
                    self._write_culling(name, rating, flag)
                self._set_offset(size)
        if size > MAX_JOURNAL_BYTES:
            self._compact_journal()

    def _compact_journal(self) -> None:
        rows = self._db.execute("SELECT name, rating, flag FROM culling").fetchall()
        tmp = self.journal_path.with_name(JOURNAL_NAME + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for name, rating, flag in rows:
                f.write(_journal_line(name, rating, flag))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.journal_path)
        with self._transaction():
            self._set_offset(self.journal_path.stat().st_size)

    # -- reading -------------------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries e LEFT JOIN culling c USING (name)").fetchall()
        return [self._entry(row) for row in rows]

    def entry(self, path: str | os.PathLike[str]) -> Entry | None:
        name = self._name(path)
        if name is None:
            return None
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries e LEFT JOIN culling c USING (name) WHERE e.name = ?", (name,)
        ).fetchone()
        return self._entry(row) if row else None

    def query(self, text: str = "", *, flag: str | None = None, min_rating: int = 0, sort: str = "date") -> list[Entry]:
        """Entries matching a text search over prompt/model/seed/name, a flag filter ("pick", "reject",
        "unflagged" or None for all) and a minimum star rating, sorted by "date" (newest first), "oldest"
        or "rating" (best first, then newest)."""
        wanted = GalleryFilter(text=text, flag=flag, min_rating=min_rating, sort=sort)
        return wanted.apply(self.entries())

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    # -- culling -------------------------------------------------------------------------------------------

    def set_rating(self, path: str | os.PathLike[str], stars: int) -> None:
        if isinstance(stars, bool) or not isinstance(stars, int) or not 0 <= stars <= 5:
            raise ValueError(f"rating must be an integer from 0 to 5 (got {stars!r})")
        name = self._require_name(path)
        self._set_culling(name, stars, self._culling(name)[1])

    def set_flag(self, path: str | os.PathLike[str], flag: str | None) -> None:
        if flag is not None and flag not in FLAGS:
            raise ValueError(f"flag must be 'pick', 'reject' or None (got {flag!r})")
        name = self._require_name(path)
        self._set_culling(name, self._culling(name)[0], flag)

    def _culling(self, name: str) -> tuple[int, str | None]:
        row = self._db.execute("SELECT rating, flag FROM culling WHERE name = ?", (name,)).fetchone()
        return (row[0], row[1]) if row else (0, None)

    def _set_culling(self, name: str, rating: int, flag: str | None) -> None:
        offset = self._append_journal(_journal_line(name, rating, flag))
        with self._transaction():
            self._write_culling(name, rating, flag)
            self._set_offset(offset)

    def _append_journal(self, line: str) -> int:
        if self._journal is None:
            self._journal = open(self.journal_path, "ab")  # noqa: SIM115 - held open for the index's life
            end = self._journal.seek(0, os.SEEK_END)
            if end > 0:
                with open(self.journal_path, "rb") as f:
                    f.seek(end - 1)
                    torn = f.read(1) != b"\n"
                if torn:
                    self._journal.write(b"\n")
        self._journal.write(line.encode("utf-8"))
        self._journal.flush()
        return os.fstat(self._journal.fileno()).st_size

    def _write_culling(self, name: str, rating: int, flag: str | None) -> None:
        if rating == 0 and flag is None:
            self._db.execute("DELETE FROM culling WHERE name = ?", (name,))
        else:
            self._db.execute("INSERT OR REPLACE INTO culling VALUES (?, ?, ?)", (name, rating, flag))

    def _set_offset(self, offset: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('journal_offset', ?)", (str(offset),))

    # -- writing images ------------------------------------------------------------------------------------

    def save_generated(
        self,
        pixels: np.ndarray,
        request: GenerationRequest,
        *,
        model_name: str,
        version: str,
        device: str | None = None,
        precision: str | None = None,
    ) -> Path:
        """Write `<folder>/<timestamp>_<seed>.png` atomically, never overwriting, and index it.

        The file and its row both exist when this returns. `request` describes this one image
        (`request.for_image(i)`); `device` and `precision` are recorded with it (`png_text_chunks`).
        """
        image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
        texts = png_text_chunks(request, model_name, version, device=device, precision=precision)
        now = time.time()
        stamp = datetime.fromtimestamp(now).strftime("%Y%m%d-%H%M%S-%f")[:-3]
        staging = self.hidden / f"saving-{os.getpid()}-{time.monotonic_ns()}.png"
        save_png_atomic(staging, image, texts)
        try:
            path = self._publish(staging, f"{stamp}_{request.seed}")
        finally:
            with contextlib.suppress(OSError):
                staging.unlink()
        stat = path.stat()
        entry = Entry(
            path=path,
            created=now,
            width=image.width,
            height=image.height,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=request.seed,
            model=model_name,
            source="cascade_studio",
            request_json=request.to_json(),
            rating=0,
            flag=None,
            mtime_ns=stat.st_mtime_ns,
            size=stat.st_size,
            made_with=made_with(device, precision),
        )
        with self._transaction():
            self._insert([entry])
        return path

    def _publish(self, staging: Path, stem: str) -> Path:
        # A hard link fails rather than replacing an existing file, so two writers can never overwrite each
        # other; where links are unsupported (FAT, some network shares) fall back to check-then-rename.
        for attempt in range(10_000):
            path = self.folder / (f"{stem}.png" if attempt == 0 else f"{stem}-{attempt}.png")
            if path.exists():
                continue
            try:
                os.link(staging, path)
            except FileExistsError:
                continue
            except OSError:
                if path.exists():
                    continue
                os.replace(staging, path)
            fsync_directory(self.folder)
            return path
        raise FileExistsError(f"no free file name for {stem}.png in {self.folder}")

    def add_file(self, path: str | os.PathLike[str]) -> Entry | None:
        """Index (or re-index) one file of this folder now; None when it is not an image here."""
        name = self._name(path)
        if name is None:
            return None
        try:
            stat = (self.folder / name).stat()
        except OSError:
            return None
        entry = _read_entry(self.folder / name, stat, name)
        with self._transaction():
            self._insert([entry])
        return self.entry(entry.path)

    def remove_entry(self, path: str | os.PathLike[str]) -> Entry | None:
        """Forget one image (its file was moved to the trash), rating and flag included. Returns what was
        forgotten, for `restore_entry` (undo)."""
        entry = self.entry(path)
        if entry is None:
            return None
        if entry.rating or entry.flag:
            self._set_culling(entry.name, 0, None)
        with self._transaction():
            self._db.execute("DELETE FROM entries WHERE name = ?", (entry.name,))
        return entry

    def restore_entry(self, entry: Entry) -> Entry | None:
        """Undo `remove_entry` once the file is back: re-index it and restore its rating and flag."""
        restored = self.add_file(entry.path)
        if restored is None:
            return None
        if (restored.rating, restored.flag) != (entry.rating, entry.flag):
            self._set_culling(restored.name, entry.rating, entry.flag)
        return self.entry(entry.path)

    # -- scanning ------------------------------------------------------------------------------------------

    def iter_scan(
        self,
        *,
        should_stop: Callable[[], bool] | None = None,
        subfolders: bool = False,
        first_batch: int = 48,
        max_batch: int = 400,
    ) -> Iterator[ScanBatch]:
        """Bring the index in line with the folder (and its subfolders, with `subfolders`), yielding what changed
        in batches as they are committed.

        Files are compared by (mtime, size); only new or changed files are read, newest first, in batches
        that start small (fast first results) and grow. `should_stop` is polled between files and folders.
        """
        on_disk = _list_images(self.folder, subfolders=subfolders, should_stop=should_stop)
        if on_disk is None:  # stopped while listing: change nothing
            return
        known = {
            name: (mtime, size) for name, mtime, size in self._db.execute("SELECT name, mtime_ns, size FROM entries")
        }
        removed = [name for name in known if name not in on_disk]
        if removed:
            with self._transaction():
                self._db.executemany("DELETE FROM entries WHERE name = ?", [(n,) for n in removed])
        todo = [(name, st) for name, st in on_disk.items() if known.get(name) != (st.st_mtime_ns, st.st_size)]
        todo.sort(key=lambda item: item[1].st_mtime_ns, reverse=True)
        total = len(todo)
        yield ScanBatch(removed=[self.folder / n for n in removed], done=0, total=total)
        batch: list[Entry] = []
        size = first_batch
        for done, (name, st) in enumerate(todo, 1):
            if should_stop is not None and should_stop():
                break
            batch.append(_read_entry(self.folder / name, st, name))
            if len(batch) >= size or done == total:
                with self._transaction():
                    self._insert(batch)
                culling = self._culling_of([e.name for e in batch])
                updated = [_with_culling(e, culling.get(e.name, (0, None))) for e in batch]
                yield ScanBatch(updated=updated, done=done, total=total)
                batch = []
                size = min(max_batch, size * 2)
        if batch:  # stopped early: keep what was read
            with self._transaction():
                self._insert(batch)

    def scan(self, *, should_stop: Callable[[], bool] | None = None, subfolders: bool = False) -> ScanSummary:
        known = {name for (name,) in self._db.execute("SELECT name FROM entries")}
        summary = ScanSummary()
        for batch in self.iter_scan(should_stop=should_stop, subfolders=subfolders):
            summary.removed += len(batch.removed)
            for entry in batch.updated:
                if entry.name in known:
                    summary.changed += 1
                else:
                    summary.added += 1
        summary.unchanged = len(self) - summary.added - summary.changed
        return summary

    def _culling_of(self, names: list[str]) -> dict[str, tuple[int, str | None]]:
        result: dict[str, tuple[int, str | None]] = {}
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for name, rating, flag in self._db.execute(
                f"SELECT name, rating, flag FROM culling WHERE name IN ({marks})", chunk
            ):
                result[name] = (rating, flag)
        return result

    # -- plumbing ------------------------------------------------------------------------------------------

    def _insert(self, entries: Iterable[Entry]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    e.name,
                    e.mtime_ns,
                    e.size,
                    e.created,
                    e.width,
                    e.height,
                    e.prompt,
                    e.negative_prompt,
                    None if e.seed is None else str(e.seed),  # seeds reach 2**64 - 1: past sqlite's int64
                    e.model,
                    e.source,
                    e.request_json,
                    e.made_with,
                )
                for e in entries
            ],
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _entry(self, row: tuple) -> Entry:
        name, mtime_ns, size, created, width, height, prompt, negative, seed, model, source, request_json = row[:12]
        return Entry(
            key=name,
            path=self.folder / name,
            created=created,
            width=width,
            height=height,
            prompt=prompt,
            negative_prompt=negative,
            seed=int(seed) if seed is not None and seed.lstrip("-").isdigit() else None,
            model=model,
            source=source,
            request_json=request_json,
            rating=int(row[13]),
            flag=row[14] if row[14] in FLAGS else None,
            mtime_ns=mtime_ns,
            size=size,
            made_with=row[12],
        )

    def _name(self, path: str | os.PathLike[str]) -> str | None:
        """The index key of ``path`` (relative to the folder or absolute): its path inside the folder with forward
        slashes, or None when it is not inside the folder or lies in a hidden file or folder."""
        path = Path(path)
        if not path.is_absolute():
            path = self.folder / path
        try:
            parts = path.relative_to(self.folder).parts
        except ValueError:
            try:
                parts = path.parent.resolve().joinpath(path.name).relative_to(self.folder).parts
            except (OSError, ValueError):
                return None
        return "/".join(parts) if _is_key(parts) else None

    def _require_name(self, path: str | os.PathLike[str]) -> str:
        name = self._name(path)
        if name is None:
            raise ValueError(f"{path} is not in the gallery folder {self.folder}")
        return name

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def __enter__(self) -> GalleryIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------
# Filtering and sorting (shared by `query` and the Qt model)
# ---------------------------------------------------------------------------------------------------------

SORTS = ("date", "oldest", "rating")
FLAG_FILTERS = (None, "pick", "reject", "unflagged")


@dataclass(frozen=True)
class GalleryFilter:
    text: str = ""
    flag: str | None = None  # None: all; "pick", "reject" or "unflagged"
    min_rating: int = 0
    sort: str = "date"

    def __post_init__(self) -> None:
        if self.flag not in FLAG_FILTERS:
            raise ValueError(f"flag filter must be one of {FLAG_FILTERS} (got {self.flag!r})")
        if self.sort not in SORTS:
            raise ValueError(f"sort must be one of {SORTS} (got {self.sort!r})")

    def matches(self, entry: Entry) -> bool:
        if self.flag == "unflagged":
            if entry.flag is not None:
                return False
        elif self.flag is not None and entry.flag != self.flag:
            return False
        if entry.rating < self.min_rating:
            return False
        words = self.text.casefold().split()
        if not words:
            return True
        haystack = "\n".join(
            (entry.prompt, entry.model or "", "" if entry.seed is None else str(entry.seed), entry.name)
        ).casefold()
        return all(word in haystack for word in words)

    def sort_key(self, entry: Entry) -> tuple:
        """Ascending order of this key is display order."""
        if self.sort == "oldest":
            return (entry.created, entry.path.name)
        if self.sort == "rating":
            return (-entry.rating, -entry.created, entry.path.name)
        return (-entry.created, entry.path.name)

    def apply(self, entries: Iterable[Entry]) -> list[Entry]:
        return sorted((e for e in entries if self.matches(e)), key=self.sort_key)


# ---------------------------------------------------------------------------------------------------------
# Recall and export
# ---------------------------------------------------------------------------------------------------------


def entry_request(entry: Entry) -> GenerationRequest | None:
    """The request to put back into the prompt panel: ours exactly; another tool's as far as it maps
    (prompts, seed, size snapped to a valid one). None when the image carries nothing to recall."""
    if entry.request_json:
        try:
            return GenerationRequest.from_json(entry.request_json)
        except ValueError:
            pass
    if not entry.prompt and not entry.negative_prompt:
        return None
    seed = entry.seed if entry.seed is not None and 0 <= entry.seed <= MAX_SEED else 0
    width, height, _ = snap_size(max(entry.width, 1), max(entry.height, 1))
    try:
        return GenerationRequest(
            entry.prompt, seed=seed, negative_prompt=entry.negative_prompt, width=width, height=height
        ).validate()
    except ValueError:
        return None


def export_files(paths: Iterable[str | os.PathLike[str]], destination: str | os.PathLike[str]) -> list[Path]:
    """Copy files (with their metadata) into `destination`, never overwriting: a taken name gets `-1`,
    `-2`, ... Returns the new paths in order."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    for source in map(Path, paths):
        for attempt in range(10_000):
            target = destination / (source.name if attempt == 0 else f"{source.stem}-{attempt}{source.suffix}")
            try:
                with open(source, "rb") as src, open(target, "xb") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
            except FileExistsError:
                continue
            except BaseException:
                with contextlib.suppress(OSError):
                    if target.exists() and target.stat().st_size == 0:
                        target.unlink()
                raise
            with contextlib.suppress(OSError):
                shutil.copystat(source, target)
            written.append(target)
            break
        else:
            raise FileExistsError(f"no free file name for {source.name} in {destination}")
    return written


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------


def _list_images(
    folder: Path, *, subfolders: bool = False, should_stop: Callable[[], bool] | None = None
) -> dict[str, os.stat_result] | None:
    """The images of ``folder`` (and of its subfolders down to MAX_DEPTH, with ``subfolders``) by index key, hidden
    files and folders left out and links to folders not followed; None when ``should_stop`` said so."""
    found: dict[str, os.stat_result] = {}
    pending: list[tuple[Path, str, int]] = [(folder, "", 0)]
    while pending:
        if should_stop is not None and should_stop():
            return None
        current, prefix, depth = pending.pop()
        try:
            with os.scandir(current) as it:
                items = list(it)
        except OSError:
            if depth == 0:
                raise
            continue  # an unreadable subfolder costs only its own images
        for item in items:
            name = item.name
            if name.startswith("."):
                continue
            try:
                if item.is_dir(follow_symlinks=False):
                    if subfolders and depth < MAX_DEPTH:
                        pending.append((Path(item.path), f"{prefix}{name}/", depth + 1))
                elif name.lower().endswith(IMAGE_SUFFIXES) and item.is_file():
                    found[prefix + name] = item.stat()
            except OSError:
                continue
    return found


def _read_entry(path: Path, stat: os.stat_result, key: str = "") -> Entry:
    """Everything the index keeps about one file. Never raises for a bad file: it is indexed with what
    could be read (a broken file still shows up, and can be deleted from the gallery)."""
    width = height = 0
    source, prompt, negative, seed, model, request_json, made = "none", "", "", None, None, None, None
    try:
        width, height = _image_size(path)
        if path.suffix.lower() == ".png":
            meta = read_metadata(path, max_bytes=MAX_METADATA_BYTES)
            if meta.source != "unknown":
                source = meta.source
                prompt, negative, seed, model = meta.prompt, meta.negative_prompt, meta.seed, meta.model
                if meta.request is not None:
                    request_json = meta.request.to_json()
                made = made_with(meta.extra.get("device"), meta.extra.get("precision"))
    except Exception:  # an unreadable or hostile file costs only its own metadata
        pass
    return Entry(
        path=path,
        created=stat.st_mtime,
        width=width,
        height=height,
        prompt=prompt,
        negative_prompt=negative,
        seed=seed,
        model=model,
        source=source,
        request_json=request_json,
        rating=0,
        flag=None,
        mtime_ns=stat.st_mtime_ns,
        size=stat.st_size,
        made_with=made,
        key=key,
    )


def made_with(device: object, precision: object) -> str | None:
    """ "cuda · bfloat16" from the metadata's device and precision (either may be missing)."""
    parts = [str(p) for p in (device, precision) if isinstance(p, str) and p]
    return " · ".join(parts) or None


_PRECISIONS = ("bfloat16", "float32", "float16")


def _device_precision(text: str) -> tuple[str | None, str | None]:
    parts = [p.strip() for p in text.split("·")]
    precision = next((p for p in parts if p in _PRECISIONS), None)
    device = next((p for p in parts if p and p not in _PRECISIONS), None)
    return device, precision


def recall_caveat(made_with: str | None, running: str | None) -> str:
    """What to add when an image made with ``made_with`` is recalled while the GPU worker runs ``running`` (both as
    :func:`made_with` writes them): the same seed and settings give a slightly different image in another precision
    (and on another kind of device). Empty when they agree or either is unknown."""
    if not made_with or not running:
        return ""
    (made_device, made_precision), (device, precision) = _device_precision(made_with), _device_precision(running)
    if made_precision and precision and made_precision != precision:
        if made_precision == "float16":  # another tool's, or an old file: Stage C is refused in float16
            return f" Made in float16, which Stage C cannot run (it overflows); this worker runs {precision}."
        return (
            f" Made in {made_precision}, this worker runs {precision}: expect small differences"
            " (Edit → Preferences → Precision)."
        )
    if made_device and device and made_device != device:
        return f" Made on {made_device}, this worker runs on {device}: expect small differences."
    return ""


def _migrate_from_1(db: sqlite3.Connection) -> None:
    """Version 1 lacked ``made_with``: add it and forget the files' identities, so the next scan reads every file's
    metadata again (ratings and flags live in their own table and stay)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("ALTER TABLE entries ADD COLUMN made_with TEXT")
        db.execute("UPDATE entries SET mtime_ns = -1")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _image_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
    # Pillow reads only the header here; the pixels are never decoded.
    with Image.open(path) as im:
        return im.size


def _is_key(parts: Sequence[str]) -> bool:
    """Whether path ``parts`` make an index key: a path inside the folder, no way out of it, nothing hidden."""
    return bool(parts) and not any(part in ("", ".", "..") or part.startswith(".") for part in parts)


def _journal_line(name: str, rating: int, flag: str | None) -> str:
    return json.dumps({"n": name, "r": rating, "f": flag}, ensure_ascii=True) + "\n"


def _parse_journal_line(line: bytes) -> tuple[str, int, str | None] | None:
    if len(line) > MAX_JOURNAL_LINE or not line.endswith(b"\n"):
        return None  # a torn last line (crash mid-write) or garbage
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    name, rating, flag = data.get("n"), data.get("r"), data.get("f")
    if not isinstance(name, str) or "\\" in name or not _is_key(name.split("/")):
        return None
    if isinstance(rating, bool) or not isinstance(rating, int) or not 0 <= rating <= 5:
        return None
    if flag is not None and flag not in FLAGS:
        return None
    return name, rating, flag


def _with_culling(entry: Entry, culling: tuple[int, str | None]) -> Entry:
    return replace(entry, rating=culling[0], flag=culling[1])
