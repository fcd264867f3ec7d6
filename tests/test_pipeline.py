"""The generation pipeline end to end on the demo model set (real loader, real networks)."""

import numpy as np
import pytest
import torch

from cascade_studio.core.request import GenerationRequest, StageSettings
from cascade_studio.networks import StageC
from cascade_studio.pipeline.generate import Cancelled, Pipeline
from cascade_studio.pipeline.models import MissingWeights, ModelSet, find_files

FAST = {"stage_c": StageSettings(3, 4.0, 2.0), "stage_b": StageSettings(2, 1.1, 1.0), "width": 256, "height": 384}


@pytest.fixture(scope="module")
def pipeline(demo_models):
    return Pipeline(ModelSet(demo_models))


def request(**changes):
    return GenerationRequest("a lighthouse at dusk", **{"seed": 11, **FAST, **changes})


def source_image():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 200, 300, generator=g)


def test_text_to_image_reports_every_step_with_previews(pipeline):
    events = []
    images = pipeline.run(request(batch_size=2), on_progress=events.append)
    assert [(e.stage, e.step, e.total) for e in events] == [
        ("c", 1, 3), ("c", 2, 3), ("c", 3, 3), ("b", 1, 2), ("b", 2, 2), ("a", 1, 1),
    ]  # fmt: skip
    # Stage C latent for 384x256 is 9x6; the Previewer upsamples by 8.
    for e in events[:3]:
        assert e.preview.shape == (72, 48, 3) and e.preview.dtype == np.uint8
    assert all(e.preview is None for e in events[3:])
    assert len(images) == 2
    assert images[0].pixels.shape == (384, 256, 3) and images[0].pixels.dtype == np.uint8
    assert [im.request.seed for im in images] == [11, 12]
    assert all(im.request.batch_size == 1 for im in images)
    assert not np.array_equal(images[0].pixels, images[1].pixels)


def test_every_network_runs_in_inference_mode(pipeline):
    seen = []
    for role in ("stage_c", "stage_b", "stage_a"):
        network = pipeline.models.get(role)
        network.register_forward_pre_hook(
            lambda m, args, role=role: seen.append((role, torch.is_inference_mode_enabled()))
        )
    stage_a = pipeline.models.get("stage_a")
    decode = stage_a.decode
    stage_a.decode = lambda *a, **k: seen.append(("stage_a", torch.is_inference_mode_enabled())) or decode(*a, **k)
    pipeline.run(request())
    assert {role for role, _ in seen} == {"stage_c", "stage_b", "stage_a"}
    assert all(inference for _, inference in seen)


def test_same_seed_gives_identical_pixels(pipeline):
    a = pipeline.run(request())[0].pixels
    b = pipeline.run(request())[0].pixels
    assert np.array_equal(a, b)
    assert not np.array_equal(a, pipeline.run(request(seed=12))[0].pixels)


def test_an_image_of_a_batch_is_reproduced_by_its_own_request(pipeline):
    """Each image draws only on its own seed. Matrix products on the CPU round differently for
    another batch size (~1e-6), so a pixel may move by one level; nothing more."""
    second = pipeline.run(request(batch_size=2))[1]
    alone = pipeline.run(second.request)[0]
    assert np.abs(second.pixels.astype(int) - alone.pixels).max() <= 1


def test_cancel_stops_within_one_step(pipeline):
    events = []

    def on_progress(event):
        events.append(event)

    with pytest.raises(Cancelled):
        pipeline.run(request(), on_progress=on_progress, should_cancel=lambda: len(events) >= 2)
    assert [(e.stage, e.step) for e in events] == [("c", 1), ("c", 2)]


def test_guidance_off_skips_the_unconditional_branch(pipeline):
    batches = []
    hook = pipeline.models.get("stage_c").register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        pipeline.run(request(stage_c=StageSettings(2, 1.0, 2.0)))
        pipeline.run(request(stage_c=StageSettings(2, 4.0, 2.0)))
    finally:
        hook.remove()
    assert batches == [1, 1, 2, 2]


def test_image_to_image_starts_from_the_source(pipeline):
    events = []
    req = request(mode="img2img", source_image="src.png", strength=0.5, stage_c=StageSettings(4, 4.0, 2.0))
    image = pipeline.run(req, on_progress=events.append, source_image=source_image())[0]
    assert [e.total for e in events if e.stage == "c"] == [2, 2]  # int(4 * 0.5) steps
    other = pipeline.run(req.with_(strength=0.75), source_image=source_image())[0]
    assert not np.array_equal(image.pixels, other.pixels)


def test_image_variation_uses_the_image_embedding(pipeline):
    seen = []
    hook = pipeline.models.get("stage_c").register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["clip_img"]), with_kwargs=True
    )
    try:
        req = request(mode="variation", source_image="src.png")
        pipeline.run(req, source_image=source_image())
    finally:
        hook.remove()
    clip_img = seen[0]
    assert clip_img.shape == (2, 1, 768)
    assert clip_img[0].abs().sum() > 0 and torch.all(clip_img[1] == 0)  # conditional image, zero unconditional


def test_modes_that_need_an_image_refuse_to_run_without_one(pipeline):
    with pytest.raises(ValueError, match="source image"):
        pipeline.run(request(mode="img2img", source_image="src.png"))


def test_missing_weights_are_listed_with_what_to_do(tmp_path, demo_models):
    (tmp_path / "stage_a.safetensors").write_bytes((demo_models / "stage_a.safetensors").read_bytes())
    with pytest.raises(MissingWeights) as err:
        find_files(tmp_path, "lite")
    message = str(err.value)
    assert "stage_c_lite_bf16.safetensors" in message and "stage_b_lite_bf16.safetensors" in message
    assert "stage_a.safetensors" not in message
    assert "huggingface.co/stabilityai/stable-cascade" in message and "--demo" in message


def test_bf16_models_run(demo_models):
    models = ModelSet(demo_models, dtype=torch.bfloat16)
    stage_a = models.get("stage_a")
    decoded = []
    decode = stage_a.decode
    stage_a.decode = lambda z, **kw: decoded.append(z.dtype) or decode(z, **kw)
    images = Pipeline(models).run(request(stage_c=StageSettings(2, 4.0, 2.0)))
    assert images[0].pixels.shape == (384, 256, 3)
    assert decoded == [torch.bfloat16]  # Stage A decodes in the pipeline's precision on the CPU too
    stage_c = ModelSet(demo_models, dtype=torch.bfloat16).get("stage_c")
    assert isinstance(stage_c, StageC) and next(stage_c.parameters()).dtype == torch.bfloat16


def test_sequential_memory_holds_one_stage_at_a_time(demo_models, pipeline):
    models = ModelSet(demo_models, memory="sequential")
    held = []
    events = []

    def on_progress(event):
        events.append(event)
        held.append((event.stage, sorted(models.loaded())))

    images = Pipeline(models).run(request(), on_progress=on_progress)
    assert held[0] == ("c", ["previewer", "stage_c"])  # the text encoder is gone once prompts are encoded
    assert held[3] == ("b", ["stage_b"])
    assert held[-1] == ("a", [])  # reported after Stage A has been released
    assert models.loaded() == {}
    # Same numbers as with everything resident.
    assert np.array_equal(images[0].pixels, pipeline.run(request())[0].pixels)


def test_files_already_in_the_hugging_face_cache_are_used(tmp_path, monkeypatch, demo_models):
    """A file another tool downloaded into the HF cache needs no second copy in the weights folder."""
    import shutil

    from cascade_studio.pipeline.weights import entry_named

    folder = tmp_path / "models"
    shutil.copytree(demo_models, folder)
    stage_c = folder / "stage_c_lite.safetensors"
    entry = entry_named("stage_c_lite.safetensors")
    repo = tmp_path / "hf" / f"models--{entry.repo.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123" / entry.filename
    snapshot.parent.mkdir(parents=True)
    stage_c.rename(snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))

    assert find_files(folder, "lite")["stage_c"] == snapshot
    assert Pipeline(ModelSet(folder)).run(request(stage_c=StageSettings(1, 4.0, 2.0)))[0].pixels.shape == (384, 256, 3)


def test_the_previewer_runs_only_when_someone_listens(demo_models):
    quiet = ModelSet(demo_models)
    Pipeline(quiet).run(request())
    assert "previewer" not in quiet.loaded()
    events = []
    Pipeline(quiet, preview_every=0).run(request(), on_progress=events.append)
    assert "previewer" not in quiet.loaded() and all(e.preview is None for e in events)


def test_compiled_networks_match_the_eager_pipeline(demo_models):
    # torch.compile (the optional fused path) compiles Stage C and Stage B once per size and gives the eager
    # images up to the rounding of fused kernels (random demo weights amplify it to a few levels).
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # compiled code is shared by networks of one shape: start from none
    models = ModelSet(demo_models)
    req = request(stage_c=StageSettings(2, 4.0, 2.0), stage_b=StageSettings(2, 1.1, 1.0), width=256, height=256)
    eager = Pipeline(models).run(req)[0].pixels
    compiled = Pipeline(models, compile=True)
    graphs_before = counters["stats"]["unique_graphs"]
    first_events, second_events = [], []
    first = compiled.run(req, on_progress=first_events.append)[0].pixels
    assert counters["stats"]["unique_graphs"] - graphs_before == 2  # Stage C and Stage B
    second = compiled.run(req, on_progress=second_events.append)[0].pixels
    assert counters["stats"]["unique_graphs"] - graphs_before == 2  # same size: nothing recompiled
    # the first run says, before each stage's first step, that it compiles; the second has nothing to say
    notes = [(e.stage, e.step) for e in first_events if e.note]
    assert notes == [("c", 0), ("b", 0)] and "compiling" in first_events[0].note
    assert [(e.stage, e.step) for e in first_events if not e.note] == [(e.stage, e.step) for e in second_events]
    assert not any(e.note for e in second_events)
    assert np.array_equal(first, second)
    assert np.abs(first.astype(int) - eager).max() <= 8
    assert np.abs(first.astype(int) - eager).mean() < 0.5


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_previews_match_the_loaded_previewer(demo_models, monkeypatch, native_bf16):
    """On the CPU previews run on a channels-last copy, in bf16 where the CPU has native bf16: the same picture as
    the loaded float32 Previewer to a level or two, and the loaded network is left as it was."""
    from cascade_studio.pipeline import generate

    monkeypatch.setattr(generate, "cpu_has_native_bf16", lambda: native_bf16)
    pipe = Pipeline(ModelSet(demo_models))
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 16, 9, 6, generator=g)
    with torch.inference_mode(), pipe.models.using("previewer") as (previewer,):
        want = generate.to_uint8(previewer(x0))[0]
        got = pipe._preview(previewer, x0)
        again = pipe._preview(previewer, x0)
        fast = pipe._cpu_previewer[1]
        assert all(p.dtype == torch.float32 for p in previewer.parameters())
    assert np.mean((want > 0) & (want < 255)) > 0.1  # not a saturated picture
    assert got.shape == want.shape == (72, 48, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= (2 if native_bf16 else 1)
    assert np.array_equal(got, again)
    assert next(fast.parameters()).dtype == (torch.bfloat16 if native_bf16 else torch.float32)
