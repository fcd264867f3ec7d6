"""The demo model set's tiny networks, with inputs to run them on."""

from __future__ import annotations

import torch

from cascade_studio.pipeline.demo import DEMO_NETWORKS, build_demo_network

_FILES = {
    "stage_c": "stage_c_lite.safetensors",
    "stage_b": "stage_b_lite.safetensors",
    "stage_a": "stage_a.safetensors",
    "effnet": "effnet_encoder.safetensors",
    "previewer": "previewer.safetensors",
    "controlnet_inpainting": "controlnet/inpainting.safetensors",
    "controlnet_super_resolution": "controlnet/super_resolution.safetensors",
}

#: name -> (network, constructor keywords): the demo model set's networks
TINY: dict[str, tuple[str, dict]] = {name: DEMO_NETWORKS[file] for name, file in _FILES.items()}


def build_tiny(name: str, seed: int = 0) -> torch.nn.Module:
    return build_demo_network(_FILES[name], seed)


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
                randn(2, 1, 768),
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
