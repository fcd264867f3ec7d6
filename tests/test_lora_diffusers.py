"""diffusers/PEFT-layout LoRA files (what diffusers' ``save_lora_weights`` writes for a PEFT-trained
StableCascadeUNet, as SimpleTuner does): checked against diffusers' own StableCascadeUNet with the deltas merged into
its weights by hand."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from cascade_studio.networks.lora import apply_loras
from cascade_studio.pipeline.lora import LoraError, read_lora
from tests.support.diffusers_unet import to_diffusers
from tests.test_lora_text import CHANGED, text_lora_tensors
from tests.test_stage_bc import TINY, assert_close_to_scale, c_inputs, tiny_c


def write(path, tensors, metadata=None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def peft_tensors(oracle, prefix="prior.", rank=3, seed=0, names=None):
    """lora_A / lora_B for ``names`` (default: every Linear of diffusers' Stage C), in diffusers' module names."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in oracle.named_modules():
        if isinstance(module, torch.nn.Linear) and (names is None or name in names):
            tensors[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.2
            tensors[f"{prefix}{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.2
    return tensors


def merged(oracle, tensors, scale_of, weight=1.0, prefix="prior."):
    """diffusers' UNet with every delta added to its weights by hand: W + weight · scale · B @ A."""
    out = copy.deepcopy(oracle)
    with torch.no_grad():
        for key, down in tensors.items():
            if key.endswith(".lora_A.weight"):
                name = key[len(prefix) : -len(".lora_A.weight")]
                up = tensors[key.replace(".lora_A.", ".lora_B.")]
                out.get_submodule(name).weight += weight * scale_of(name) * (up @ down)
    return out


@torch.no_grad()
def test_every_stage_c_linear_in_diffusers_names_equals_diffusers_with_the_weights_merged(tmp_path):
    ours = tiny_c()
    oracle = to_diffusers(ours, TINY["stage_c"], "c")
    tensors = peft_tensors(oracle)
    config = {"prior.r": 3, "prior.lora_alpha": 6, "prior.alpha_pattern": {"kv_mapper.1": 1.5, "to_out.0": 3}}
    lora = read_lora(
        write(tmp_path / "simpletuner.safetensors", tensors, {"lora_adapter_metadata": json.dumps(config)})
    )
    assert lora.layout == "diffusers" and not lora.has_text_part
    deltas = lora.deltas(ours)
    assert len(deltas) == len(tensors) // 2
    by_source = {d.source: d for d in deltas}
    assert by_source["prior.down_blocks.0.2.attention.to_k"].module == "down_blocks.0.2.attention.attn"
    assert by_source["prior.down_blocks.0.2.attention.to_k"].rows == (128, 256)
    assert by_source["prior.up_blocks.1.2.attention.to_out.0"].module == "up_blocks.1.2.attention.attn.out_proj"

    def scale(name):
        return 1.5 / 3 if name.endswith("kv_mapper.1") else 3 / 3 if name.endswith("to_out.0") else 6 / 3

    x = c_inputs()
    plain = ours(*x)
    with apply_loras(ours, [(deltas, 0.6)]):
        with_lora = ours(*x)
    expected = merged(oracle, tensors, scale, weight=0.6)(
        x[0], x[1], clip_text_pooled=x[3], clip_text=x[2], clip_img=x[4]
    )
    assert_close_to_scale(with_lora, expected.sample)
    assert (with_lora - plain).abs().max() > 1e-2 * plain.abs().max()
    assert torch.equal(ours(*x), plain)


def test_scale_without_metadata_from_alpha_tensors_and_rslora(tmp_path):
    ours = tiny_c()
    oracle = to_diffusers(ours, TINY["stage_c"], "c")
    names = {"down_blocks.0.2.attention.to_q", "down_blocks.0.0.channelwise.0"}
    tensors = peft_tensors(oracle, prefix="unet.", rank=4, names=names)
    plain = read_lora(write(tmp_path / "plain.safetensors", tensors))
    assert {d.scale for d in plain.deltas(ours)} == {1.0}  # alpha = rank, as diffusers assumes
    with_alpha = {**tensors, "unet.down_blocks.0.2.attention.to_q.alpha": torch.tensor(2.0)}
    scales = {d.module: d.scale for d in read_lora(write(tmp_path / "alpha.safetensors", with_alpha)).deltas(ours)}
    assert scales == {"down_blocks.0.2.attention.attn": 0.5, "down_blocks.0.0.channelwise.0": 1.0}
    rs = {"unet.lora_alpha": 8, "unet.use_rslora": True}
    rslora = read_lora(write(tmp_path / "rs.safetensors", tensors, {"lora_adapter_metadata": json.dumps(rs)}))
    assert [d.scale for d in rslora.deltas(ours)] == pytest.approx([8 / math.sqrt(4)] * 2)


def test_text_encoder_part_in_diffusers_names_means_what_the_kohya_names_mean(tmp_path):
    """diffusers' and PEFT's names for the same text-encoder deltas give the same deltas as the kohya names, which
    tests/test_lora_text.py checks against transformers' CLIP with the weights merged by hand."""
    from cascade_studio.pipeline.conditioning import TextEncoder, build_text_tower
    from cascade_studio.pipeline.demo import randomize_
    from tests.test_conditioning import EOT, tiny_clip_config

    encoder = TextEncoder(randomize_(build_text_tower(tiny_clip_config()), 3), eot_token_id=EOT)
    kohya_tensors, _ = text_lora_tensors(seed=4)
    kohya = read_lora(write(tmp_path / "kohya.safetensors", kohya_tensors))
    parts = {".lora_down.weight": ".lora_linear_layer.down.weight", ".lora_up.weight": ".lora_linear_layer.up.weight"}
    diffusers_tensors, peft_tensors_ = {}, {}
    for module in CHANGED:
        stem = "lora_prior_te_" + module.replace(".", "_")
        for kohya_part, diffusers_part in parts.items():
            value = kohya_tensors[stem + kohya_part]
            diffusers_tensors[f"text_encoder.{module}{diffusers_part}"] = value
            peft_tensors_[f"{module}.lora_{'A' if 'down' in kohya_part else 'B'}.weight"] = value
        if stem + ".alpha" in kohya_tensors:  # the kohya file's per-module alphas, as alpha tensors
            diffusers_tensors[f"text_encoder.{module}.alpha"] = kohya_tensors[stem + ".alpha"]
            peft_tensors_[f"{module}.alpha"] = kohya_tensors[stem + ".alpha"]
    expected = {(d.module, d.rows, d.scale): (d.down, d.up) for d in kohya.text_deltas(encoder)}
    for name, tensors in (("diffusers", diffusers_tensors), ("peft", peft_tensors_)):
        lora = read_lora(write(tmp_path / f"{name}.safetensors", tensors))
        assert lora.layout == "diffusers" and lora.has_text_part
        got = {(d.module, d.rows, d.scale): (d.down, d.up) for d in lora.text_deltas(encoder)}
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k][0], v[0]) and torch.equal(got[k][1], v[1]) for k, v in expected.items())
        assert lora.deltas(tiny_c()) == []  # no Stage C part


def test_dora_and_broken_metadata_are_refused(tmp_path):
    ours = tiny_c()
    oracle = to_diffusers(ours, TINY["stage_c"], "c")
    tensors = peft_tensors(oracle, names={"down_blocks.0.2.attention.to_q"})
    dora = {**tensors, "prior.down_blocks.0.2.attention.to_q.lora_magnitude_vector": torch.ones(128)}
    with pytest.raises(LoraError, match=r"dora\.safetensors: a LyCORIS \(LoHa/LoKr\) or DoRA file"):
        read_lora(write(tmp_path / "dora.safetensors", dora))
    flagged = {"lora_adapter_metadata": json.dumps({"prior.use_dora": True})}
    with pytest.raises(LoraError, match=r"flagged\.safetensors: a DoRA LoRA"):
        read_lora(write(tmp_path / "flagged.safetensors", tensors, flagged))
    with pytest.raises(LoraError, match=r"broken\.safetensors: its lora_adapter_metadata is not JSON"):
        read_lora(write(tmp_path / "broken.safetensors", tensors, {"lora_adapter_metadata": "{nope"}))
