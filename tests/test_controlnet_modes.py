"""Inpaint, outpaint, canny and 2× super-resolution end to end on the demo model set (real loader, real networks),
the ControlNet features reaching the ResBlocks that spec §11 names, latent blending, the composite, the request
in PNG metadata and the command line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cascade_studio.cli import main
from cascade_studio.core import mask as masks
from cascade_studio.core.geometry import effnet_input_size, stage_c_latent_size
from cascade_studio.core.inpaint import InputError
from cascade_studio.core.metadata import png_text_chunks, read_metadata, save_png_atomic
from cascade_studio.core.request import GenerationRequest, StageSettings
from cascade_studio.networks import StageC
from cascade_studio.networks.common import ResBlock
from cascade_studio.networks.controlnet import RELEASED_PROJ_BLOCKS
from cascade_studio.networks.effnet import imagenet_normalize
from cascade_studio.pipeline.checkpoints import save_network
from cascade_studio.pipeline.demo import DEMO_NETWORKS, build_demo_network
from cascade_studio.pipeline.generate import Pipeline
from cascade_studio.pipeline.images import to_pil
from cascade_studio.pipeline.models import MissingWeights, ModelSet
from cascade_studio.pipeline.sampling import SeededNoise, diffuse

FAST = {"stage_c": StageSettings(3, 4.0, 2.0), "stage_b": StageSettings(2, 1.1, 1.0), "width": 256, "height": 256}


@pytest.fixture(scope="module")
def pipeline(demo_models):
    return Pipeline(ModelSet(demo_models))


def request(mode: str, **changes) -> GenerationRequest:
    paths = {
        "inpaint": {"source_image": "/in/source.png", "mask_image": "/in/mask.png"},
        "outpaint": {"source_image": "/in/source.png", "outpaint": (64, 0, 64, 0)},
        "canny": {"control_image": "/in/edges.png"},
        "upscale": {"source_image": "/in/small.png", "stage_c": StageSettings(3, 1.0, 2.0)},
        "text": {},
    }[mode]
    return GenerationRequest("a harbour at noon", **{"seed": 5, "mode": mode, **FAST, **paths, **changes})


def source_pixels(width=300, height=200, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def as_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)


def rect_mask(width=300, height=200, box=(80, 50, 120, 70)) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    x, y, w, h = box
    mask[y : y + h, x : x + w] = 255
    return mask


def resblocks_in_execution_order(stage_c: StageC, x, r, cond) -> list[str]:
    names = {module: name for name, module in stage_c.named_modules() if isinstance(module, ResBlock)}
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda m, args: order.append(names[m])) for m in names]
    try:
        stage_c(x, r, **cond)
    finally:
        for h in handles:
            h.remove()
    return order


def tiny_conditions(stage_c: StageC, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    c_text = stage_c.clip_txt_mapper.in_features
    return {
        "clip_text": torch.randn(batch, 77, c_text, generator=g),
        "clip_text_pooled": torch.randn(batch, 1, stage_c.clip_txt_pooled_mapper.in_features, generator=g),
        "clip_img": torch.randn(batch, 1, stage_c.clip_img_mapper.in_features, generator=g),
    }


def resblock_inputs(stage_c: StageC, x, r, cond) -> dict[str, torch.Tensor]:
    """The input of every ResBlock (what the ControlNet feature was added to), by module name."""
    seen = {}
    handles = [
        m.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].clone()))
        for name, m in stage_c.named_modules()
        if isinstance(m, ResBlock)
    ]
    try:
        stage_c(x, r, **cond)
    finally:
        for h in handles:
            h.remove()
    return seen


# -- the features reach the ResBlocks spec §11 names -----------------------------------------------------------


def test_features_reach_the_released_resblock_indices():
    """The 3.6B block layout (64 ResBlocks) at a tiny width: a feature at execution index k is added to the input
    of exactly the k-th ResBlock (0–7 down level 0, 8–31 down level 1, 32–55 up level 1, 56–63 up level 0)."""
    torch.manual_seed(0)
    stage_c = StageC(c_cond=16, c_hidden=[16, 16], nhead=[2, 2], c_clip_text=8, c_clip_text_pooled=8, c_clip_img=8,
                     dropout=[0.0, 0.0]).eval()  # fmt: skip
    for p in stage_c.parameters():  # the reference zero-inits some layers; every block must pass x on
        torch.nn.init.normal_(p, std=0.05)
    x, r, cond = torch.randn(1, 16, 3, 4), torch.tensor([0.6]), tiny_conditions(stage_c)
    with torch.no_grad():
        order = resblocks_in_execution_order(stage_c, x, r, cond)
        assert len(order) == 64
        spec = {0: "down_blocks.0.0", 4: "down_blocks.0.12", 8: "down_blocks.1.0", 12: "down_blocks.1.12",
                51: "up_blocks.0.57", 55: "up_blocks.0.69", 59: "up_blocks.1.9", 63: "up_blocks.1.21"}  # fmt: skip
        assert {k: order[k] for k in RELEASED_PROJ_BLOCKS} == spec
        plain = resblock_inputs(stage_c, x, r, cond)
        for k in RELEASED_PROJ_BLOCKS:
            feature = torch.randn(1, 16, 5, 5)
            cnet = [None] * k + [feature]
            fed = resblock_inputs(stage_c, x, r, {**cond, "cnet": cnet})
            for name in order[:k]:  # everything before is untouched
                assert torch.equal(fed[name], plain[name])
            added = F.interpolate(feature, size=(3, 4), mode="bilinear", align_corners=True)
            torch.testing.assert_close(fed[order[k]], plain[order[k]] + added, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["inpainting", "canny", "super_resolution"])
def test_demo_controlnet_features_reach_the_demo_stage_c_resblocks(pipeline, kind):
    """Through the real loader: the demo ControlNet's features are added before exactly its proj_blocks, and a
    ControlNet at strength 0 changes nothing."""
    m = pipeline.models
    stage_c, controlnet = m.get("stage_c"), m.get(f"controlnet_{kind}")
    proj_blocks = DEMO_NETWORKS[f"controlnet/{kind}.safetensors"][1]["proj_blocks"]
    assert tuple(controlnet.proj_blocks) == tuple(proj_blocks)
    g = torch.Generator().manual_seed(3)
    x, r, cond = torch.randn(1, 16, 6, 6, generator=g), torch.tensor([0.7]), tiny_conditions(stage_c)
    with torch.no_grad():
        control = torch.rand(1, controlnet.c_in, 192, 192, generator=g)
        features = controlnet(control)
        assert [i for i, f in enumerate(features) if f is not None] == list(proj_blocks)
        order = resblocks_in_execution_order(stage_c, x, r, cond)
        plain = resblock_inputs(stage_c, x, r, cond)
        fed = resblock_inputs(stage_c, x, r, {**cond, "cnet": features})
        first = min(proj_blocks)
        for name in order[:first]:
            assert torch.equal(fed[name], plain[name])
        added = F.interpolate(features[first], size=(6, 6), mode="bilinear", align_corners=True)
        assert added.abs().max() > 1e-3
        torch.testing.assert_close(fed[order[first]], plain[order[first]] + added, rtol=0, atol=1e-5)
        for k in proj_blocks:  # every fed block's input moved
            assert not torch.allclose(fed[order[k]], plain[order[k]])
        zero = [None if f is None else f * 0.0 for f in features]
        off = resblock_inputs(stage_c, x, r, {**cond, "cnet": zero})
        assert all(torch.equal(off[name], plain[name]) for name in order)


def test_the_pipeline_adds_the_features_in_every_stage_c_step(pipeline):
    """Hooks on the loaded Stage C during a canny run: the first ResBlock's input differs from a run at control
    strength 0, in every step and in both guidance halves; strength 0 gives the text-to-image pixels exactly."""
    stage_c = pipeline.models.get("stage_c")
    first = next(m for m in stage_c.modules() if isinstance(m, ResBlock))
    control = as_tensor(source_pixels(256, 256))

    def run(req, **inputs):
        seen = []
        handle = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
        try:
            pixels = pipeline.run(req, **inputs)[0].pixels
        finally:
            handle.remove()
        return pixels, seen

    on, fed = run(request("canny"), control_image=control)
    off, plain = run(request("canny", control_strength=0.0), control_image=control)
    text, _ = run(request("text"))
    assert len(fed) == len(plain) == 3 and fed[0].shape[0] == 2  # 3 steps, conditional + unconditional
    for a, b in zip(fed, plain):
        assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
    assert np.array_equal(off, text)
    assert not np.array_equal(on, text)


# -- the modes end to end --------------------------------------------------------------------------------------


def outside_mask_and_band(mask: np.ndarray, band: int) -> np.ndarray:
    return ~(masks.grow((mask > 0).astype(np.uint8) * 255, band) > 0)


@pytest.mark.parametrize("method", ["controlnet", "latent_blend"])
@pytest.mark.parametrize("context", ["image", "mask"])
def test_inpaint_keeps_every_pixel_outside_mask_and_band(pipeline, method, context):
    source, mask = source_pixels(), rect_mask()
    req = request("inpaint", method=method, context=context, context_padding=32, mask_feather=12, batch_size=2)
    images = pipeline.run(req, source_image=as_tensor(source), mask_image=mask)
    assert len(images) == 2
    keep = outside_mask_and_band(mask, 12)
    for image in images:
        assert image.pixels.shape == source.shape and image.pixels.dtype == np.uint8
        assert np.array_equal(image.pixels[keep], source[keep])
        inside = mask == 255
        assert np.abs(image.pixels[inside].astype(int) - source[inside]).mean() > 10  # repainted
        assert image.request.method == method and image.request.batch_size == 1
    assert not np.array_equal(images[0].pixels, images[1].pixels)


def test_auto_inpaint_uses_the_controlnet_that_fits_and_feeds_it_the_reference_input(pipeline):
    source, mask = source_pixels(256, 256), rect_mask(256, 256, (64, 96, 100, 60))
    req = request("inpaint", mask_grow=4)
    plan = pipeline.plan(req)
    assert plan.method == "controlnet" and plan.note == "inpainting through the inpainting ControlNet"
    seen = []
    controlnet = pipeline.models.get("controlnet_inpainting")
    handle = controlnet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        (image,) = pipeline.run(req, source_image=as_tensor(source), mask_image=mask)
    finally:
        handle.remove()
    assert image.request.method == "controlnet"
    # InpaintFilter with a user mask, on the image at the effnet input size: cat([where(mask, 1, image), mask])
    w, h = effnet_input_size(256, 256)
    image_e = F.interpolate(as_tensor(source)[None], size=(h, w), mode="bilinear", antialias=True)
    hole = torch.from_numpy(masks.grow(mask, 4) >= 128).float()[None, None]
    hole = F.interpolate(hole, size=(h, w), mode="nearest")
    expected = torch.cat([torch.where(hole > 0, torch.ones_like(image_e), image_e), hole], dim=1)
    (given,) = seen
    assert torch.equal(given, expected)


def test_latent_blending_keeps_the_source_latent_outside_the_mask(pipeline):
    """Every Stage C step starts, on the unmasked latent cells, from the source's EfficientNet latent re-noised to
    that step's time (with the starting noise); Stage B receives exactly the source latent there."""
    source, mask = source_pixels(256, 256), rect_mask(256, 256, (0, 0, 100, 256))
    stage_b, stage_c = pipeline.models.get("stage_b"), pipeline.models.get("stage_c")
    seen_b, seen_c = [], []
    handles = [
        stage_b.register_forward_pre_hook(lambda m, args, kw: seen_b.append(kw["effnet"].clone()), with_kwargs=True),
        stage_c.register_forward_pre_hook(lambda m, args: seen_c.append(args[0][:1].clone())),
    ]
    req = request("inpaint", method="latent_blend", strength=0.75, stage_c=StageSettings(4, 4.0, 2.0))
    try:
        pipeline.run(req, source_image=as_tensor(source), mask_image=mask)
    finally:
        for h in handles:
            h.remove()
    w, h = effnet_input_size(256, 256)
    with torch.no_grad():
        image_e = F.interpolate(as_tensor(source)[None], size=(h, w), mode="bilinear", antialias=True)
        latent = pipeline.models.get("effnet")(imagenet_normalize(image_e))
    hc, wc = stage_c_latent_size(256, 256)
    touched = F.interpolate(torch.from_numpy(mask >= 128).float()[None, None], size=(hc, wc), mode="area") > 0
    keep = ~touched[0, 0]
    assert keep.any() and (~keep).any()
    # 4 steps at strength 0.75 -> int(4 * 0.75) = 3 steps over linspace(0.75, 0, 4); step i starts at times[i]
    times = torch.linspace(0.75, 0, 4)
    noise = SeededNoise([5], (16, hc, wc)).initial()
    assert len(seen_c) == 3
    for i in (1, 2):
        expected = diffuse(latent, float(times[i]), noise, shift=2.0)
        torch.testing.assert_close(seen_c[i][0][:, keep], expected[0][:, keep], rtol=0, atol=1e-5)
        assert not torch.allclose(seen_c[i][0][:, ~keep], expected[0][:, ~keep], atol=1e-2)
    effnet_cond = seen_b[0][:1]  # conditional half
    torch.testing.assert_close(effnet_cond[0][:, keep], latent[0][:, keep], rtol=0, atol=1e-6)
    assert not torch.allclose(effnet_cond[0][:, ~keep], latent[0][:, ~keep], atol=1e-2)


def test_outpaint_extends_the_canvas_and_keeps_the_old_area(pipeline):
    source = source_pixels(300, 200)
    req = request("outpaint", outpaint=(64, 0, 64, 32), mask_feather=8)
    for method in ("controlnet", "latent_blend"):
        (image,) = pipeline.run(req.with_(method=method), source_image=as_tensor(source))
        ext = masks.outpaint_geometry(300, 200, 64, 0, 64, 32)
        assert image.pixels.shape == (ext.height, ext.width, 3) == (256, 512, 3)
        canvas, new_area = masks.extend(source, None, ext)
        keep = outside_mask_and_band(new_area, 8)
        assert np.array_equal(image.pixels[keep], canvas[keep])
        old = image.pixels[ext.top : ext.top + 200, ext.left : ext.left + 300]
        assert np.array_equal(old[8:-8, 8:-8], source[8:-8, 8:-8])
        assert image.request.method == method and image.request.outpaint == (64, 0, 64, 32)


def test_canny_and_upscale_run_end_to_end(pipeline):
    (canny,) = pipeline.run(request("canny"), control_image=as_tensor(source_pixels(320, 200)))
    assert canny.pixels.shape == (256, 256, 3) and canny.request.method == "controlnet"
    small = source_pixels(128, 128)
    (big,) = pipeline.run(request("upscale"), source_image=as_tensor(small))
    assert big.pixels.shape == (256, 256, 3) and big.request.method == "controlnet"
    assert pipeline.plan(request("upscale")).note == "2× super-resolution through the super-resolution ControlNet"


def test_masked_modes_refuse_inputs_that_do_not_fit(pipeline):
    source = as_tensor(source_pixels())
    with pytest.raises(ValueError, match="same size"):
        pipeline.run(request("inpaint"), source_image=source, mask_image=rect_mask(100, 100, (0, 0, 10, 10)))
    with pytest.raises(ValueError, match="mask is empty"):
        pipeline.run(request("inpaint"), source_image=source, mask_image=np.full((200, 300), 100, np.uint8))
    with pytest.raises(ValueError, match="source image"):
        pipeline.run(request("inpaint"), mask_image=rect_mask())


# -- which method: ControlNets that are missing or do not fit --------------------------------------------------


@pytest.fixture(scope="module")
def misfit_models(demo_models, tmp_path_factory):
    """The demo set with ControlNets 64 channels wide: they do not fit the 128-wide demo Stage C, as the released
    2048-wide ones do not fit the 1536-wide lite Stage C."""
    folder = tmp_path_factory.mktemp("misfit")
    for path in demo_models.iterdir():
        if path.is_file():
            (folder / path.name).symlink_to(path)
        elif path.name != "controlnet":
            shutil.copytree(path, folder / path.name, symlinks=True)
    for kind in ("inpainting", "canny"):
        network, kwargs = DEMO_NETWORKS[f"controlnet/{kind}.safetensors"]
        kwargs = {**kwargs, "c_proj": 64}
        module = build_demo_network(f"controlnet/{kind}.safetensors").__class__(**kwargs)
        save_network(module, folder / "controlnet" / f"{kind}.safetensors", network, kwargs)
    return folder


def test_a_controlnet_that_does_not_fit_falls_back_to_latent_blending(misfit_models):
    pipeline = Pipeline(ModelSet(misfit_models))
    plan = pipeline.plan(request("inpaint"))
    assert plan.method == "latent_blend"
    assert plan.note == "inpainting by latent blending (the inpainting ControlNet does not fit this Stage C)"
    source, mask = source_pixels(256, 256), rect_mask(256, 256)
    (image,) = pipeline.run(request("inpaint"), source_image=as_tensor(source), mask_image=mask)
    assert image.request.method == "latent_blend"
    with pytest.raises(InputError, match="fit only the full"):
        pipeline.plan(request("inpaint", method="controlnet"))
    with pytest.raises(InputError, match="canny ControlNet, which does not fit"):
        pipeline.plan(request("canny"))
    with pytest.raises(MissingWeights, match="super_resolution.safetensors"):
        pipeline.plan(request("upscale"))
    assert pipeline.plan(request("text")).method is None


# -- metadata and the command line -----------------------------------------------------------------------------


def test_the_request_of_each_mode_round_trips_through_png_metadata(pipeline, tmp_path):
    source, mask = source_pixels(256, 256), rect_mask(256, 256)
    cases = [
        (request("inpaint", method="latent_blend", context="mask", mask_grow=3), {"mask_image": mask}),
        (request("outpaint", outpaint=(128, 0, 0, 0)), {}),
    ]
    for req, inputs in cases:
        (image,) = pipeline.run(req, source_image=as_tensor(source), **inputs)
        path = save_png_atomic(tmp_path / f"{req.mode}.png", to_pil(image.pixels), png_text_chunks(image.request,
                               "demo", "0.1"))  # fmt: skip
        meta = read_metadata(path)
        assert meta.request == image.request and meta.extra["mode"] == req.mode
        assert json.loads(meta.raw["cascade_studio"])["request"]["schema_version"] == GenerationRequest.schema_version
    parameters = meta.raw["parameters"]
    assert "Mode: outpaint" in parameters and "Inpaint method: controlnet" in parameters
    assert "Outpaint: 128 0 0 0" in parameters and "ControlNet: inpainting" in parameters
    assert "Denoising strength: 0.8" in parameters
    canny = png_text_chunks(request("canny", control_strength=0.6), "demo", "0.1")["parameters"]
    assert "Mode: canny" in canny and "ControlNet: canny, Control strength: 0.6" in canny
    blend = png_text_chunks(request("inpaint", method="latent_blend", context="mask"), "demo", "0.1")["parameters"]
    assert "Inpaint method: latent blend" in blend and "Inpaint area: Only masked" in blend
    assert "ControlNet" not in blend


def _cli(tmp_path, monkeypatch, demo_cache, *extra):
    monkeypatch.setenv("XDG_CACHE_HOME", str(demo_cache))
    out = tmp_path / "out"
    argv = ["generate", "a quay", "--demo", "--steps-c", "2", "--steps-b", "1", "--seed", "3", "--out", str(out)]
    return main([*argv, *extra]), out


def test_cli_inpaint_outpaint_canny_and_upscale(tmp_path, monkeypatch, capsys, demo_cache):
    src, mask_path, small = tmp_path / "src.png", tmp_path / "mask.png", tmp_path / "small.png"
    source = source_pixels(256, 256)
    Image.fromarray(source).save(src)
    mask = rect_mask(256, 256, (50, 60, 90, 80))
    Image.fromarray(mask, "L").save(mask_path)
    Image.fromarray(source_pixels(128, 128)).save(small)

    runs = {
        "inpaint": [
            "--image",
            str(src),
            "--mask",
            str(mask_path),
            "--size",
            "256x256",
            "--method",
            "latent_blend",
            "--feather",
            "8",
        ],  # fmt: skip
        "outpaint": ["--image", str(src), "--outpaint", "0,0,128,0", "--size", "256x256"],
        "canny": ["--canny", str(src), "--size", "256x256", "--control-strength", "0.5"],
        "upscale": ["--upscale", str(small)],
    }
    for mode, flags in runs.items():
        status, out = _cli(tmp_path / mode, monkeypatch, demo_cache, *flags)
        captured = capsys.readouterr()
        assert status == 0, captured.err
        (path,) = out.glob("*.png")
        req = read_metadata(path).request
        assert req.mode == mode
        pixels = np.asarray(Image.open(path).convert("RGB"))
        if mode == "inpaint":
            assert req.method == "latent_blend" and req.mask_feather == 8 and req.strength == 1.0
            assert "inpainting by latent blending (chosen in the request)" in captured.err
            keep = outside_mask_and_band(mask, 8)
            assert np.array_equal(pixels[keep], source[keep])
        elif mode == "outpaint":
            assert pixels.shape == (256, 384, 3) and req.outpaint == (0, 0, 128, 0) and req.method == "controlnet"
        elif mode == "canny":
            assert req.control_strength == 0.5 and req.control_image == str(src.resolve())
        else:
            assert pixels.shape == (256, 256, 3) and (req.width, req.height) == (256, 256) and req.stage_c.cfg == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mask", "m.png"], "--mask needs --image"),
        (["--outpaint", "0,0,128,0"], "--outpaint needs --image"),
        (["--canny", "c.png", "--image", "i.png"], "only one of"),
        (["--upscale", "u.png", "--variation", "v.png"], "only one of"),
        (["--control-strength", "0.5"], "--control-strength needs"),
        (["--canny", "c.png", "--method", "latent_blend"], "--method needs"),
        (["--canny", "c.png", "--strength", "0.5"], "--strength needs --image"),
        (["--image", "i.png", "--mask", "m.png", "--control-strength", "3"], "control_strength"),
    ],
)
def test_cli_refuses_wrong_combinations(flags, message, capsys):
    assert main(["generate", "x", *flags]) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_bad_outpaint_and_size_with_upscale(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "x", "--image", "i.png", "--outpaint", "1,2,3"])
    assert "LEFT,TOP,RIGHT,BOTTOM" in capsys.readouterr().err
    Image.fromarray(source_pixels(128, 128)).save(tmp_path / "small.png")
    assert main(["generate", "x", "--upscale", str(tmp_path / "small.png"), "--size", "512x512"]) == 2
    assert "twice the input" in capsys.readouterr().err
