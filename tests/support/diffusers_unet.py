"""diffusers' StableCascadeUNet as an independent oracle for our Stage B and Stage C.

Converts reference-style constructor keywords and state dicts to diffusers' naming: split each
packed attention ``in_proj`` into ``to_q/to_k/to_v``, rename ``out_proj`` to ``to_out.0`` and,
for Stage B, ``clip_mapper`` to ``clip_txt_pooled_mapper``.
"""

from __future__ import annotations

import torch

BLOCK_TYPES = {"C": "SDCascadeResBlock", "T": "SDCascadeTimestepBlock", "A": "SDCascadeAttnBlock"}


def _common_config(kw: dict) -> dict:
    return {
        "in_channels": kw["c_in"],
        "out_channels": kw["c_out"],
        "timestep_ratio_embedding_dim": kw["c_r"],
        "patch_size": kw["patch_size"],
        "conditioning_dim": kw["c_cond"],
        "block_out_channels": list(kw["c_hidden"]),
        "num_attention_heads": [max(n, 0) for n in kw["nhead"]],
        "down_num_layers_per_block": list(kw["blocks"][0]),
        "up_num_layers_per_block": list(kw["blocks"][1]),
        "down_blocks_repeat_mappers": list(kw["block_repeat"][0]),
        "up_blocks_repeat_mappers": list(kw["block_repeat"][1]),
        "block_types_per_layer": [[BLOCK_TYPES[c] for c in level] for level in kw["level_config"]],
        "kernel_size": kw["kernel_size"],
        "dropout": list(kw["dropout"]),
        "self_attn": kw["self_attn"],
        "timestep_conditioning_type": list(kw["t_conds"]),
    }


def stage_c_config(kw: dict) -> dict:
    cfg = _common_config(kw)
    cfg.update(
        clip_text_in_channels=kw["c_clip_text"],
        clip_text_pooled_in_channels=kw["c_clip_text_pooled"],
        clip_image_in_channels=kw["c_clip_img"],
        clip_seq=kw["c_clip_seq"],
        switch_level=list(kw["switch_level"]),
    )
    return cfg


def stage_b_config(kw: dict) -> dict:
    cfg = _common_config(kw)
    cfg.update(
        clip_text_pooled_in_channels=kw["c_clip"],
        clip_seq=kw["c_clip_seq"],
        effnet_in_channels=kw["c_effnet"],
        pixel_mapper_in_channels=kw["c_pixels"],
        switch_level=None,
    )
    return cfg


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if ".attention.attn.in_proj_" in key:
            prefix, kind = key.split(".attn.in_proj_")
            for name, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{kind}"] = chunk.clone()
            continue
        key = key.replace(".attention.attn.out_proj.", ".attention.to_out.0.")
        if key.startswith("clip_mapper."):
            key = "clip_txt_pooled_mapper." + key[len("clip_mapper.") :]
        out[key] = value.clone()
    return out


def to_diffusers(model: torch.nn.Module, kwargs: dict, stage: str):
    """Build diffusers' StableCascadeUNet holding ``model``'s weights (strictly loaded)."""
    from diffusers import StableCascadeUNet

    config = stage_c_config(kwargs) if stage == "c" else stage_b_config(kwargs)
    unet = StableCascadeUNet(**config)
    unet.load_state_dict(convert_state_dict(model.state_dict()), strict=True)
    return unet.eval()
