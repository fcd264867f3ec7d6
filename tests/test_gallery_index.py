"""The gallery index: saving, foreign metadata, culling that survives anything, incremental scans."""

import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
from PIL import Image

from cascade_studio.core import gallery as gallery_module
from cascade_studio.core.gallery import GalleryFilter, GalleryIndex, entry_request, export_files, recall_caveat
from cascade_studio.core.metadata import read_metadata
from cascade_studio.core.request import GenerationRequest, StageSettings
from tests.conftest import SHARED

FIXTURES = SHARED / "fixtures" / "foreign-metadata"


def pixels(seed: int = 0, size: tuple[int, int] = (32, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def request(prompt: str = "a lighthouse at dusk", seed: int = 7, **kw) -> GenerationRequest:
    return GenerationRequest(prompt, seed=seed, **kw)


def plain_png(path, color=(10, 20, 30), size=(8, 8)):
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def index(tmp_path):
    idx = GalleryIndex(tmp_path / "out")
    yield idx
    idx.close()


def test_save_generated_writes_the_file_and_its_row_before_returning(index):
    req = request(negative_prompt="blurry", stage_c=StageSettings(12, 3.5, 2.0), seed=2**64 - 1)
    path = index.save_generated(pixels(), req, model_name="stable-cascade-lite", version="0.1.0")

    assert path.parent == index.folder and path.suffix == ".png" and path.name.endswith(f"_{2**64 - 1}.png")
    with Image.open(path) as im:
        assert im.size == (48, 32)
        assert np.array_equal(np.asarray(im.convert("RGB")), pixels())
    assert read_metadata(path).request == req
    # Another connection (another thread's index) already sees the committed row.
    with GalleryIndex(index.folder) as other:
        entry = other.entry(path)
    assert entry is not None
    assert (entry.prompt, entry.negative_prompt, entry.seed) == ("a lighthouse at dusk", "blurry", 2**64 - 1)
    assert (entry.width, entry.height, entry.model, entry.source) == (48, 32, "stable-cascade-lite", "cascade_studio")
    assert GenerationRequest.from_json(entry.request_json) == req
    assert (entry.rating, entry.flag) == (0, None)
    # no staging or temporary files are left behind
    assert sorted(p.name for p in index.folder.iterdir()) == sorted([path.name, ".cascade-studio"])
    assert not list(index.hidden.glob("saving-*"))


def test_save_generated_never_overwrites(index, monkeypatch):
    # Freeze the clock so every save wants the same `<timestamp>_<seed>.png` name.
    monkeypatch.setattr(gallery_module.time, "time", lambda: 1_700_000_000.0)
    paths = [index.save_generated(pixels(i), request(), model_name="m", version="v") for i in range(3)]
    assert len(set(paths)) == 3
    assert paths[1].name == paths[0].stem + "-1.png" and paths[2].name == paths[0].stem + "-2.png"
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), pixels(i, (32, 48)))
    assert len(index) == 3


def test_foreign_pngs_are_indexed_with_their_metadata(tmp_path):
    folder = tmp_path / "theirs"
    shutil.copytree(FIXTURES, folder, ignore=shutil.ignore_patterns("*.md"))
    plain_png(folder / "no_metadata.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.txt").write_text("not an image")
    with GalleryIndex(folder) as idx:
        summary = idx.scan()
        by_name = {e.name: e for e in idx.entries()}
    assert summary.added == 8
    assert set(by_name) == {p.name for p in FIXTURES.glob("*.png")} | {"no_metadata.png", "broken.png"}

    a1111 = by_name["a1111_parameters.png"]
    assert (a1111.source, a1111.prompt, a1111.negative_prompt) == ("a1111", "photo of a duck", "monochrome")
    assert (a1111.seed, a1111.model) == (235284042, "realistic_realisticVisionV20_v20")
    comfy = by_name["comfyui_img2img.png"]
    assert comfy.source == "comfyui" and comfy.seed == 280823642470253
    assert comfy.prompt == "photograph of victorian woman with wings, sky clouds, meadow grass"
    assert comfy.negative_prompt == "watermark, text" and comfy.model == "v1-5-pruned-emaonly.ckpt"
    cascade = by_name["comfyui_stable_cascade_text_to_image.png"]
    assert cascade.prompt.startswith("evening sunset scenery blue sky nature, glass bottle")
    assert (cascade.seed, cascade.width, cascade.height) == (314307448448003, 1024, 1024)
    invoke = by_name["invokeai_metadata.png"]
    assert invoke.source == "invokeai" and invoke.seed == 3293022630 and invoke.model == "juggernautXL"
    assert invoke.prompt == "digital artwork, oil painting. painterly brushstrokes, holidays,"
    assert by_name["no_metadata.png"].source == "none" and by_name["no_metadata.png"].width == 8
    assert by_name["broken.png"].source == "none"
    assert all(e.request_json is None for e in by_name.values())

    # Recall of another tool's image keeps what maps onto a request.
    recalled = entry_request(a1111)
    assert (recalled.prompt, recalled.negative_prompt, recalled.seed) == ("photo of a duck", "monochrome", 235284042)
    assert entry_request(by_name["no_metadata.png"]) is None


def test_culling_is_persisted_at_once_and_survives_reopening(index):
    a = index.save_generated(pixels(1), request(seed=1), model_name="m", version="v")
    b = index.save_generated(pixels(2), request(seed=2), model_name="m", version="v")
    index.set_rating(a, 4)
    index.set_flag(a, "pick")
    index.set_flag(b, "reject")
    with GalleryIndex(index.folder) as other:  # without closing the writer first
        assert (other.entry(a).rating, other.entry(a).flag) == (4, "pick")
        assert other.entry(b).flag == "reject"
    index.set_flag(b, None)
    index.close()
    with GalleryIndex(index.folder) as reopened:
        assert not reopened.rebuilt
        assert (reopened.entry(a).rating, reopened.entry(a).flag) == (4, "pick")
        assert (reopened.entry(b).rating, reopened.entry(b).flag) == (0, None)
    with pytest.raises(ValueError):
        index.set_rating(a, 6)


@pytest.mark.parametrize("damage", ["delete", "garbage", "truncate", "empty_tables"])
def test_culling_survives_a_deleted_or_corrupt_index(tmp_path, damage):
    folder = tmp_path / "out"
    shutil.copy(FIXTURES / "a1111_parameters.png", folder.mkdir() or folder / "duck.png")
    with GalleryIndex(folder) as idx:
        idx.scan()
        ours = idx.save_generated(pixels(), request(), model_name="m", version="v")
        idx.set_rating(ours, 5)
        idx.set_flag(ours, "pick")
        idx.set_rating(folder / "duck.png", 2)
        idx.set_flag(folder / "duck.png", "reject")
        idx.set_rating(folder / "duck.png", 3)
    db = folder / ".cascade-studio" / "index.sqlite"
    for side in ("-wal", "-shm"):
        db.with_name(db.name + side).unlink(missing_ok=True)
    if damage == "delete":
        db.unlink()
    elif damage == "garbage":
        db.write_bytes(b"this is not a database" * 500)
    elif damage == "truncate":
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    else:
        with sqlite3.connect(db) as con:
            con.execute("DROP TABLE entries")
            con.execute("DROP TABLE culling")
            con.execute("DROP TABLE meta")

    with GalleryIndex(folder) as rebuilt:
        assert rebuilt.rebuilt
        assert rebuilt.scan().added == 2
        entry = rebuilt.entry(ours)
        assert (entry.rating, entry.flag) == (5, "pick")
        assert GenerationRequest.from_json(entry.request_json) == request()
        duck = rebuilt.entry(folder / "duck.png")
        assert (duck.rating, duck.flag, duck.prompt) == (3, "reject", "photo of a duck")


def test_a_torn_journal_line_loses_nothing_else(index):
    a = index.save_generated(pixels(1), request(seed=1), model_name="m", version="v")
    b = index.save_generated(pixels(2), request(seed=2), model_name="m", version="v")
    index.set_rating(a, 3)
    index.close()
    with open(index.journal_path, "ab") as f:  # a crash mid-write leaves half a line
        f.write(b'{"n": "' + a.name.encode() + b'", "r": 1, "f"')
    with GalleryIndex(index.folder) as reopened:
        assert reopened.entry(a).rating == 3
        reopened.set_rating(b, 2)  # the next append must not be swallowed by the torn line
    index.index_path.unlink()
    for side in ("-wal", "-shm"):
        index.index_path.with_name(index.index_path.name + side).unlink(missing_ok=True)
    with GalleryIndex(index.folder) as rebuilt:
        rebuilt.scan()
        assert (rebuilt.entry(a).rating, rebuilt.entry(b).rating) == (3, 2)


def test_a_change_whose_database_commit_was_lost_is_replayed_from_the_journal(index):
    a = index.save_generated(pixels(1), request(seed=1), model_name="m", version="v")
    index.set_rating(a, 2)
    index.close()
    with open(index.journal_path, "a") as f:  # journal written, sqlite commit never happened
        f.write(f'{{"n": "{a.name}", "r": 4, "f": "pick"}}\n')
    with GalleryIndex(index.folder) as reopened:
        assert (reopened.entry(a).rating, reopened.entry(a).flag) == (4, "pick")


def test_a_long_journal_is_compacted_on_open(index, monkeypatch):
    a = index.save_generated(pixels(1), request(seed=1), model_name="m", version="v")
    b = index.save_generated(pixels(2), request(seed=2), model_name="m", version="v")
    for i in range(300):
        index.set_rating(a, i % 6)
    index.set_flag(b, "reject")
    index.close()
    size = index.journal_path.stat().st_size
    monkeypatch.setattr(gallery_module, "MAX_JOURNAL_BYTES", 1000)
    with GalleryIndex(index.folder) as reopened:
        assert (reopened.entry(a).rating, reopened.entry(b).flag) == (299 % 6, "reject")
    assert index.journal_path.stat().st_size < size / 20
    index.index_path.unlink()  # the compacted journal alone still holds everything
    for side in ("-wal", "-shm"):
        index.index_path.with_name(index.index_path.name + side).unlink(missing_ok=True)
    with GalleryIndex(index.folder) as rebuilt:
        rebuilt.scan()
        assert (rebuilt.entry(a).rating, rebuilt.entry(b).flag) == (299 % 6, "reject")


def test_incremental_scan_picks_up_added_removed_and_changed_files(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    for i in range(5):
        plain_png(folder / f"img{i}.png", (i, i, i))
    with GalleryIndex(folder) as idx:
        assert idx.scan().added == 5
        idx.set_rating(folder / "img1.png", 4)

    reads = []
    real = gallery_module.read_metadata
    monkeypatch.setattr(gallery_module, "read_metadata", lambda p, **kw: reads.append(p.name) or real(p, **kw))
    (folder / "img0.png").unlink()
    plain_png(folder / "new.png")
    shutil.copy(FIXTURES / "a1111_parameters.png", folder / "img1.png")  # replaced by another image
    os.utime(folder / "img1.png", ns=(1, 1))
    (folder / ".hidden.png").write_bytes(b"")
    with GalleryIndex(folder) as idx:
        summary = idx.scan()
        names = {e.name for e in idx.entries()}
        changed = idx.entry(folder / "img1.png")
    assert (summary.added, summary.removed, summary.changed, summary.unchanged) == (1, 1, 1, 3)
    assert sorted(reads) == ["img1.png", "new.png"]  # unchanged files are not read again
    assert names == {"img1.png", "img2.png", "img3.png", "img4.png", "new.png"}
    assert changed.prompt == "photo of a duck" and changed.rating == 4

    reads.clear()
    with GalleryIndex(folder) as idx:
        assert idx.scan().unchanged == 5
    assert reads == []


def test_query_filters_and_sorts(index):
    made = []
    for i, prompt in enumerate(["a red fox", "a blue whale", "a red panda", "a green frog"]):
        # Seeds no timestamp can contain (file names start with the time, and the text search reads names):
        # seed 102 made this test fail whenever a file was written at 10:2x or xx:10:2x.
        path = index.save_generated(pixels(i), request(prompt, seed=987650 + i), model_name="lite", version="v")
        os.utime(path, (1000 + i, 1000 + i))
        made.append(path)
    index.set_rating(made[0], 2)
    index.set_rating(made[2], 5)
    index.set_flag(made[2], "pick")
    index.set_flag(made[1], "reject")

    names = [p.name for p in made]
    assert [e.name for e in index.query("RED")] == [names[2], names[0]]
    assert [e.name for e in index.query("red fox")] == [names[0]]
    assert [e.name for e in index.query("987652")] == [names[2]]  # seed
    assert [e.name for e in index.query(flag="pick")] == [names[2]]
    assert [e.name for e in index.query(flag="unflagged", sort="oldest")] == [names[0], names[3]]
    assert [e.name for e in index.query(min_rating=2, sort="rating")] == [names[2], names[0]]
    assert index.query(sort="rating")[0].name == names[2]
    assert GalleryFilter(flag="reject").matches(index.entry(made[1]))
    with pytest.raises(ValueError):
        GalleryFilter(sort="size")


def test_remove_and_restore_entry_bring_back_rating_and_flag(index):
    path = index.save_generated(pixels(), request(), model_name="m", version="v")
    index.set_rating(path, 3)
    index.set_flag(path, "pick")
    moved = path.with_name("elsewhere.bin")
    path.rename(moved)
    forgotten = index.remove_entry(path)
    assert (forgotten.rating, forgotten.flag) == (3, "pick") and index.entry(path) is None
    moved.rename(path)
    restored = index.restore_entry(forgotten)
    assert (restored.rating, restored.flag, restored.prompt) == (3, "pick", "a lighthouse at dusk")


def test_export_copies_and_never_overwrites(index, tmp_path):
    a = index.save_generated(pixels(1), request(seed=1), model_name="m", version="v")
    b = index.save_generated(pixels(2), request(seed=2), model_name="m", version="v")
    dest = tmp_path / "export"
    first = export_files([a, b], dest)
    second = export_files([a], dest)
    assert [p.name for p in first] == [a.name, b.name]
    assert second[0].name == f"{a.stem}-1.png"
    assert all(p.read_bytes() == a.read_bytes() for p in (first[0], second[0]))
    assert read_metadata(second[0]).request == request(seed=1)


def test_device_and_precision_are_indexed_from_saving_and_from_the_file(index):
    path = index.save_generated(pixels(), request(), model_name="m", version="v", device="cpu", precision="bfloat16")
    plain = index.save_generated(pixels(1), request(seed=8), model_name="m", version="v")
    assert index.entry(path).made_with == "cpu · bfloat16"
    assert index.entry(plain).made_with is None
    index.close()
    (index.hidden / gallery_module.INDEX_NAME).unlink()  # rebuilt from the files alone
    with GalleryIndex(index.folder) as rebuilt:
        rebuilt.scan()
        assert rebuilt.entry(path).made_with == "cpu · bfloat16"
        assert rebuilt.entry(plain).made_with is None


def test_a_version_1_index_gains_made_with_keeps_culling_and_rereads_the_files(tmp_path):
    folder = tmp_path / "out"
    with GalleryIndex(folder) as idx:
        path = idx.save_generated(pixels(), request(), model_name="m", version="v", device="cuda", precision="float32")
        idx.set_rating(path, 3)
    # Turn the database back into what version 1 wrote: no made_with column.
    db = sqlite3.connect(folder / ".cascade-studio" / gallery_module.INDEX_NAME)
    db.execute("ALTER TABLE entries DROP COLUMN made_with")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with GalleryIndex(folder) as idx:
        assert not idx.rebuilt  # migrated, not set aside as damaged
        assert idx.entry(path).rating == 3 and idx.entry(path).made_with is None
        assert idx.scan().changed == 1
        assert idx.entry(path).made_with == "cuda · float32" and idx.entry(path).rating == 3
    with GalleryIndex(folder) as idx:
        assert idx.scan().unchanged == 1


def test_recall_caveat_names_a_precision_that_differs():
    assert recall_caveat("cpu · float32", "cpu · float32") == ""
    assert recall_caveat(None, "cpu · float32") == recall_caveat("cuda · bfloat16", None) == ""
    said = recall_caveat("cuda · bfloat16", "cpu · float32")
    assert "Made in bfloat16" in said and "runs float32" in said and "Preferences → Precision" in said
    assert "cannot run" in recall_caveat("cuda · float16", "cuda · bfloat16")
    # the same precision on another kind of device: no setting to change, but not bit for bit either
    assert recall_caveat("cuda · bfloat16", "cpu · bfloat16") == (
        " Made on cuda, this worker runs on cpu: expect small differences."
    )
    assert recall_caveat("float32", "cpu · float32") == ""  # an image that recorded only its precision


def test_subfolders_are_indexed_on_request_keyed_by_their_path_and_keep_ratings(tmp_path, monkeypatch):
    import cascade_studio.core.gallery as gallery

    folder = tmp_path / "outputs"
    (folder / "2024-05-01").mkdir(parents=True)
    (folder / "2024-05-01" / "deeper" / "still").mkdir(parents=True)
    (folder / ".thumbs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    top = plain_png(folder / "top.png")
    day = plain_png(folder / "2024-05-01" / "00012-42.png", color=(200, 0, 0))
    deep = plain_png(folder / "2024-05-01" / "deeper" / "d.png")
    too_deep = plain_png(folder / "2024-05-01" / "deeper" / "still" / "x.png")
    plain_png(folder / ".thumbs" / "hidden.png")
    plain_png(tmp_path / "elsewhere" / "linked.png")
    (folder / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # not followed
    monkeypatch.setattr(gallery, "MAX_DEPTH", 2)

    with GalleryIndex(folder) as index:
        index.scan()
        assert [e.name for e in index.entries()] == ["top.png"]
        summary = index.scan(subfolders=True)
        assert (summary.added, summary.unchanged) == (2, 1)
        names = sorted(e.name for e in index.entries())
        assert names == ["2024-05-01/00012-42.png", "2024-05-01/deeper/d.png", "top.png"]
        assert index.entry(too_deep) is None and index.entry(deep).path == deep
        index.set_rating(day, 4)
        index.set_flag(day, "pick")
        found = sorted(e.name for e in index.query("2024-05-01"))  # the search sees the folder in the key
        assert found == ["2024-05-01/00012-42.png", "2024-05-01/deeper/d.png"]
        index.scan()  # without subfolders: the nested rows go, their culling stays
        assert [e.name for e in index.entries()] == ["top.png"]
    with GalleryIndex(folder) as index:
        index.scan(subfolders=True)
        assert (index.entry(day).rating, index.entry(day).flag) == (4, "pick")
        assert index.entry(top).rating == 0
    index_db = folder / ".cascade-studio" / "index.sqlite"
    index_db.unlink()  # rebuilt from the journal, nested key included
    with GalleryIndex(folder) as index:
        assert index.rebuilt
        index.scan(subfolders=True)
        assert (index.entry(day).rating, index.entry(day).flag) == (4, "pick")
        # keys never leave the folder nor name hidden files
        for outside in (tmp_path / "elsewhere" / "linked.png", folder / ".thumbs" / "hidden.png", "../x.png"):
            assert index.entry(outside) is None
            with pytest.raises(ValueError, match="not in the gallery folder"):
                index.set_rating(outside, 3)


def test_journal_lines_naming_paths_outside_the_folder_are_ignored(index):
    path = plain_png(index.folder / "a.png")
    index.scan()
    index.set_rating(path, 2)
    with open(index.journal_path, "a", encoding="utf-8") as journal:
        for name in ("../escape.png", "/abs.png", "sub/../../x.png", ".cascade-studio/index.sqlite", "a\\b.png"):
            journal.write(json.dumps({"n": name, "r": 5, "f": None}) + "\n")
    index.close()
    index.index_path.unlink()
    with GalleryIndex(index.folder) as again:
        culled = {name for (name,) in again._db.execute("SELECT name FROM culling")}
        assert culled == {"a.png"}
