"""The thumbnail disk cache stays bounded: least recently used entries go first, a cache hit counts as a use."""

from __future__ import annotations

import os
import time

from PIL import Image

from cascade_studio.workers.thumbnails import (
    PRUNE_TO,
    STALE_TMP_SECONDS,
    ThumbnailKey,
    ThumbnailLoader,
    cache_path,
    make_thumbnail,
    prune_cache,
)


def _entries(cache, count, size=1000, start=1_000_000.0):
    paths = []
    for i in range(count):
        path = cache / f"{i:02x}" / f"entry{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, (start + i, start + i))  # entry i was used at time start + i
        paths.append(path)
    return paths


def test_prune_deletes_the_least_recently_used_down_to_the_target(tmp_path):
    paths = _entries(tmp_path, 10)
    stale = tmp_path / "00" / "half.jpg.123.tmp"
    stale.write_bytes(b"y" * 10)
    os.utime(stale, (0, 0))
    fresh_tmp = tmp_path / "00" / "writing.jpg.456.tmp"
    fresh_tmp.write_bytes(b"z")
    removed, freed = prune_cache(tmp_path, 5000, now=STALE_TMP_SECONDS * 10)
    kept = [p for p in paths if p.exists()]
    assert kept == paths[-int(5000 * PRUNE_TO / 1000) :]  # the four used last
    assert (removed, freed) == (7, 6 * 1000 + 10)
    assert not stale.exists() and fresh_tmp.exists()


def test_prune_leaves_a_cache_under_the_limit_alone(tmp_path):
    paths = _entries(tmp_path, 5)
    assert prune_cache(tmp_path, 5000) == (0, 0)
    assert all(p.exists() for p in paths)
    assert prune_cache(tmp_path / "missing", 10) == (0, 0)


def test_a_cache_hit_marks_the_entry_as_used(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (600, 400), (10, 20, 30)).save(image)
    st = image.stat()
    key = ThumbnailKey(os.fspath(image), st.st_mtime_ns, st.st_size)
    cache = tmp_path / "thumbs"
    _, from_cache = make_thumbnail(key, cache, 256)
    assert not from_cache
    entry = cache_path(key, cache, 256).with_suffix(".jpg")
    os.utime(entry, (1_000_000, 1_000_000))
    _, from_cache = make_thumbnail(key, cache, 256)
    assert from_cache and entry.stat().st_mtime > time.time() - 60


def test_a_loader_prunes_its_cache_when_it_starts(qtbot, tmp_path):
    paths = _entries(tmp_path, 20)
    loader = ThumbnailLoader(tmp_path, threads=1, max_cache_bytes=10_000)
    try:
        qtbot.waitUntil(lambda: loader.pruned is not None, timeout=5_000)
    finally:
        loader.shutdown()
    assert loader.pruned == (12, 12_000)
    assert [p for p in paths if p.exists()] == paths[12:]
