"""Gallery thumbnails, made and cached off the GUI thread.

`ThumbnailLoader.get(key)` answers from a small in-memory cache or queues the key and returns None; a private
thread pool drains the queue (a disk-cache hit reads a small JPEG/PNG, a miss decodes the original and
writes the cache entry), and each result comes back through the queued `thumbnail_ready` signal. The view
calls `retain(visible keys)` after scrolling so work for items scrolled away is dropped before it starts.

The disk cache lives under the user's cache folder (`$XDG_CACHE_HOME/cascade-studio/thumbnails` on Linux),
not in the output folder (which may be synced or shared). Entries are keyed by (absolute path, mtime, size,
side), so an edited file gets a new thumbnail. Stale entries are never read again, and the cache is kept under
`max_cache_bytes` (512 MiB by default): when a loader starts, a pool task deletes the least recently used
entries (a cache hit touches its entry's mtime) down to 80 % of the limit.

Threading: create and use a loader from the GUI thread; only the pool's threads decode images. Call
`shutdown()` before the application exits (it drops queued work and waits for running tasks).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QSize, QStandardPaths, Qt, QThread, QThreadPool, Signal
from PySide6.QtGui import QImage, QImageReader

THUMB_SIDE = 256  # cached size (longest side, px); the view scales it down for smaller grid sizes
JPEG_QUALITY = 88
MAX_CACHE_BYTES = 512 * 2**20  # about 25,000 thumbnails
PRUNE_TO = 0.8  # a prune leaves the cache at this share of the limit, so it does not run on every start
STALE_TMP_SECONDS = 3600  # half-written entries older than this were left by a crash


@dataclass(frozen=True)
class ThumbnailKey:
    path: str
    mtime_ns: int
    size: int


@dataclass(frozen=True)
class Thumbnail:
    """One produced thumbnail. `image` is null when the file could not be decoded. `thread_id` and
    `gui_thread` record where it was produced (the GUI thread never should be)."""

    key: ThumbnailKey
    image: QImage
    from_disk_cache: bool
    thread_id: int
    gui_thread: bool


def default_cache_dir() -> Path:
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericCacheLocation)
    if not base:
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cascade-studio" / "thumbnails"


class ThumbnailLoader(QObject):
    """GUI-thread front of the thumbnail pool (see the module docstring for the threading contract)."""

    thumbnail_ready = Signal(object)  # Thumbnail, delivered in the GUI thread
    _produced = Signal(object)  # Thumbnail, emitted from a pool thread

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        side: int = THUMB_SIDE,
        threads: int | None = None,
        memory_items: int = 600,
        max_cache_bytes: int = MAX_CACHE_BYTES,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.side = side
        self._memory: OrderedDict[ThumbnailKey, QImage] = OrderedDict()
        self._memory_items = memory_items
        self._lock = threading.Lock()
        self._pending: OrderedDict[ThumbnailKey, None] = OrderedDict()
        self._in_flight: set[ThumbnailKey] = set()
        self._drains = 0
        self._closed = False
        self._pool = QThreadPool(self)
        self._pool.setObjectName("thumbnails")
        self._pool.setMaxThreadCount(threads or max(1, min(4, QThread.idealThreadCount() - 1)))
        self._pool.setExpiryTimeout(2000)
        self._produced.connect(self._store, Qt.ConnectionType.QueuedConnection)
        self.pruned: tuple[int, int] | None = None  # (entries, bytes) deleted by the start-up prune, once it ran
        self._pool.start(_Prune(self, max_cache_bytes))

    def get(self, key: ThumbnailKey) -> QImage | None:
        """The thumbnail if it is in memory (a null QImage for an undecodable file); else queue it, None."""
        image = self._memory.get(key)
        if image is not None:
            self._memory.move_to_end(key)
            return image
        self.request(key)
        return None

    def request(self, key: ThumbnailKey) -> None:
        with self._lock:
            if self._closed or key in self._pending or key in self._in_flight:
                return
            self._pending[key] = None
            start = self._drains < self._pool.maxThreadCount()
            if start:
                self._drains += 1
        if start:
            self._pool.start(_Drain(self))

    def retain(self, keys: Iterable[ThumbnailKey]) -> int:
        """Drop queued requests whose keys are not in `keys` (items scrolled out of view). Returns how many."""
        wanted = set(keys)
        with self._lock:
            dropped = [key for key in self._pending if key not in wanted]
            for key in dropped:
                del self._pending[key]
        return len(dropped)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._in_flight)

    def clear_memory(self) -> None:
        self._memory.clear()

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            self._pending.clear()
        self._pool.clear()
        self._pool.waitForDone()

    # -- pool side -----------------------------------------------------------------------------------------

    def _next(self) -> ThumbnailKey | None:
        with self._lock:
            if self._closed or not self._pending:
                self._drains -= 1
                return None
            key, _ = self._pending.popitem(last=False)
            self._in_flight.add(key)
            return key

    def _produce(self, key: ThumbnailKey) -> None:
        try:
            image, cached = make_thumbnail(key, self.cache_dir, self.side)
        except Exception:  # one bad file must not end the drain
            image, cached = QImage(), False
        ident = threading.get_ident()
        produced = Thumbnail(key, image, cached, ident, ident == threading.main_thread().ident)
        with self._lock:
            self._in_flight.discard(key)
            closed = self._closed
        if not closed:
            self._produced.emit(produced)

    def _store(self, thumbnail: Thumbnail) -> None:
        self._memory[thumbnail.key] = thumbnail.image
        self._memory.move_to_end(thumbnail.key)
        while len(self._memory) > self._memory_items:
            self._memory.popitem(last=False)
        self.thumbnail_ready.emit(thumbnail)


class _Drain(QRunnable):
    def __init__(self, loader: ThumbnailLoader):
        super().__init__()
        self._loader = loader

    def run(self) -> None:
        while (key := self._loader._next()) is not None:
            self._loader._produce(key)


class _Prune(QRunnable):
    def __init__(self, loader: ThumbnailLoader, max_bytes: int):
        super().__init__()
        self.loader, self.max_bytes = loader, max_bytes

    def run(self) -> None:
        self.loader.pruned = prune_cache(self.loader.cache_dir, self.max_bytes)


def prune_cache(cache_dir: Path, max_bytes: int, *, now: float | None = None) -> tuple[int, int]:
    """Keep the thumbnail cache under `max_bytes`: when it is larger, delete the entries used longest ago (oldest
    mtime) until it holds at most `PRUNE_TO` of the limit; also delete half-written entries left by a crash.
    Returns (entries deleted, bytes deleted). Files vanishing meanwhile (another process pruning) are fine."""
    now = time.time() if now is None else now
    entries: list[tuple[float, int, Path]] = []
    removed = freed = 0
    with contextlib.suppress(OSError):
        for sub in cache_dir.iterdir():
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                with contextlib.suppress(OSError):
                    st = path.stat()
                    if path.suffix == ".tmp":
                        if now - st.st_mtime > STALE_TMP_SECONDS:
                            path.unlink()
                            removed, freed = removed + 1, freed + st.st_size
                        continue
                    entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    if total <= max_bytes:
        return removed, freed
    for _, size, path in sorted(entries):
        if total <= max_bytes * PRUNE_TO:
            break
        with contextlib.suppress(OSError):
            path.unlink()
            removed, freed = removed + 1, freed + size
        total -= size
    return removed, freed


def cache_path(key: ThumbnailKey, cache_dir: Path, side: int) -> Path:
    digest = hashlib.sha1(f"{key.path}\0{key.mtime_ns}\0{key.size}\0{side}".encode()).hexdigest()
    return cache_dir / digest[:2] / digest


def make_thumbnail(key: ThumbnailKey, cache_dir: Path, side: int) -> tuple[QImage, bool]:
    """(thumbnail, came from the disk cache). Reads the cache, else decodes the file and fills the cache.
    Runs in a pool thread; decoding a full image on the GUI thread is what this module exists to avoid."""
    base = cache_path(key, cache_dir, side)
    for suffix in (".jpg", ".png"):
        cached = base.with_suffix(suffix)
        if cached.exists():
            image = QImage(os.fspath(cached))
            if not image.isNull():
                with contextlib.suppress(OSError):
                    os.utime(cached)  # recently used: the prune keeps it
                return image, True
    reader = QImageReader(key.path)
    reader.setAutoTransform(True)
    full = reader.size()
    if full.isValid() and reader.format() in (b"jpeg", b"jpg") and max(full.width(), full.height()) > 2 * side:
        # JPEG decodes at a reduced scale for free; keep 2x for a smooth final downscale
        reader.setScaledSize(full.scaled(QSize(2 * side, 2 * side), Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    if image.isNull():
        return image, False
    if max(image.width(), image.height()) > side:
        image = image.scaled(side, side, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
    alpha = image.hasAlphaChannel()
    image = image.convertToFormat(QImage.Format.Format_ARGB32_Premultiplied if alpha else QImage.Format.Format_RGB32)
    target = base.with_suffix(".png" if alpha else ".jpg")
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        if image.save(os.fspath(tmp), "PNG" if alpha else "JPG", -1 if alpha else JPEG_QUALITY):
            os.replace(tmp, target)
        else:
            tmp.unlink(missing_ok=True)
    return image, False
