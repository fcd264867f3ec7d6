"""Tiny random-weight versions of every network, with inputs to run them on."""

from __future__ import annotations

import torch

from cascade_studio.pipeline.checkpoints import NETWORKS
from tests.support.configs import bench_config
from tests.support.random_weights import randomize_

_BENCH = bench_config("tiny")
_TINY_EFFNET_STAGES = [["fused", 1, 3, 1, 8, 8, 1], ["fused", 4, 3, 2, 8, 16, 1], ["mb", 4, 3, 2, 16, 24, 1]]

#: name -> (network, constructor keywords)
TINY: dict[str, tuple[str, dict]] = {
    "stage_c": ("stage_c", _BENCH["stage_c"]),
    "stage_b": ("stage_b", _BENCH["stage_b"]),
    "stage_a": ("stage_a", _BENCH["stage_a"]),
    "effnet": ("effnet", {"c_latent": 16, "stages": _TINY_EFFNET_STAGES, "last_channels": 32}),
    "previewer": ("previewer", {"c_in": 16, "c_hidden": 32, "c_out": 3}),
    "controlnet_inpainting": (
        "controlnet",
        {"c_in": 4, "c_proj": 128, "proj_blocks": [0, 3], "backbone_stages": _TINY_EFFNET_STAGES, "c_embd": 32},
    ),
    "controlnet_super_resolution": (
        "controlnet",
        {
            "c_in": 16,
            "c_proj": 128,
            "proj_blocks": [1, 2],
            "bottleneck_mode": "large",
            "large_c_wide": 32,
            "large_c_hidden": 16,
            "large_depth": 1,
            "c_embd": 32,
        },
    ),
}


def build_tiny(name: str, seed: int = 0) -> torch.nn.Module:
    network, kwargs = TINY[name]
    return randomize_(NETWORKS[network].build_class()(**kwargs), seed)


def run_tiny(name: str, module: torch.nn.Module, seed: int = 0) -> list[torch.Tensor]:
    """Run ``module`` (a network of kind ``name``) on fixed inputs; returns its output tensors."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(module.parameters()).dtype

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    with torch.no_grad():
        if name == "stage_c":
            kw = TINY[name][1]
            out = module(
                randn(2, 16, 6, 6),
                torch.rand(2, generator=g).to(dtype),
                randn(2, 77, kw["c_clip_text"]),
                randn(2, 1, kw["c_clip_text_pooled"]),
                randn(2, 1, kw["c_clip_img"]),
            )
            return [out]
        if name == "stage_b":
            kw = TINY[name][1]
            return [
                module(
                    randn(2, 4, 32, 32),
                    torch.rand(2, generator=g).to(dtype),
                    randn(2, 16, 6, 6),
                    randn(2, 1, kw["c_clip"]),
                )
            ]
        if name == "stage_a":
            return [module.decode(randn(1, 4, 16, 16)), module.encode(randn(1, 3, 64, 64))[0]]
        if name == "effnet":
            return [module(randn(1, 3, 64, 64))]
        if name == "previewer":
            return [module(randn(1, 16, 6, 6))]
        channels = TINY[name][1]["c_in"]
        return [t for t in module(randn(1, channels, 64, 64)) if t is not None]
