"""Stage C LoRA: the hooks equal hand-merged weights, removal is exact, files are checked, prompts are parsed."""

import argparse
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cascade_studio.cli import _lora_arg
from cascade_studio.core.metadata import png_text_chunks, read_metadata, save_png_atomic
from cascade_studio.core.request import (
    GenerationRequest,
    LoraUse,
    StageSettings,
    split_lora_tags,
    unread_lora_tags,
)
from cascade_studio.networks import StageC
from cascade_studio.networks.common import MultiheadAttention
from cascade_studio.networks.lora import apply_loras, merged_weight
from cascade_studio.pipeline.demo import build_demo_network
from cascade_studio.pipeline.generate import Pipeline
from cascade_studio.pipeline.lora import LoraError, find_lora, read_lora, reference_lora_tensors
from cascade_studio.pipeline.models import ModelSet

TINY = dict(c_cond=32, c_hidden=[32, 32], nhead=[2, 2], blocks=[[1, 1], [1, 1]], c_clip_text=16, c_clip_text_pooled=16)


def tiny_stage_c(seed=0):
    torch.manual_seed(seed)
    net = StageC(**TINY).eval()
    with torch.no_grad():  # non-zero GRN and mapper weights so every path matters
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(2, 16, 6, 5, generator=g),
        r=torch.rand(2, generator=g),
        clip_text=torch.randn(2, 7, 16, generator=g),
        clip_text_pooled=torch.randn(2, 1, 16, generator=g),
        clip_img=torch.randn(2, 1, 768, generator=g),
    )


def write(path, tensors, metadata=None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def merged_copy(net, loras):
    """A copy of ``net`` with every LoRA merged into its weights by hand: W + weight · scale · up @ down."""
    merged = tiny_stage_c()
    merged.load_state_dict(net.state_dict())
    by_module = {}
    for f, weight in loras:
        for d in f.deltas(net):
            by_module.setdefault(d.module, []).append((d, weight))
    with torch.no_grad():
        for name, deltas in by_module.items():
            module = merged.get_submodule(name)
            param = module.in_proj_weight if isinstance(module, MultiheadAttention) else module.weight
            param.copy_(merged_weight(param, deltas))
    return merged


@pytest.fixture
def net():
    return tiny_stage_c()


@pytest.fixture
def reference_file(tmp_path, net):
    return read_lora(write(tmp_path / "ref.safetensors", reference_lora_tensors(net, rank=4, seed=3)))


def test_reference_lora_equals_hand_merged_weights_and_removal_is_exact(net, reference_file):
    x = inputs()
    with torch.no_grad():
        before = net(**x)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        applied = apply_loras(net, [(reference_file.deltas(net), 0.8)])
        with_lora = net(**x)
        expected = merged_copy(net, [(reference_file, 0.8)])(**x)
        applied.remove()
        after = net(**x)
    assert reference_file.layout == "reference"
    assert not torch.allclose(with_lora, before, atol=1e-3)  # the LoRA does something
    torch.testing.assert_close(with_lora, expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(after, before)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # base weights never written


def test_reference_order_is_out_proj_then_packed_in_proj(net, reference_file):
    deltas = reference_file.deltas(net)
    assert [d.module for d in deltas[:2]] == [
        "down_blocks.0.2.attention.attn.out_proj",
        "down_blocks.0.2.attention.attn",
    ]
    assert deltas[1].rows == (0, 96) and deltas[0].scale == pytest.approx(0.25)
    assert len(deltas) == 2 * sum(isinstance(m, MultiheadAttention) for m in net.modules())


def test_two_loras_compose_like_merging_both(tmp_path, net, reference_file):
    # the second in the kohya/ComfyUI layout: split q/k/v onto the packed in_proj, a Linear, and an alpha
    g = torch.Generator().manual_seed(9)
    kohya = {}
    for part in ("to_q", "to_v"):
        kohya[f"lora_prior_unet_up_blocks_1_2_attention_attn_{part}.lora_down.weight"] = torch.randn(2, 32, generator=g)
        kohya[f"lora_prior_unet_up_blocks_1_2_attention_attn_{part}.lora_up.weight"] = torch.randn(32, 2, generator=g)
        kohya[f"lora_prior_unet_up_blocks_1_2_attention_attn_{part}.alpha"] = torch.tensor(1.0)
    kohya["lora_prior_unet_down_blocks_0_0_channelwise_0.lora_down.weight"] = torch.randn(2, 32, generator=g) * 0.3
    kohya["lora_prior_unet_down_blocks_0_0_channelwise_0.lora_up.weight"] = torch.randn(128, 2, generator=g) * 0.3
    second = read_lora(write(tmp_path / "kohya.safetensors", kohya))
    assert second.layout == "kohya"
    assert {d.rows for d in second.deltas(net)} == {None, (0, 32), (64, 96)}
    x = inputs()
    with torch.no_grad():
        before = net(**x)
        loras = [(reference_file, 0.5), (second, -1.5)]
        with apply_loras(net, [(f.deltas(net), w) for f, w in loras]):
            both = net(**x)
        expected = merged_copy(net, loras)(**x)
        with apply_loras(net, [(reference_file.deltas(net), 0.5)]):
            one = net(**x)
        assert torch.equal(net(**x), before)
    torch.testing.assert_close(both, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(both, one, atol=1e-4)


def test_lora_on_split_attention_rows_reaches_every_projection_route(net):
    """The low-rank terms of a q-only, a k/v-straddling and a v-only delta land on the rows they cover, whichever way
    the queries, keys and values are projected (the GPU's joined tokens, the CPU's packed product, or the condition's
    keys and values projected once and reused), equal to projecting with the hand-merged weight."""
    from cascade_studio.networks.lora import LoraDelta

    name = "up_blocks.1.2.attention.attn"
    attn = net.get_submodule(name)
    g = torch.Generator().manual_seed(4)
    deltas = [
        LoraDelta(name, torch.randn(2, 32, generator=g), torch.randn(rows[1] - rows[0], 2, generator=g), 0.7, rows)
        for rows in ((0, 32), (48, 80), (64, 96))
    ]
    x, cond = torch.randn(2, 9, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    w = merged_weight(attn.in_proj_weight, [(d, 1.3) for d in deltas])
    bias = attn.in_proj_bias.detach()
    kv_tokens = torch.cat([x, cond], dim=1)
    want = (x @ w[:32].T + bias[:32], kv_tokens @ w[32:64].T + bias[32:64], kv_tokens @ w[64:].T + bias[64:])
    with torch.inference_mode(), apply_loras(net, [(deltas, 1.3)]):
        routes = {
            "joined": attn.qkv(x, cond, True, joined=True),
            "packed": attn.qkv(x, cond, True),
            "reused": attn.qkv(x, None, True, cond_kv=attn.project_condition(cond)),
        }
    for route, got in routes.items():
        for part, a, b in zip("qkv", got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{route} {part}")
    assert attn.in_proj_lora == ()


def test_wrong_shapes_are_refused_naming_the_file(tmp_path, net):
    tensors = reference_lora_tensors(net, rank=4)
    tensors["weights.1.lora_up"] = torch.zeros(95, 4)
    lora = read_lora(write(tmp_path / "bad-shapes.safetensors", tensors))
    with pytest.raises(LoraError, match=r"bad-shapes\.safetensors.*down_blocks\.0\.2\.attention\.attn.*do not fit"):
        lora.deltas(net)
    other = reference_lora_tensors(tiny_stage_c(), rank=4)
    wide = reference_lora_tensors(StageC(**{**TINY, "c_hidden": [64, 64], "c_cond": 64}), rank=4)
    assert len(wide) == len(other)
    with pytest.raises(LoraError, match="do not fit"):
        read_lora(write(tmp_path / "other-variant.safetensors", wide)).deltas(net)
    fewer = {k: v for k, v in other.items() if not k.startswith(("weights.6.", "weights.7."))}
    with pytest.raises(LoraError, match="holds 6 LoRA weight pairs but this Stage C has 8"):
        read_lora(write(tmp_path / "fewer.safetensors", fewer)).deltas(net)


def test_keys_for_another_network_are_refused(tmp_path, net):
    sdxl = {
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(32, 4),
    }
    with pytest.raises(LoraError, match=r"sdxl\.safetensors.*input_blocks_4_1_proj_in names no .* another model"):
        read_lora(write(tmp_path / "sdxl.safetensors", sdxl)).deltas(net)
    sdxl_diffusers = {
        "unet.down_blocks.1.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32),
        "unet.down_blocks.1.attentions.0.proj_in.lora_B.weight": torch.zeros(32, 4),
    }
    lora = read_lora(write(tmp_path / "diffusers.safetensors", sdxl_diffusers))
    with pytest.raises(LoraError, match=r"diffusers\.safetensors: unet\.down_blocks\.1\.attentions.* another model"):
        lora.deltas(net)
    odd = {"model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.zeros(4, 4)}
    with pytest.raises(LoraError, match=r"odd\.safetensors: unknown key layout"):
        read_lora(write(tmp_path / "odd.safetensors", odd))


def test_pickle_and_garbage_files_are_refused(tmp_path):
    pt = tmp_path / "evil.pt"
    pt.write_bytes(pickle.dumps({"weights.0.lora_down": [0.0]}))
    with pytest.raises(LoraError, match=r"evil\.pt.*only \.safetensors"):
        read_lora(pt)
    disguised = tmp_path / "disguised.safetensors"
    torch.save({"weights.0.lora_down": torch.zeros(1)}, disguised)
    with pytest.raises(LoraError, match=r"disguised\.safetensors"):
        read_lora(disguised)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(LoraError, match="too small"):
        read_lora(tiny)


def test_lora_files_are_found_by_name_or_path(tmp_path, net):
    folder = tmp_path / "lora"
    folder.mkdir()
    path = write(folder / "style.safetensors", reference_lora_tensors(net))
    assert find_lora("style", tmp_path) == path
    assert find_lora(str(path), tmp_path / "elsewhere") == path
    with pytest.raises(LoraError, match=r"'nope' not found.*holds: style"):
        find_lora("nope", tmp_path)


def test_prompt_tags_are_parsed_and_stripped():
    assert split_lora_tags("a cat <lora:demo-style:0.8>, oil <LORA:Film Grain:-.5>") == (
        "a cat, oil",
        [LoraUse("demo-style", 0.8), LoraUse("Film Grain", -0.5)],
    )
    assert split_lora_tags("plain <b> text") == ("plain <b> text", [])
    assert split_lora_tags("<lora:x>")[1] == [LoraUse("x", 1.0)]
    request = GenerationRequest("a <lora:tag:0.3> b", seed=1, loras=(("field", 0.7), ("tag", 0.1)))
    assert request.all_loras() == [LoraUse("field", 0.7), LoraUse("tag", 0.3)]
    assert GenerationRequest("x", seed=1, loras=(("a", 99.0),)).errors()
    assert GenerationRequest("x", seed=1, loras=(("a", 1.0, 99.0),)).errors()[0].startswith("loras[0] text weight")


def test_prompt_tags_give_the_text_encoder_a_weight_of_its_own_as_a1111_reads_them():
    # A1111: the first number is the text encoder's, the second Stage C's (its "unet"); te= and unet= name them;
    # one number is both. A tag whose arguments do not parse stays in the prompt as text.
    assert split_lora_tags("a <lora:x:0.5:1>")[1] == [LoraUse("x", 1.0, 0.5)]
    assert split_lora_tags("<lora:x:unet=0.8:te=0.2>")[1] == [LoraUse("x", 0.8, 0.2)]
    assert split_lora_tags("<lora:x:0.7:te=0>")[1] == [LoraUse("x", 0.0, None)]  # te given: unet follows it
    assert split_lora_tags("<lora:x:0.6:0.6>")[1] == [LoraUse("x", 0.6)]  # the same weight is no weight of its own
    # A1111's third number and dyn= cut a LyCORIS file's rank; plain LoRAs have none, so they are read and ignored.
    assert split_lora_tags("a <lora:x:0.5:1:16> b") == ("a b", [LoraUse("x", 1.0, 0.5)])
    assert split_lora_tags("<lora:x:0.8:dyn=16>")[1] == [LoraUse("x", 0.8)]
    for kept in ("<lora:x:abc>", "<lora:x:1:2:3:4>", "<lora:x:te=1:0.5>", "<lora:x:dyn=a>", "<lora:C:/x.safetensors>"):
        assert split_lora_tags(f"a {kept} b") == (f"a {kept} b", [])
        assert unread_lora_tags(f"a {kept} b <lora:y:0.5>") == [kept]  # said so in the window and the terminal
    assert unread_lora_tags("a <lora:x:0.5:1:16> <b>") == []
    use = LoraUse("x", 0.8, 0.2)
    assert use.text == 0.2 and LoraUse("x", 0.8).text == 0.8 and use.describe() == "0.8, text encoder 0.2"
    request = GenerationRequest("p <lora:x:0.3:1>", seed=1, loras=(("y", 0.5, 0.25), ("z", 1.0, None)))
    assert request.loras == (LoraUse("y", 0.5, 0.25), LoraUse("z", 1.0))
    assert request.to_dict()["loras"] == [["y", 0.5, 0.25], ["z", 1.0]]
    assert GenerationRequest.from_json(request.to_json()) == request
    assert 'LoRA: "y:0.5:te=0.25, z:1, x:1:te=0.3"' in png_text_chunks(request, "demo", "0")["parameters"]
    assert _lora_arg("style:0.8:te=0.3") == ("style", 0.8, 0.3) and _lora_arg("C:/x.safetensors:te=0") == (
        "C:/x.safetensors",
        1.0,
        0.0,
    )
    with pytest.raises(argparse.ArgumentTypeError, match="te=abc is not a number"):
        _lora_arg("style:te=abc")


def test_request_v2_migrates_to_the_current_version_and_round_trips_through_png(tmp_path):
    v2 = {"schema_version": 2, "prompt": "p <lora:a:0.5>", "seed": 4, "mode": "text", "mask_grow": 3}
    request = GenerationRequest.from_dict(v2)
    assert request.loras == () and request.mask_grow == 3 and GenerationRequest.schema_version == 4
    assert GenerationRequest.from_dict({"prompt": "v1", "seed": 1}).loras == ()
    request = request.with_(loras=(("demo-style", 0.8), ("/abs/x.safetensors", 1.0)))
    assert request.to_dict()["schema_version"] == 4
    assert GenerationRequest.from_json(request.to_json()) == request
    texts = png_text_chunks(request, "demo", "0")
    assert 'LoRA: "demo-style:0.8, /abs/x.safetensors:1, a:0.5"' in texts["parameters"]
    from PIL import Image

    path = save_png_atomic(tmp_path / "x.png", Image.new("RGB", (8, 8)), texts)
    assert read_metadata(path).request == request


def test_pipeline_runs_with_the_demo_lora_and_forgets_it_afterwards(demo_models):
    pipeline = Pipeline(ModelSet(demo_models))
    fast = {"stage_c": StageSettings(2, 4.0, 2.0), "stage_b": StageSettings(1, 1.1, 1.0), "width": 256, "height": 256}
    plain = GenerationRequest("a lighthouse", seed=5, **fast)
    baseline = pipeline.run(plain)[0].pixels
    tagged = pipeline.run(plain.with_(prompt="a lighthouse <lora:demo-style:0.8>"))[0].pixels
    field = pipeline.run(plain.with_(loras=(("demo-style", 0.8),)))[0].pixels
    after = pipeline.run(plain)[0].pixels
    assert not np.array_equal(tagged, baseline)
    assert np.array_equal(tagged, field)  # the tag is stripped from the CLIP text and means the same as the field
    assert np.array_equal(after, baseline)
    stage_c = pipeline.models.get("stage_c")
    assert all(m.in_proj_lora == () for m in stage_c.modules() if isinstance(m, MultiheadAttention))
    with pytest.raises(LoraError, match="not found"):
        pipeline.run(plain.with_(loras=(("missing", 1.0),)))
    assert np.array_equal(pipeline.run(plain)[0].pixels, baseline)


def test_demo_lora_fits_the_demo_stage_c(demo_models):
    lora = read_lora(demo_models / "lora" / "demo-style.safetensors")
    assert lora.layout == "reference"
    assert len(lora.deltas(build_demo_network("stage_c_lite.safetensors"))) == 8


def test_cli_lora_option_and_prompt_tag(tmp_path, monkeypatch, capsys, demo_cache, demo_models):
    from cascade_studio.cli import main

    assert _lora_arg("demo-style:0.8") == ("demo-style", 0.8)
    assert _lora_arg("C:/loras/x.safetensors") == ("C:/loras/x.safetensors", 1.0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(demo_cache))
    base = ["generate", "--demo", "--size", "256x256", "--steps-c", "2", "--steps-b", "1", "--seed", "3"]
    outs = []
    for extra in ([], ["--lora", "demo-style:0.8"]):
        out = tmp_path / f"out{len(outs)}"
        assert main([*base, "a cat", "--out", str(out), *extra]) == 0
        outs.append(next(out.glob("*.png")))
    tagged = tmp_path / "tagged"
    assert main([*base, "a cat <lora:demo-style:0.8>", "--out", str(tagged)]) == 0
    from PIL import Image

    plain, lora, tag = (np.asarray(Image.open(p)) for p in (*outs, next(tagged.glob("*.png"))))
    assert not np.array_equal(plain, lora) and np.array_equal(lora, tag)
    assert read_metadata(outs[1]).request.loras == (LoraUse("demo-style", 0.8),)
    assert main([*base, "a cat", "--out", str(tmp_path / "x"), "--lora", "nope"]) == 2
    assert "LoRA 'nope' not found" in capsys.readouterr().err
    assert main([*base, "a cat <lora:demo-style:strong>", "--out", str(tmp_path / "unread")]) == 0
    err = capsys.readouterr().err
    assert "warning: <lora:demo-style:strong> is not a LoRA tag this reads, so it stays in the prompt as text" in err


def test_a_lora_for_a_stage_c_of_another_width_stops_the_job_before_anything_loads(tmp_path, demo_models):
    pipeline = Pipeline(ModelSet(demo_models))
    (width,) = pipeline.models.stage_c_widths  # read from the file's header
    assert pipeline.models.loaded() == {}
    wider = StageC(**{**TINY, "c_hidden": [width + 16] * 2})
    path = write(tmp_path / "wide.safetensors", reference_lora_tensors(wider, rank=2))
    request = GenerationRequest("a lighthouse", seed=5, stage_c=StageSettings(2, 4.0, 2.0), width=256, height=256)
    expected = (
        rf"wide\.safetensors: made for a Stage C {width + 16} wide, but this job's Stage C \(.*\) is {width} wide"
    )
    with pytest.raises(LoraError, match=expected):
        pipeline.run(request.with_(loras=((str(path), 1.0),)))
    assert pipeline.models.loaded() == {}  # refused from headers alone: no network was loaded
