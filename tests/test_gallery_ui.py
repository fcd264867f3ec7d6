"""The gallery panel: a big folder opens without GUI-thread thumbnails, keyboard culling, trash with undo,
compare, recall."""

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication

from cascade_studio.core.gallery import GalleryIndex
from cascade_studio.core.request import GenerationRequest
from cascade_studio.ui.compare import CompareDialog
from cascade_studio.ui.gallery import GalleryPanel, thumbnail_key
from cascade_studio.workers.thumbnails import ThumbnailKey, ThumbnailLoader, cache_path


@pytest.fixture
def private_dirs(tmp_path, monkeypatch):
    """A private trash and cache: QFile.moveToTrash uses $XDG_DATA_HOME/Trash on Linux."""
    monkeypatch.setenv("XDG_DATA_HOME", os.fspath(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", os.fspath(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    return tmp_path


@pytest.fixture
def panel(qtbot, private_dirs):
    widget = GalleryPanel(thumbnail_cache_dir=private_dirs / "thumbs")
    qtbot.addWidget(widget)
    widget.resize(900, 700)
    yield widget
    widget.shutdown()


WORDS = ["alpha", "bravo", "charlie", "delta", "echo"]


def save(folder, n, *, prompt="a quiet harbour", seed0=10):
    with GalleryIndex(folder) as index:
        rng = np.random.default_rng(seed0)
        return [
            index.save_generated(
                rng.integers(0, 256, (40, 56, 3), dtype=np.uint8),
                GenerationRequest(f"{prompt} {WORDS[i]}", seed=seed0 + i, negative_prompt="fog"),
                model_name="lite",
                version="0.1.0",
            )
            for i in range(n)
        ]


def open_folder(qtbot, panel, folder, rows):
    panel.set_folder(folder)
    panel.show()
    qtbot.waitUntil(lambda: panel.model.rowCount() == rows and not panel.model.loading, timeout=15_000)


def test_a_2000_image_folder_opens_and_no_thumbnail_is_made_on_the_gui_thread(qtbot, panel, tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(2000):
        Image.new("RGB", (24, 16), (i % 256, (7 * i) % 256, (13 * i) % 256)).save(folder / f"img_{i:05d}.png")
    produced = []
    panel.thumbnails.thumbnail_ready.connect(produced.append)

    panel.set_folder(folder)
    panel.show()
    qtbot.waitUntil(lambda: panel.model.rowCount() > 0, timeout=10_000)  # rows appear while the scan runs
    qtbot.waitUntil(lambda: panel.model.rowCount() == 2000 and not panel.model.loading, timeout=15_000)
    assert panel.count_label.text() == "2000 images"
    visible = panel.visible_entries()
    assert 10 <= len(visible) < 2000
    assert panel.view.indexAt(QPoint(20, 20)).isValid()
    wanted = {thumbnail_key(e) for e in visible}
    qtbot.waitUntil(lambda: wanted <= {t.key for t in produced}, timeout=10_000)

    main = threading.main_thread().ident
    assert produced and all(t.thread_id != main and not t.gui_thread for t in produced)
    assert all(not t.image.isNull() and t.image.size().width() == 24 for t in produced)
    # only what was on screen was made, and it is in the disk cache for next time
    assert len(produced) < 500
    assert all(
        cache_path(k, panel.thumbnails.cache_dir, panel.thumbnails.side).with_suffix(".jpg").exists() for k in wanted
    )

    # scrolled far away: the old requests are dropped, the new visible ones made
    panel.thumbnails.clear_memory()
    last = panel.model.entry(1999)

    def at_bottom():  # the grid lays out in batches: the bottom may still move while it does
        panel.view.scrollToBottom()
        return panel.visible_entries()[-1] == last

    qtbot.waitUntil(at_bottom, timeout=5_000)
    assert not {thumbnail_key(e) for e in panel.visible_entries()} & wanted
    panel.retain_visible()
    bottom = {thumbnail_key(e) for e in panel.visible_entries()}
    qtbot.waitUntil(lambda: bottom <= {t.key for t in produced}, timeout=10_000)
    assert all(not t.gui_thread for t in produced)


def test_thumbnail_requests_scrolled_away_are_dropped(qtbot, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    keys = []
    for i in range(200):
        path = folder / f"{i}.png"
        Image.new("RGB", (300, 200), (i, 0, 0)).save(path)
        st = path.stat()
        keys.append(ThumbnailKey(os.fspath(path), st.st_mtime_ns, st.st_size))
    loader = ThumbnailLoader(tmp_path / "thumbs", threads=1)
    produced = []
    loader.thumbnail_ready.connect(produced.append)
    try:
        for key in keys:
            assert loader.get(key) is None
        dropped = loader.retain(keys[:3])
        assert dropped > 150  # one worker cannot have got far
        qtbot.waitUntil(lambda: loader.pending() == 0, timeout=10_000)
        qtbot.waitUntil(lambda: set(keys[:3]) <= {t.key for t in produced}, timeout=5_000)
        assert len(produced) < 50
        image = loader.get(keys[0])
        assert image is not None and image.width() == 256 and image.height() in (170, 171)
    finally:
        loader.shutdown()
    # a second loader finds them in the disk cache
    again = ThumbnailLoader(tmp_path / "thumbs", threads=1)
    cached = []
    again.thumbnail_ready.connect(cached.append)
    try:
        again.request(keys[0])
        qtbot.waitUntil(lambda: bool(cached), timeout=5_000)
        assert cached[0].from_disk_cache and not cached[0].gui_thread
    finally:
        again.shutdown()


def test_keyboard_culling_changes_the_index(qtbot, panel, tmp_path):
    folder = tmp_path / "out"
    paths = save(folder, 3)
    open_folder(qtbot, panel, folder, 3)
    view = panel.view
    view.setFocus()
    view.setCurrentIndex(panel.model.index(0, 0))
    first = Path(panel.current_path())
    assert first == paths[-1]  # newest first

    def stored(path):
        with GalleryIndex(folder) as index:
            entry = index.entry(path)
        return entry.rating, entry.flag

    qtbot.keyClick(view, Qt.Key.Key_P)
    assert stored(first) == (0, "pick")
    qtbot.keyClick(view, Qt.Key.Key_3)
    assert stored(first) == (3, "pick")
    qtbot.keyClick(view, Qt.Key.Key_X)
    assert stored(first) == (3, "reject")
    qtbot.keyClick(view, Qt.Key.Key_U)
    qtbot.keyClick(view, Qt.Key.Key_5, Qt.KeyboardModifier.KeypadModifier)
    assert stored(first) == (5, None)
    qtbot.keyClick(view, Qt.Key.Key_0)
    assert stored(first) == (0, None)
    assert "☆☆☆☆☆" in panel.metadata.toPlainText()

    qtbot.keyClick(view, Qt.Key.Key_Right)
    second = Path(panel.current_path())
    assert second == paths[-2]
    qtbot.keyClick(view, Qt.Key.Key_1)
    qtbot.keyClick(view, Qt.Key.Key_P)
    assert stored(second) == (1, "pick") and stored(first) == (0, None)
    assert panel.model.entry(1).rating == 1  # the row shows it too

    # filters: only picks, then minimum stars, then text
    panel.flag_filter.setCurrentIndex(panel.flag_filter.findData("pick"))
    assert [e.path for e in panel.model.entries()] == [second]
    panel.flag_filter.setCurrentIndex(0)
    panel.stars_filter.setCurrentIndex(panel.stars_filter.findData(1))
    assert panel.model.rowCount() == 1
    panel.stars_filter.setCurrentIndex(0)
    panel.search.setText("harbour ALPHA")
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1)
    assert panel.model.entry(0).path == paths[0]
    # culling keys typed into the search box are text, not culling
    panel.search.setFocus()
    qtbot.keyClick(panel.search, Qt.Key.Key_P)
    assert stored(paths[0]) == (0, None)


def test_delete_moves_to_the_trash_and_undo_restores_file_and_rating(qtbot, panel, private_dirs):
    folder = private_dirs / "out"
    paths = save(folder, 2)
    open_folder(qtbot, panel, folder, 2)
    target = paths[-1]
    original = target.read_bytes()
    panel.select_paths([target])
    panel.view.setFocus()
    qtbot.keyClick(panel.view, Qt.Key.Key_4)
    qtbot.keyClick(panel.view, Qt.Key.Key_P)

    qtbot.keyClick(panel.view, Qt.Key.Key_Delete)
    trash = private_dirs / "data" / "Trash"
    assert not target.exists()
    assert (trash / "files" / target.name).read_bytes() == original
    assert (trash / "info" / f"{target.name}.trashinfo").exists()
    assert panel.model.rowCount() == 1 and panel.model.row_of(target) == -1
    assert panel.undo_bar.isVisible() and "Moved 1 image" in panel.undo_label.text()
    with GalleryIndex(folder) as index:
        assert index.entry(target) is None

    qtbot.keyClick(panel.view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert target.read_bytes() == original
    assert not (trash / "files" / target.name).exists()
    assert not (trash / "info" / f"{target.name}.trashinfo").exists()
    assert panel.model.rowCount() == 2 and not panel.undo_bar.isVisible()
    assert panel.current_path() == os.fspath(target)
    with GalleryIndex(folder) as index:
        entry = index.entry(target)
    assert (entry.rating, entry.flag) == (4, "pick")

    # the notification's button does the same
    panel.delete_selected()
    assert not target.exists()
    panel.undo_button.click()
    assert target.exists() and panel.model.entry_for(target).rating == 4


def test_compare_opens_with_two_selected(qtbot, panel, tmp_path):
    folder = tmp_path / "out"
    paths = save(folder, 3)
    open_folder(qtbot, panel, folder, 3)
    panel.select_paths(paths[:2])
    assert panel.compare_action.isEnabled()
    panel.view.setFocus()
    qtbot.keyClick(panel.view, Qt.Key.Key_C)
    dialog = panel.compare_dialog
    assert isinstance(dialog, CompareDialog) and dialog.isVisible()
    qtbot.waitUntil(lambda: not any(im.isNull() for im in dialog.images), timeout=5_000)  # decoded off the GUI thread
    assert {p.name for p in dialog.paths} == {p.name for p in paths[:2]}
    assert all(isinstance(im, QImage) and (im.width(), im.height()) == (56, 40) for im in dialog.images)

    view = dialog.view
    qtbot.waitExposed(dialog)
    rect = view.image_rect()
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, pos=QPoint(int(rect.x() + rect.width() * 0.25), 50))
    assert view.divider == pytest.approx(0.25, abs=0.02)
    dialog.side_button.click()
    assert view.mode == "side_by_side"
    qtbot.keyClick(dialog, Qt.Key.Key_S)
    assert view.mode == "slider" and dialog.slider_button.isChecked()
    dialog.close()

    panel.select_paths(paths[:1])
    assert not panel.compare_action.isEnabled()
    assert panel.compare_selected() is None


def test_recall_emits_the_request_saved_in_the_png(qtbot, panel, tmp_path):
    folder = tmp_path / "out"
    wanted = GenerationRequest("a red kite over dunes", seed=424242, negative_prompt="text", width=768, height=1280)
    with GalleryIndex(folder) as index:
        path = index.save_generated(
            np.zeros((20, 12, 3), np.uint8),
            wanted,
            model_name="full",
            version="0.1.0",
            device="cpu",
            precision="float32",
        )
    open_folder(qtbot, panel, folder, 1)
    panel.select_paths([path])
    assert "a red kite over dunes" in panel.metadata.toPlainText()
    assert "Made with\ncpu · float32" in panel.metadata.toPlainText()
    with qtbot.waitSignal(panel.recall_requested, timeout=2_000) as recalled:
        panel.recall_action.trigger()
    assert recalled.args == [wanted, "cpu · float32"]  # with the precision it was made in, for the window to compare
    with qtbot.waitSignal(panel.send_to_canvas_requested, timeout=2_000) as canvas:
        qtbot.keyClick(panel.view, Qt.Key.Key_Return)
    assert canvas.args[0] == os.fspath(path)
    with qtbot.waitSignal(panel.use_as_source_requested, timeout=2_000) as source:
        panel.source_action.trigger()
    assert source.args[0] == os.fspath(path)


def test_add_path_shows_a_new_image_and_export_copies_the_selection(qtbot, panel, tmp_path):
    folder = tmp_path / "out"
    save(folder, 1)
    open_folder(qtbot, panel, folder, 1)
    assert panel.count_label.text() == "1 image"
    save(folder, 1, seed0=20)
    panel.set_folder(folder)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 2 and not panel.model.loading, timeout=15_000)
    assert panel.count_label.text() == "2 images"
    # the GPU worker writes and indexes on its own thread with its own index
    result = {}
    worker = threading.Thread(target=lambda: result.update(path=save(folder, 1, prompt="brand new", seed0=99)[0]))
    worker.start()
    worker.join()
    with qtbot.waitSignal(panel.current_changed, timeout=2_000, raising=False):
        panel.add_path(result["path"])
    assert panel.model.rowCount() == 3
    assert panel.model.entry(0).path == result["path"]  # newest first

    panel.select_paths([panel.model.entry(0).path, panel.model.entry(2).path])
    written = panel.export_selected_to(tmp_path / "exported")
    assert sorted(p.name for p in written) == sorted([panel.model.entry(0).path.name, panel.model.entry(2).path.name])
    assert "Exported 2 images" in panel.status_label.text()


def test_painting_the_gallery_keeps_its_references_to_none(qtbot, panel, tmp_path):
    """PySide6/shiboken6 6.12.0 on Python 3.11 drops a reference to None in every call of a method returning
    nothing (QPainter.setPen, save, drawImage...): each repaint of the grid costs hundreds, and a culling
    session soon aborts with "Fatal Python error: none_dealloc". 6.11.3 is fine, and from Python 3.12 None is
    immortal. This fails while such a build is installed."""
    folder = tmp_path / "out"
    save(folder, 5)
    open_folder(qtbot, panel, folder, 5)
    panel.select_paths([panel.model.entry(0).path])
    panel.model.set_rating([panel.model.entry(0).path], 3)
    viewport = panel.view.viewport()
    viewport.repaint()
    before = sys.getrefcount(None)
    for _ in range(20):
        viewport.repaint()
    lost = before - sys.getrefcount(None)
    assert lost < 50, f"painting the gallery 20 times lost {lost} references to None (a broken PySide6 build)"


def test_thumbnail_size_slider_changes_the_grid(qtbot, panel, tmp_path):
    folder = tmp_path / "out"
    save(folder, 2)
    open_folder(qtbot, panel, folder, 2)
    with qtbot.waitSignal(panel.thumbnail_size_changed) as changed:
        panel.size_slider.setValue(96)
    assert changed.args[0] == 96 and panel.thumbnail_size() == 96
    assert panel.view.gridSize().width() == 96 + 2 * 6 + 4
    assert QApplication.instance() is not None


def test_the_subfolders_box_shows_and_hides_nested_images(qtbot, panel, tmp_path):
    folder = tmp_path / "outputs"
    save(folder, 2)
    day = folder / "txt2img-images" / "2024-05-01"
    day.mkdir(parents=True)
    nested = save(day, 1, prompt="a dated harbour", seed0=50)[0]
    open_folder(qtbot, panel, folder, 2)
    with qtbot.waitSignal(panel.subfolders_changed, timeout=2_000) as changed:
        panel.subfolders_check.setChecked(True)
    assert changed.args == [True] and panel.model.subfolders
    qtbot.waitUntil(lambda: panel.model.rowCount() == 3 and not panel.model.loading, timeout=15_000)
    row = panel.model.row_of(nested)
    assert panel.model.data(panel.model.index(row, 0)) == "txt2img-images/2024-05-01/" + nested.name
    panel.select_paths([nested])
    panel.set_rating(3)
    panel.subfolders_check.setChecked(False)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 2 and not panel.model.loading, timeout=15_000)
    panel.set_folder(folder)  # reopened without subfolders: the nested row does not flash up first
    assert all("/" not in e.name for e in panel.model.entries())
    panel.set_subfolders(True)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 3 and not panel.model.loading, timeout=15_000)
    assert panel.subfolders_check.isChecked() and panel.model.entry_for(nested).rating == 3
