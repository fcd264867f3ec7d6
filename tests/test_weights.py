"""The weight-file registry, finding files, and downloading them (against a local fake Hub)."""

from __future__ import annotations

import logging
import shutil
import time
import types
from pathlib import Path

import huggingface_hub.constants
import huggingface_hub.utils._http
import pytest

from cascade_studio.cli import main
from cascade_studio.pipeline import weights
from cascade_studio.pipeline.checkpoints import identify, read_header
from cascade_studio.pipeline.models import candidates
from cascade_studio.pipeline.weights import IMAGE_ENCODER_FILE, OPEN_CLIP_TEXT_ENCODER_FILE, TEXT_ENCODER_FILE
from tests.support.fake_hub import FakeHub, demo_file_for, hub_from_demo

TOKEN = "hf_SeCrEtToKeN0123456789"
LITE = [
    "stage_c_lite_bf16.safetensors",
    "stage_b_lite_bf16.safetensors",
    "stage_a.safetensors",
    "previewer.safetensors",
    "effnet_encoder.safetensors",
    TEXT_ENCODER_FILE,
    IMAGE_ENCODER_FILE,
]


def _plenty(path):
    return shutil._ntuple_diskusage(10**15, 0, 10**15)


@pytest.fixture(autouse=True)
def isolated_hub_env(tmp_path, monkeypatch):
    """No real token, cache, endpoint or offline switch leaks in; the disk looks big; small HTTP chunks."""
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(shutil, "disk_usage", _plenty)
    # chunks smaller than the demo files, so that a cut transfer has written something to resume from
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DOWNLOAD_TIMEOUT", 10)


@pytest.fixture
def hub(demo_models):
    with hub_from_demo(demo_models) as server:
        yield server


def _only(name: str) -> list[weights.WeightFile]:
    return [weights.entry_named(name)]


def _leftovers(models: Path) -> list[str]:
    return sorted(str(p.relative_to(models)) for p in models.rglob("*") if p.is_file()) if models.exists() else []


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_covers_every_variant_with_official_names():
    assert [e.name for e in weights.files_for("lite")] == LITE
    full = {e.name for e in weights.files_for("full")}
    assert {"stage_c_bf16.safetensors", "stage_b_bf16.safetensors", TEXT_ENCODER_FILE} <= full
    assert {"stage_c.safetensors", "stage_b.safetensors"} <= {e.name for e in weights.files_for("full-fp32")}
    assert {"stage_c_lite.safetensors", "stage_b_lite.safetensors"} <= {e.name for e in weights.files_for("lite-fp32")}
    assert {e.name for e in weights.files_for("controlnets")} == {
        "controlnet/inpainting.safetensors",
        "controlnet/canny.safetensors",
        "controlnet/super_resolution.safetensors",
    }
    for variant in ("lite", "full"):  # the pipeline's preferred file of every role is in the registry
        names = {e.name for e in weights.files_for(variant)}
        assert {choices[0] for choices in candidates(variant).values()} <= names
    for entry in weights.REGISTRY:
        assert entry.name.endswith(".safetensors") and entry.filename.endswith(".safetensors")
        assert entry.size > 0 and (entry.variants or entry.name == OPEN_CLIP_TEXT_ENCODER_FILE)
    clip = weights.entry_named(IMAGE_ENCODER_FILE)
    assert (clip.repo, clip.filename) == ("timm/vit_large_patch14_clip_224.openai", "open_clip_model.safetensors")
    # the text encoder: Stability AI's bigG text tower alone (bf16, transformers format), not open_clip's 10 GB file
    text = weights.entry_named(TEXT_ENCODER_FILE)
    assert (text.repo, text.filename) == ("stabilityai/stable-cascade", "text_encoder/model.safetensors")
    assert (text.size, text.dtype, text.size_is_estimate) == (1_389_382_688, "BF16", False)
    assert text.variants == {"lite", "full", "lite-fp32", "full-fp32"}
    alternative = weights.entry_named(OPEN_CLIP_TEXT_ENCODER_FILE)
    assert alternative.network == "clip_text" and not alternative.variants  # found if present, never downloaded
    assert candidates("lite")["text_encoder"] == [TEXT_ENCODER_FILE, OPEN_CLIP_TEXT_ENCODER_FILE]
    totals = {v: weights.human_size(sum(e.size for e in weights.files_for(v))) for v in weights.VARIANTS}
    assert totals == {
        "lite": "6.7 GB",
        "full": "13.6 GB",
        "lite-fp32": "10.2 GB",
        "full-fp32": "23.9 GB",
        "controlnets": "1.2 GB",
    }
    with pytest.raises(ValueError, match="variant"):
        weights.files_for("huge")


# ---------------------------------------------------------------------------------------------
# downloading


def test_progress_events_reach_the_file_size_and_the_file_verifies(tmp_path, hub, demo_models):
    events: list[weights.DownloadProgress] = []
    results = weights.download(
        _only("stage_a.safetensors"), tmp_path / "models", endpoint=hub.url, progress=events.append
    )

    expected = (demo_models / "stage_a.safetensors").read_bytes()
    target = tmp_path / "models" / "stage_a.safetensors"
    assert [r.action for r in results] == ["downloaded"] and results[0].path == target
    assert target.read_bytes() == expected
    assert identify(target)[1].network == "stage_a"
    assert len(events) > 2 and {e.name for e in events} == {"stage_a.safetensors"}
    steps = [b.done - a.done for a, b in zip(events, events[1:])]
    assert all(step >= 0 for step in steps) and events[0].done + sum(steps) == len(expected)
    assert events[-1].done == events[-1].total == len(expected)
    assert _leftovers(tmp_path / "models") == ["stage_a.safetensors"]  # no staging folder left


def test_an_interrupted_transfer_resumes_with_a_range_request(tmp_path, hub, demo_models):
    name = "stage_c_lite_bf16.safetensors"
    hub.drop_once.add(name)
    weights.download(_only(name), tmp_path, endpoint=hub.url)

    gets = hub.gets(name)
    assert len(gets) == 2 and gets[0].range is None
    assert gets[1].range is not None and gets[1].range.startswith("bytes=") and gets[1].range != "bytes=0-"
    assert (tmp_path / name).read_bytes() == (demo_models / demo_file_for(name)).read_bytes()
    assert identify(tmp_path / name)[1].network == "stage_c"


def test_files_present_are_skipped_and_others_fetched(tmp_path, hub, demo_models):
    (tmp_path / "stage_a.safetensors").write_bytes((demo_models / "stage_a.safetensors").read_bytes())
    results = weights.download(weights.files_for("lite"), tmp_path, endpoint=hub.url)
    actions = {r.entry.name: r.action for r in results}
    assert actions.pop("stage_a.safetensors") == "present"
    assert set(actions.values()) == {"downloaded"}
    assert not hub.gets("stage_a.safetensors")
    assert read_header(tmp_path / TEXT_ENCODER_FILE).tensors and read_header(tmp_path / IMAGE_ENCODER_FILE).tensors


@pytest.mark.parametrize(("status", "gated"), [(401, False), (403, True)])
def test_refused_access_asks_for_the_licence_and_a_token_without_showing_it(
    tmp_path, hub, status, gated, caplog, capsys
):
    hub.deny, hub.gated = status, gated
    caplog.set_level(logging.DEBUG)
    with pytest.raises(weights.AccessDenied) as err:
        weights.download(_only("stage_c_lite_bf16.safetensors"), tmp_path, token=TOKEN, endpoint=hub.url)

    message = str(err.value)
    assert "https://huggingface.co/stabilityai/stable-cascade" in message
    assert "licence" in message and "token" in message and "--token" in message and "HF_TOKEN" in message
    assert f"HTTP {status}" in message and ("gated" in message) == gated
    assert hub.requests and hub.requests[0].authorization == f"Bearer {TOKEN}"  # the token was used ...
    captured = capsys.readouterr()
    for text in (message, repr(err.value), caplog.text, captured.out, captured.err):
        assert TOKEN not in text  # ... and never shown
    assert _leftovers(tmp_path) == []


def test_a_stopped_server_gives_the_offline_message(tmp_path, demo_models, monkeypatch):
    hub = FakeHub().start()
    url = hub.url
    hub.stop()
    # huggingface_hub retries a failed connection with back-off (about 20 s); skip the waiting
    monkeypatch.setattr(huggingface_hub.utils._http, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    started = time.monotonic()
    with pytest.raises(weights.Offline) as err:
        weights.download(_only("stage_a.safetensors"), tmp_path / "models", endpoint=url)
    assert time.monotonic() - started < 30
    message = str(err.value)
    assert "no network" in message and "copy the file by hand" in message
    assert str(tmp_path / "models" / "stage_a.safetensors") in message
    assert _leftovers(tmp_path / "models") == []


def test_offline_mode_gives_the_offline_message_without_a_request(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.Offline, match="offline mode.*copy the file by hand"):
        weights.download(weights.files_for("lite"), tmp_path, endpoint=hub.url)
    assert hub.requests == []


def test_not_enough_disk_space_is_reported_before_any_request(tmp_path, hub, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10**9, 10**9))
    with pytest.raises(weights.NotEnoughSpace) as err:
        weights.download(weights.files_for("lite"), tmp_path / "models", endpoint=hub.url)
    message = str(err.value)
    need = sum(e.size for e in weights.files_for("lite"))
    assert weights.human_size(need) in message and "1.0 GB free" in message and "--models-dir" in message
    assert hub.requests == []


def test_a_download_that_is_not_a_checkpoint_is_removed(tmp_path, hub):
    hub.garbage.add("previewer.safetensors")
    with pytest.raises(weights.VerificationFailed, match="previewer.safetensors is not usable and was removed"):
        weights.download(_only("previewer.safetensors"), tmp_path, endpoint=hub.url)
    assert hub.gets("previewer.safetensors")
    assert _leftovers(tmp_path) == []


def test_a_download_holding_the_wrong_network_is_removed(tmp_path, hub, demo_models):
    hub.add(weights.STABLE_CASCADE_REPO, "stage_a.safetensors", (demo_models / "previewer.safetensors").read_bytes())
    with pytest.raises(weights.VerificationFailed, match="holds a Previewer, not a Stage A"):
        weights.download(_only("stage_a.safetensors"), tmp_path, endpoint=hub.url)
    assert _leftovers(tmp_path) == []


def test_cancel_leaves_no_partial_file(tmp_path, hub):
    seen = []
    with pytest.raises(weights.DownloadCancelled):
        weights.download(
            _only("stage_c_lite_bf16.safetensors"),
            tmp_path,
            endpoint=hub.url,
            progress=seen.append,
            cancel=lambda: any(0 < e.done < e.total for e in seen),
        )
    assert any(0 < e.done < e.total for e in seen)  # it was stopped mid-file
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# finding files


def test_locate_finds_files_in_the_folder_and_in_the_hf_cache(tmp_path, hub, demo_models):
    from huggingface_hub import hf_hub_download

    models = tmp_path / "models"
    stage_a = weights.entry_named("stage_a.safetensors")
    image = weights.entry_named(IMAGE_ENCODER_FILE)
    assert weights.locate(stage_a, models) is None and weights.locate(image, models) is None

    models.mkdir()
    (models / "stage_a.safetensors").write_bytes((demo_models / "stage_a.safetensors").read_bytes())
    assert weights.locate(stage_a, models) == weights.Location(models / "stage_a.safetensors", weights.FOLDER)

    # another tool fetched the CLIP file into the Hugging Face cache (HF_HUB_CACHE)
    cached = hf_hub_download(image.repo, image.filename, endpoint=hub.url, cache_dir=str(weights.hf_cache_dir()))
    assert Path(cached).is_relative_to(tmp_path / "hf-cache")
    found = weights.locate(image, models)
    assert found is not None and found.where == weights.HF_CACHE and Path(found.path).samefile(cached)

    # download() takes it from the cache instead of fetching it again
    before = len(hub.gets())
    results = weights.download([stage_a, image], models, endpoint=hub.url)
    assert [r.action for r in results][0] == "present" and "Hugging Face cache" in results[1].action
    assert len(hub.gets()) == before
    assert (models / IMAGE_ENCODER_FILE).read_bytes() == (demo_models / IMAGE_ENCODER_FILE).read_bytes()
    assert weights.locate(image, models).where == weights.FOLDER


def test_the_text_encoder_verifies_in_either_layout(demo_models, tmp_path):
    from cascade_studio.pipeline.checkpoints import CheckpointError
    from cascade_studio.pipeline.conditioning import TextEncoder, save_clip
    from cascade_studio.pipeline.demo import DEMO_TEXT_CLIP

    entry = weights.entry_named(TEXT_ENCODER_FILE)
    weights.verify(entry, demo_models / TEXT_ENCODER_FILE)  # transformers layout (the released file's)
    tower = TextEncoder.from_file(demo_models / TEXT_ENCODER_FILE).tower
    open_clip_file = save_clip(tower.state_dict(), tmp_path / "bigG.safetensors", DEMO_TEXT_CLIP)
    weights.verify(entry, open_clip_file)
    weights.verify(weights.entry_named(OPEN_CLIP_TEXT_ENCODER_FILE), open_clip_file)
    with pytest.raises(CheckpointError, match="not a CLIP checkpoint with a text tower"):
        weights.verify(entry, demo_models / IMAGE_ENCODER_FILE)


def test_the_open_clip_text_encoder_is_used_when_the_default_is_absent(tmp_path, demo_models):
    """open_clip's full bigG file stands in for text_encoder/model.safetensors, in the folder or the HF cache."""
    import torch

    from cascade_studio.pipeline.conditioning import TextEncoder, save_clip
    from cascade_studio.pipeline.demo import DEMO_TEXT_CLIP
    from cascade_studio.pipeline.models import MissingWeights, ModelSet, find_files

    folder = tmp_path / "models"
    shutil.copytree(demo_models, folder)
    released = TextEncoder.from_file(folder / TEXT_ENCODER_FILE)
    (folder / TEXT_ENCODER_FILE).unlink()
    with pytest.raises(MissingWeights, match=TEXT_ENCODER_FILE):
        find_files(folder, "lite")

    alternative = save_clip(released.tower.state_dict(), folder / OPEN_CLIP_TEXT_ENCODER_FILE, DEMO_TEXT_CLIP)
    assert find_files(folder, "lite")["text_encoder"] == alternative
    encoder = ModelSet(folder).get("text_encoder")
    prompts = ["a photo of a cat", ""]
    assert all(torch.equal(a, b) for a, b in zip(encoder.encode(prompts), released.encode(prompts), strict=True))

    # as open_clip itself downloads it: laion/CLIP-ViT-bigG-14-laion2B-39B-b160k in the Hugging Face cache
    entry = weights.entry_named(OPEN_CLIP_TEXT_ENCODER_FILE)
    repo = weights.hf_cache_dir() / f"models--{entry.repo.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123" / entry.filename
    snapshot.parent.mkdir(parents=True)
    alternative.rename(snapshot)
    assert find_files(folder, "lite")["text_encoder"] == snapshot


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_download_end_to_end(tmp_path, hub, capsys):
    models = tmp_path / "models"
    assert main(["--models-dir", str(models), "download", "--endpoint", hub.url]) == 0
    captured = capsys.readouterr()
    for name in LITE:
        assert (models / name).is_file() and name in captured.out
    total = weights.human_size(sum(e.size for e in weights.files_for("lite")))
    assert f"To download: {total}" in captured.out and total.endswith(" GB")  # sizes before starting
    assert f"{TEXT_ENCODER_FILE}: 1.4 GB from stabilityai/stable-cascade" in captured.out
    assert "stage_c_lite_bf16.safetensors" in captured.err and "100%" in captured.err  # progress on stderr
    assert _leftovers(models) == sorted(LITE)

    # a second run finds everything and fetches nothing
    requests = len(hub.requests)
    assert main(["download", "--models-dir", str(models), "--endpoint", hub.url]) == 0
    assert "All files of 'lite' are present" in capsys.readouterr().out
    assert len(hub.requests) == requests

    assert main(["--models-dir", str(models), "info"]) == 0
    out = capsys.readouterr().out
    assert "lite: complete" in out and f"{TEXT_ENCODER_FILE}: present (weights folder)" in out
    assert "full: 2 of 7 files missing" in out and "stage_c_bf16.safetensors: missing (7.2 GB)" in out


def test_an_open_clip_text_encoder_in_the_folder_means_nothing_to_download(tmp_path, hub, demo_models, capsys):
    from cascade_studio.pipeline.conditioning import TextEncoder, save_clip
    from cascade_studio.pipeline.demo import DEMO_TEXT_CLIP

    models = tmp_path / "models"
    tower = TextEncoder.from_file(demo_models / TEXT_ENCODER_FILE).tower
    alternative = save_clip(tower.state_dict(), models / OPEN_CLIP_TEXT_ENCODER_FILE, DEMO_TEXT_CLIP)
    entry = weights.entry_named(TEXT_ENCODER_FILE)
    assert weights.locate(entry, models) == weights.Location(alternative, weights.SUBSTITUTE)
    assert weights.locate(entry, models, substitutes=False) is None

    assert main(["--models-dir", str(models), "download", "--endpoint", hub.url]) == 0
    assert f"{TEXT_ENCODER_FILE}: skipped, {alternative} is used instead" in capsys.readouterr().out
    assert not (models / TEXT_ENCODER_FILE).exists()
    assert not hub.gets(TEXT_ENCODER_FILE)
    assert main(["--models-dir", str(models), "info"]) == 0
    assert "lite: complete" in capsys.readouterr().out


def test_cli_download_uses_hf_endpoint_and_reports_errors(tmp_path, hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    assert main(["--models-dir", str(tmp_path), "download", "--variant", "controlnets"]) == 0
    assert sorted(p.name for p in (tmp_path / "controlnet").iterdir()) == [
        "canny.safetensors",
        "inpainting.safetensors",
        "super_resolution.safetensors",
    ]
    capsys.readouterr()

    hub.deny, hub.gated = 401, True
    assert main(["--models-dir", str(tmp_path / "other"), "download", "--token", TOKEN]) == 1
    captured = capsys.readouterr()
    assert "huggingface.co/stabilityai/stable-cascade" in captured.err and "licence" in captured.err
    assert TOKEN not in captured.out + captured.err
