"""Hugging Face ``CLIPTextModelWithProjection`` as a test oracle for our open_clip-based text encoder.

The reference conditions Stable Cascade with the Hugging Face model; :func:`hf_text_model` builds it
from a (tiny) ``CLIPTextConfig`` and copies an open_clip ``TextTransformer``'s weights into it.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_BLOCK_NAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def open_clip_text_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip text tower keys -> ``CLIPTextModelWithProjection`` keys (q/k/v split, projection transposed)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_final."):
            out["text_model.final_layer_norm." + key.split(".", 1)[1]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()  # open_clip: x @ P; HF: Linear(x) = x @ W.T
        elif m := _BLOCK.fullmatch(key):
            i, rest = m.groups()
            prefix = f"text_model.encoder.layers.{i}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight / bias
                for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part
                continue
            module, kind = rest.rsplit(".", 1)
            out[prefix + _BLOCK_NAMES[module] + "." + kind] = value
        elif key == "attn_mask":
            continue
        else:
            raise KeyError(f"unexpected open_clip text key {key!r}")
    return out


def hf_text_model(tower: nn.Module, config_kwargs: dict, **overrides) -> nn.Module:
    """A float32 ``CLIPTextModelWithProjection`` with ``tower``'s weights (strict load)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(**{**config_kwargs, **overrides})
    model = CLIPTextModelWithProjection(config).eval()
    state = {k: v for k, v in tower.state_dict().items() if k != "attn_mask"}
    missing, unexpected = model.load_state_dict(open_clip_text_to_hf(state), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise KeyError(f"open_clip -> HF conversion: missing {missing}, unexpected {unexpected}")
    return model


#: transformers ``CLIPTextConfig`` of Stability AI's ``text_encoder/config.json`` in stabilityai/stable-cascade
#: (CLIP ViT-bigG/14's text tower; the file beside it, ``model.safetensors``, is bf16).
STABLE_CASCADE_TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "projection_dim": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-05,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}


def random_hf_text_model(config_kwargs: dict, seed: int = 0, **overrides) -> nn.Module:
    """A float32 ``CLIPTextModelWithProjection`` whose every parameter is random (layer norms included)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from cascade_studio.pipeline.demo import randomize_

    model = CLIPTextModelWithProjection(CLIPTextConfig(**{**config_kwargs, **overrides}))
    return randomize_(model, seed)
