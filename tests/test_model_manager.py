"""The model manager dialog and its download thread, against the local fake Hugging Face Hub."""

from __future__ import annotations

import logging
import shutil
import types

import huggingface_hub.constants
import huggingface_hub.utils._http
import pytest

from cascade_studio.pipeline import weights
from cascade_studio.ui.model_manager import ModelManagerDialog
from cascade_studio.workers import downloads
from tests.support.fake_hub import FakeHub, hub_from_demo

TOKEN = "hf_DialogSeCrEt0123456789"


def _plenty(path):
    return shutil._ntuple_diskusage(10**15, 0, 10**15)


@pytest.fixture(autouse=True)
def isolated_hub_env(tmp_path, monkeypatch):
    """No real token, cache, endpoint or offline switch; a big disk; small chunks so progress is seen."""
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(shutil, "disk_usage", _plenty)
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DOWNLOAD_TIMEOUT", 10)
    monkeypatch.setattr(downloads, "PROGRESS_INTERVAL_S", 0.0)  # the tiny files finish within one interval


@pytest.fixture
def hub(demo_models):
    with hub_from_demo(demo_models) as server:
        yield server


def _dialog(qtbot, models, endpoint=None, **kwargs) -> ModelManagerDialog:
    dialog = ModelManagerDialog(models, endpoint=endpoint, **kwargs)
    qtbot.addWidget(dialog)
    if not dialog.states:
        qtbot.waitSignal(dialog.scan_finished, timeout=10000).wait()
    qtbot.waitUntil(lambda: not dialog._busy())
    dialog.show()
    return dialog


def _download(qtbot, dialog, variant, timeout=60000) -> str:
    with qtbot.waitSignal(dialog.download_finished, timeout=timeout) as finished:
        dialog.start_download(variant)
    qtbot.waitUntil(lambda: not dialog._busy(), timeout=10000)
    return finished.args[0]


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_lists_every_variant_with_sizes_and_where_each_file_is(qtbot, tmp_path, demo_models):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(demo_models / "stage_a.safetensors", models / "stage_a.safetensors")
    dialog = _dialog(qtbot, models)

    assert [dialog.tree.topLevelItem(i).text(0) for i in range(dialog.tree.topLevelItemCount())] == list(
        weights.VARIANTS
    )
    lite = weights.files_for("lite")
    assert dialog.variant_item("lite").childCount() == len(lite)
    assert dialog.variant_item("lite").text(1) == weights.human_size(sum(e.size for e in lite))
    item = dialog.file_item("lite", "stage_a.safetensors")
    assert item.text(2) == "in the weights folder" and item.toolTip(2) == str(models / "stage_a.safetensors")
    assert dialog.progress_bar("lite", "stage_a.safetensors").format() == "present"
    stage_c = dialog.file_item("full", "stage_c_bf16.safetensors")
    assert stage_c.text(2) == "missing" and stage_c.text(1) == weights.human_size(7.18e9)
    for entry in lite:  # sizes computed from a parameter count say so
        assert dialog.file_item("lite", entry.name).text(1).startswith("about ") == entry.size_is_estimate
    missing = sum(e.size for e in lite if e.name != "stage_a.safetensors")
    assert f"{len(lite) - 1} of {len(lite)} missing ({weights.human_size(missing)})" in dialog.variant_item(
        "lite"
    ).text(2)
    assert dialog.download_button.isEnabled() and weights.human_size(missing) in dialog.download_button.text()


def test_downloads_a_variant_with_per_file_progress(qtbot, tmp_path, hub):
    models = tmp_path / "models"
    dialog = _dialog(qtbot, models, endpoint=hub.url)
    values = []
    bar = dialog.progress_bar("lite", "stage_c_lite_bf16.safetensors")
    bar.valueChanged.connect(values.append)
    with qtbot.waitSignal(dialog.weights_changed, timeout=60000):
        assert _download(qtbot, dialog, "lite") == "done"
    qtbot.waitUntil(
        lambda: dialog.file_item("lite", "stage_c_lite_bf16.safetensors").text(2) == "in the weights folder"
    )
    assert _files(models) == sorted(e.name for e in weights.files_for("lite"))
    assert any(0 < v < bar.maximum() for v in values) and values[-1] == bar.maximum()  # it moved, then finished
    assert "complete" in dialog.variant_item("lite").text(2)
    assert not dialog.download_button.isEnabled()


def test_cancel_stops_the_download_and_leaves_no_partial_file(qtbot, tmp_path, hub):
    models = tmp_path / "models"
    dialog = _dialog(qtbot, models, endpoint=hub.url)
    bar = dialog.progress_bar("lite", "stage_c_lite_bf16.safetensors")
    bar.valueChanged.connect(lambda v: 0 < v < bar.maximum() and dialog.cancel_button.click())
    assert _download(qtbot, dialog, "lite") == downloads.CANCELLED
    assert "cancelled" in dialog.message.text().lower()
    assert _files(models) == []  # the first file was stopped half-way and removed; nothing else started
    assert dialog.download_button.isEnabled() and not dialog.cancel_button.isEnabled()


def test_a_refused_download_asks_for_a_token_which_is_then_used_and_never_shown(qtbot, tmp_path, hub, caplog):
    caplog.set_level(logging.DEBUG)
    hub.deny, hub.gated = 403, True
    models = tmp_path / "models"
    dialog = _dialog(qtbot, models, endpoint=hub.url)
    assert not dialog.token_box.isVisible()
    assert _download(qtbot, dialog, "lite") == downloads.ACCESS_DENIED
    assert dialog.token_box.isVisible() and "token" in dialog.message.text()
    assert "stabilityai/stable-cascade" in dialog.message.text()

    hub.deny = None
    dialog.token_edit.setText(TOKEN)
    assert _download(qtbot, dialog, "lite") == "done"
    assert {r.authorization for r in hub.gets()} == {f"Bearer {TOKEN}"}
    assert not dialog.token_box.isVisible()
    for text in (dialog.message.text(), caplog.text, repr(dialog._download)):
        assert TOKEN not in text


def test_a_bad_token_is_scrubbed_from_the_message(qtbot, tmp_path, hub):
    hub.deny = 401
    dialog = _dialog(qtbot, tmp_path / "models", endpoint=hub.url)
    dialog.token_edit.setText(TOKEN)
    assert _download(qtbot, dialog, "lite") == downloads.ACCESS_DENIED
    assert "check that it is valid" in dialog.message.text() and TOKEN not in dialog.message.text()


def test_no_connection_says_so_and_how_to_copy_the_files_by_hand(qtbot, tmp_path, monkeypatch):
    server = FakeHub().start()
    url = server.url
    server.stop()
    monkeypatch.setattr(huggingface_hub.utils._http, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    dialog = _dialog(qtbot, tmp_path / "models", endpoint=url)
    assert _download(qtbot, dialog, "controlnets") == downloads.OFFLINE
    text = dialog.message.text()
    assert "No connection to Hugging Face" in text and "copy the file by hand" in text


def test_not_enough_space_is_reported_before_downloading(qtbot, tmp_path, hub, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10**9, 10**9))
    dialog = _dialog(qtbot, tmp_path / "models", endpoint=hub.url)
    assert _download(qtbot, dialog, "full") == downloads.NO_SPACE
    assert "Not enough disk space" in dialog.message.text() and "1.0 GB free" in dialog.message.text()
    assert hub.requests == []


def test_a_corrupt_download_is_reported_and_removed(qtbot, tmp_path, hub):
    hub.garbage.add("controlnet/canny.safetensors")
    models = tmp_path / "models"
    dialog = _dialog(qtbot, models, endpoint=hub.url)
    assert _download(qtbot, dialog, "controlnets") == downloads.VERIFICATION
    assert "not usable and was removed" in dialog.message.text()
    assert "controlnet/canny.safetensors" not in _files(models)
    # the file finished before the failure is kept and shown as present
    qtbot.waitUntil(lambda: not dialog._busy())
    assert dialog.file_item("controlnets", "controlnet/inpainting.safetensors").text(2) == "in the weights folder"


def test_files_in_the_hugging_face_cache_are_shown_and_linked_in(qtbot, tmp_path, hub):
    from huggingface_hub import hf_hub_download

    entry = weights.entry_named("controlnet/canny.safetensors")
    hf_hub_download(entry.repo, entry.filename, endpoint=hub.url, cache_dir=str(weights.hf_cache_dir()))
    models = tmp_path / "models"
    dialog = _dialog(qtbot, models, endpoint=hub.url)
    assert dialog.file_item("controlnets", entry.name).text(2).startswith("in the Hugging Face cache")
    before = len(hub.gets())
    assert _download(qtbot, dialog, "controlnets") == "done"
    assert len(hub.gets()) == before + 2  # the other two files only
    assert (models / entry.name).is_file()


def test_closing_during_a_download_cancels_it_and_waits(qtbot, tmp_path, hub):
    models = tmp_path / "models"
    dialog = _dialog(qtbot, models, endpoint=hub.url)
    bar = dialog.progress_bar("lite", "stage_c_lite_bf16.safetensors")
    bar.valueChanged.connect(lambda v: 0 < v < bar.maximum() and dialog.isVisible() and dialog.reject())
    dialog.start_download("lite")
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=30000)
    assert not dialog.downloading and not dialog._download.isRunning()
    assert "stage_c_lite_bf16.safetensors" not in _files(models)
