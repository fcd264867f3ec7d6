"""A kohya/OneTrainer LoRA's text-encoder part (``lora_prior_te_…``): checked against transformers' own CLIP text model
with the deltas merged into its weights by hand, applied for one encoding only, refused clearly when it does not fit."""

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cascade_studio.core.request import GenerationRequest, StageSettings
from cascade_studio.networks.lora import PACKED_ATTENTION
from cascade_studio.pipeline.conditioning import TextEncoder
from cascade_studio.pipeline.demo import DEMO_TEXT_CLIP
from cascade_studio.pipeline.generate import Pipeline
from cascade_studio.pipeline.lora import LoraError, read_lora
from cascade_studio.pipeline.models import ModelSet
from tests.support.hf_clip import random_hf_text_model
from tests.test_conditioning import EOT, HF_TEXT, hf_outputs, rel_diff, tiny_clip_config, token_batch
from tests.test_lora import tiny_stage_c

WIDTH, MLP, PROJ = HF_TEXT["hidden_size"], HF_TEXT["intermediate_size"], HF_TEXT["projection_dim"]

#: transformers module path -> (out, in) of its weight: what the LoRA below changes (both layers, every kind of layer)
CHANGED = {
    "text_model.encoder.layers.0.self_attn.q_proj": (WIDTH, WIDTH),
    "text_model.encoder.layers.0.self_attn.v_proj": (WIDTH, WIDTH),
    "text_model.encoder.layers.0.mlp.fc1": (MLP, WIDTH),
    "text_model.encoder.layers.1.self_attn.k_proj": (WIDTH, WIDTH),
    "text_model.encoder.layers.1.self_attn.out_proj": (WIDTH, WIDTH),
    "text_model.encoder.layers.1.mlp.fc2": (WIDTH, MLP),
    "text_projection": (PROJ, WIDTH),
}


def text_lora_tensors(changed=CHANGED, seed=5, rank=3, prefix="lora_prior_te_"):
    """kohya-layout tensors for ``changed``, an alpha on every other module; returns them with each module's
    (down, up, scale)."""
    g = torch.Generator().manual_seed(seed)
    tensors, parts = {}, {}
    for i, (module, (out, inp)) in enumerate(changed.items()):
        key = prefix + module.replace(".", "_")
        down, up = torch.randn(rank, inp, generator=g) * 0.3, torch.randn(out, rank, generator=g) * 0.3
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
        scale = 1.0
        if i % 2:
            tensors[f"{key}.alpha"] = torch.tensor(1.5)
            scale = 1.5 / rank
        parts[module] = (down, up, scale)
    return tensors, parts


def write(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def hf_and_encoder(tmp_path_factory):
    """transformers' model (random, layer norms included) and our encoder loaded from its save_pretrained file."""
    hf = random_hf_text_model(HF_TEXT, seed=31)
    folder = tmp_path_factory.mktemp("te")
    hf.save_pretrained(folder)
    return hf, TextEncoder.from_file(folder / "model.safetensors", model_cfg=tiny_clip_config(), eot_token_id=EOT)


def test_text_part_equals_transformers_with_the_deltas_merged_by_hand(tmp_path, hf_and_encoder):
    hf, encoder = hf_and_encoder
    tensors, parts = text_lora_tensors()
    # OneTrainer's / ComfyUI's prefix, and kohya's plain one for one module; a Stage C part in the same file
    moved = "lora_prior_te_text_model_encoder_layers_1_mlp_fc2"
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
        tensors[moved.replace("lora_prior_te_", "lora_te_") + suffix] = tensors.pop(moved + suffix)
    g = torch.Generator().manual_seed(2)
    tensors["lora_prior_unet_down_blocks_0_0_channelwise_0.lora_down.weight"] = torch.randn(2, 32, generator=g)
    tensors["lora_prior_unet_down_blocks_0_0_channelwise_0.lora_up.weight"] = torch.randn(128, 2, generator=g)
    lora = read_lora(write(tmp_path / "onetrainer.safetensors", tensors))
    assert lora.layout == "kohya" and lora.has_text_part
    assert [d.module for d in lora.deltas(tiny_stage_c())] == ["down_blocks.0.0.channelwise.0"]  # Stage C part alone
    deltas = lora.text_deltas(encoder)
    assert {(d.module, d.rows) for d in deltas} == {
        ("transformer.resblocks.0.attn", (0, WIDTH)),
        ("transformer.resblocks.0.attn", (2 * WIDTH, 3 * WIDTH)),
        ("transformer.resblocks.0.mlp.c_fc", None),
        ("transformer.resblocks.1.attn", (WIDTH, 2 * WIDTH)),
        ("transformer.resblocks.1.attn.out_proj", None),
        ("transformer.resblocks.1.mlp.c_proj", None),
        ("text_projection", None),
    }

    weight = 0.7
    merged = copy.deepcopy(hf)
    with torch.no_grad():
        for module, (down, up, scale) in parts.items():
            merged.get_submodule(module).weight += weight * scale * (up @ down)
    tokens = token_batch([1, 5, 12, 30, 76], seed=3)
    state = {k: v.clone() for k, v in encoder.tower.state_dict().items()}
    with torch.inference_mode():
        plain = encoder.encode_tokens(tokens)
        with encoder.applying([(deltas, weight)]):
            text, pooled = encoder.encode_tokens(tokens)
        after = encoder.encode_tokens(tokens)
    hf_text, hf_pooled = hf_outputs(merged, tokens)
    assert rel_diff(text, hf_text) <= 1e-5 and rel_diff(pooled[:, 0], hf_pooled) <= 1e-5
    assert rel_diff(text, plain[0]) > 1e-2 and rel_diff(pooled, plain[1]) > 1e-2  # the LoRA does something
    assert torch.equal(after[0], plain[0]) and torch.equal(after[1], plain[1])  # and leaves nothing behind
    assert all(torch.equal(v, state[k]) for k, v in encoder.tower.state_dict().items())
    assert not any(m._forward_hooks for m in encoder.tower.modules())
    assert all(m.in_proj_lora == () for m in encoder.tower.modules() if isinstance(m, PACKED_ATTENTION))


def test_two_text_parts_compose_and_weights_scale(tmp_path, hf_and_encoder):
    hf, encoder = hf_and_encoder
    first_tensors, first_parts = text_lora_tensors(seed=7)
    half = {k: CHANGED[k] for k in ("text_model.encoder.layers.0.self_attn.q_proj", "text_projection")}
    second_tensors, second_parts = text_lora_tensors(half, seed=8, rank=2)
    first = read_lora(write(tmp_path / "a.safetensors", first_tensors))
    second = read_lora(write(tmp_path / "b.safetensors", second_tensors))
    merged = copy.deepcopy(hf)
    with torch.no_grad():
        for parts, weight in ((first_parts, -0.5), (second_parts, 1.25)):
            for module, (down, up, scale) in parts.items():
                merged.get_submodule(module).weight += weight * scale * (up @ down)
    tokens = token_batch([3, 40], seed=4)
    with (
        torch.inference_mode(),
        encoder.applying([(first.text_deltas(encoder), -0.5), (second.text_deltas(encoder), 1.25)]),
    ):
        text, pooled = encoder.encode_tokens(tokens)
    hf_text, hf_pooled = hf_outputs(merged, tokens)
    assert rel_diff(text, hf_text) <= 1e-5 and rel_diff(pooled[:, 0], hf_pooled) <= 1e-5


def test_text_parts_that_do_not_fit_are_refused_naming_the_file(tmp_path, hf_and_encoder):
    _, encoder = hf_and_encoder
    wrong_width = {"text_model.encoder.layers.0.mlp.fc1": (MLP, WIDTH + 8)}  # a LoRA for a wider CLIP
    path = write(tmp_path / "wide.safetensors", text_lora_tensors(wrong_width)[0])
    with pytest.raises(LoraError, match=r"wide\.safetensors: text encoder part: .*mlp\.c_fc.*do not fit"):
        read_lora(path).text_deltas(encoder)
    deeper = {"text_model.encoder.layers.5.mlp.fc1": (MLP, WIDTH)}  # layer 5 of a 2-layer encoder
    path = write(tmp_path / "deep.safetensors", text_lora_tensors(deeper)[0])
    with pytest.raises(LoraError, match=r"deep\.safetensors: .*layers_5_mlp_fc1 names no .*2-layer text encoder"):
        read_lora(path).text_deltas(encoder)
    bad_projection = {"text_projection": (PROJ + 1, WIDTH)}
    path = write(tmp_path / "proj.safetensors", text_lora_tensors(bad_projection)[0])
    with pytest.raises(
        LoraError, match=r"proj\.safetensors: text encoder part: lora_prior_te_text_projection .*do not fit"
    ):
        read_lora(path).text_deltas(encoder)
    half = {"lora_prior_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, WIDTH)}
    with pytest.raises(LoraError, match=r"half\.safetensors: .*mlp_fc1 lacks its lora_down or lora_up"):
        read_lora(write(tmp_path / "half.safetensors", half)).text_deltas(encoder)
    loha = {"lora_prior_te_text_model_encoder_layers_0_mlp_fc1.hada_w1_a": torch.ones(2, 2)}
    with pytest.raises(LoraError, match=r"loha\.safetensors: a LyCORIS \(LoHa/LoKr\) or DoRA file"):
        read_lora(write(tmp_path / "loha.safetensors", loha))


def test_pipeline_applies_a_text_encoder_lora_to_the_job_only(tmp_path, demo_models):
    """A LoRA with only a text-encoder part changes the image (through both stages' conditioning) and the next job
    without it is the plain one again; the same weight scales it as scales a Stage C part."""
    width, layers = DEMO_TEXT_CLIP["text_cfg"]["width"], DEMO_TEXT_CLIP["text_cfg"]["layers"]
    changed = {f"text_model.encoder.layers.{i}.self_attn.q_proj": (width, width) for i in range(layers)}
    changed["text_model.encoder.layers.0.mlp.fc1"] = (4 * width, width)
    changed["text_projection"] = (DEMO_TEXT_CLIP["embed_dim"], width)
    path = write(tmp_path / "te-only.safetensors", text_lora_tensors(changed, seed=11)[0])
    pipeline = Pipeline(ModelSet(demo_models))
    fast = {"stage_c": StageSettings(2, 4.0, 2.0), "stage_b": StageSettings(1, 1.1, 1.0), "width": 256, "height": 256}
    plain = GenerationRequest("a lighthouse", seed=5, **fast)
    baseline = pipeline.run(plain)[0].pixels
    with_lora = pipeline.run(plain.with_(loras=((str(path), 1.0),)))[0].pixels
    zero = pipeline.run(plain.with_(loras=((str(path), 0.0),)))[0].pixels
    assert not np.array_equal(with_lora, baseline)
    assert np.array_equal(zero, baseline)  # weight 0: no change at all
    assert np.array_equal(pipeline.run(plain)[0].pixels, baseline)
    tower = pipeline.models.get("text_encoder").tower
    assert not any(m._forward_hooks for m in tower.modules())
    assert all(getattr(m, "in_proj_lora", ()) == () for m in tower.modules() if isinstance(m, PACKED_ATTENTION))


def test_stage_c_lora_in_kohya_layout_still_reads_without_a_text_part(tmp_path):
    net = tiny_stage_c()
    g = torch.Generator().manual_seed(1)
    tensors = {
        "lora_unet_down_blocks_0_2_attention_attn_out_proj.lora_down.weight": torch.randn(2, 32, generator=g),
        "lora_unet_down_blocks_0_2_attention_attn_out_proj.lora_up.weight": torch.randn(32, 2, generator=g),
    }
    lora = read_lora(write(tmp_path / "unet.safetensors", tensors))
    assert not lora.has_text_part and lora.text_deltas(None) == []
    assert [d.module for d in lora.deltas(net)] == ["down_blocks.0.2.attention.attn.out_proj"]


def test_a_text_weight_of_its_own_scales_only_the_text_encoder_part(tmp_path, demo_models):
    """A LoRA with both parts at (weight 1, text weight 0) makes the image its Stage C part alone makes, and at
    (0, 1) the image its text-encoder part alone makes; A1111's ``<lora:name:TE:UNET>`` tag says the same."""
    pipeline = Pipeline(ModelSet(demo_models))
    width, layers = DEMO_TEXT_CLIP["text_cfg"]["width"], DEMO_TEXT_CLIP["text_cfg"]["layers"]
    changed = {f"text_model.encoder.layers.{i}.self_attn.q_proj": (width, width) for i in range(layers)}
    text_part = text_lora_tensors(changed, seed=11)[0]
    c = pipeline.models.get("stage_c").down_blocks[0][2].attention.attn.out_proj.weight.shape[0]
    g = torch.Generator().manual_seed(2)
    stage_c_part = {
        "lora_unet_down_blocks_0_2_attention_attn_out_proj.lora_down.weight": torch.randn(2, c, generator=g),
        "lora_unet_down_blocks_0_2_attention_attn_out_proj.lora_up.weight": torch.randn(c, 2, generator=g),
    }
    both = str(write(tmp_path / "both.safetensors", {**text_part, **stage_c_part}))
    te_only = str(write(tmp_path / "te-only.safetensors", text_part))
    c_only = str(write(tmp_path / "c-only.safetensors", stage_c_part))
    fast = {"stage_c": StageSettings(2, 4.0, 2.0), "stage_b": StageSettings(1, 1.1, 1.0), "width": 256, "height": 256}
    plain = GenerationRequest("a lighthouse", seed=5, **fast)

    def pixels(*loras, prompt="a lighthouse"):
        return pipeline.run(plain.with_(prompt=prompt, loras=loras))[0].pixels

    only_c, only_text, full = pixels((c_only, 1.0)), pixels((te_only, 1.0)), pixels((both, 1.0))
    assert not np.array_equal(only_c, only_text) and not np.array_equal(full, only_c)
    assert np.array_equal(pixels((both, 1.0, 0.0)), only_c)
    assert np.array_equal(pixels((both, 0.0, 1.0)), only_text)
    assert np.array_equal(pixels((both, 1.0, 1.0)), full)
    assert np.array_equal(pixels(prompt=f"a lighthouse <lora:{both}:0:1>"), only_c)
