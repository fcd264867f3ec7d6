"""Demo weights: tiny random-weight networks with the official file and key names.

`cascade-studio generate --demo` (and the test suite) build this model set in seconds, offline,
and run the real loader and pipeline on it, so every screen can be tried before a 7 GB
download. Demo weights produce noise, not pictures; everything made with them says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from .checkpoints import NETWORKS, save_network

#: the demo set's LoRA: reference layout, rank 4, alpha 1 (scale 1/4)
DEMO_LORA = {"file": "lora/demo-style.safetensors", "rank": 4, "std": 2.0}
DEMO_NOTICE = "demo weights (tiny random networks): the images are noise, not pictures"

# Stride 32 like EfficientNetV2-S: a stride-2 stem and four stride-2 stages.
_EFFNET_STAGES = [
    ["fused", 1, 3, 1, 8, 8, 1],
    ["fused", 4, 3, 2, 8, 16, 1],
    ["fused", 4, 3, 2, 16, 16, 1],
    ["mb", 4, 3, 2, 16, 24, 1],
    ["mb", 4, 3, 2, 24, 24, 1],
]

#: official file name -> (network, constructor keywords); the Stage B/C layouts are the shared
#: benchmark's "tiny" configurations (the real block structure at tiny widths).
DEMO_NETWORKS: dict[str, tuple[str, dict]] = {
    "stage_c_lite.safetensors": (
        "stage_c",
        {
            "c_cond": 128,
            "c_hidden": [128, 128],
            "nhead": [2, 2],
            "blocks": [[1, 1], [1, 1]],
            "c_clip_text": 32,
            "c_clip_text_pooled": 32,
        },
    ),
    "stage_b_lite.safetensors": (
        "stage_b",
        {
            "c_cond": 128,
            "c_hidden": [16, 32, 64, 128],
            "nhead": [-1, -1, 1, 2],
            "blocks": [[1, 1, 1, 1], [1, 1, 1, 1]],
            "block_repeat": [[1, 1, 1, 1], [3, 3, 2, 2]],
            "c_clip": 32,
        },
    ),
    "stage_a.safetensors": ("stage_a", {"bottleneck_blocks": 1, "c_hidden": 64, "codebook_size": 64}),
    "effnet_encoder.safetensors": ("effnet", {"c_latent": 16, "stages": _EFFNET_STAGES, "last_channels": 32}),
    "previewer.safetensors": ("previewer", {"c_in": 16, "c_hidden": 32, "c_out": 3}),
    "controlnet/inpainting.safetensors": (
        "controlnet",
        {"c_in": 4, "c_proj": 128, "proj_blocks": [0, 3], "backbone_stages": _EFFNET_STAGES, "c_embd": 32},
    ),
    "controlnet/canny.safetensors": (
        "controlnet",
        {"c_in": 1, "c_proj": 128, "proj_blocks": [0, 3], "backbone_stages": _EFFNET_STAGES, "c_embd": 32},
    ),
    "controlnet/super_resolution.safetensors": (
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


#: open_clip model configs of the demo CLIP encoders (tiny towers, the real tokenizer's vocabulary;
#: the image embedding keeps the real 768 width that Stage C expects). The text encoder is written in
#: the released file's transformers layout, the image encoder in open_clip's.
DEMO_TEXT_CLIP = {
    "embed_dim": 32,
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}
DEMO_IMAGE_CLIP = {
    "embed_dim": 768,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
}


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a deterministic, non-zero random value and put ``module`` in eval mode.

    The reference zero-initialises GRN, TimestepBlock and output layers, which would hide wiring
    mistakes and make demo outputs constant; values are scaled by fan-in so deep tiny networks keep
    their activations in a sane range. BatchNorm statistics get plausible values.
    """
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        if p.dim() > 1:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    persistent = set(module.state_dict())  # non-persistent buffers (attention masks …) stay as built
    for name, b in module.named_buffers():
        if name not in persistent:
            continue
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
        elif b.is_floating_point():
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return module.eval()


def build_demo_network(file_name: str, seed: int = 0) -> nn.Module:
    network, kwargs = DEMO_NETWORKS[file_name]
    return randomize_(NETWORKS[network].build_class()(**kwargs), seed)


def write_demo_models(folder: str | Path, *, seed: int = 0) -> Path:
    """Write the demo model set into ``folder`` (skipped when an identical set is already there)."""
    from .weights import TEXT_ENCODER_FILE

    folder = Path(folder)
    stamp = folder / "DEMO_WEIGHTS.json"
    wanted = json.loads(
        json.dumps(
            {
                "seed": seed,
                "networks": DEMO_NETWORKS,
                "text": DEMO_TEXT_CLIP,
                "text_file": TEXT_ENCODER_FILE,
                "image": DEMO_IMAGE_CLIP,
                "notice": DEMO_NOTICE,
                "lora": DEMO_LORA,
            }
        )
    )
    try:
        if json.loads(stamp.read_text()) == wanted:
            return folder
    except (OSError, ValueError):
        pass  # no stamp, or a half-written one: (re)build
    for i, (name, (network, kwargs)) in enumerate(sorted(DEMO_NETWORKS.items())):
        save_network(build_demo_network(name, seed + i), folder / name, network, kwargs)
    _write_demo_clip(folder, seed)
    _write_demo_lora(folder, seed)
    stamp.write_text(json.dumps(wanted, indent=1))
    return folder


def _write_demo_lora(folder: Path, seed: int) -> None:
    """A reference-format LoRA (``weights.<i>.lora_down/lora_up`` over the attention matrices) for the demo
    Stage C, so ``--demo`` can try ``<lora:demo-style:0.8>``."""
    from safetensors.torch import save_file

    from .lora import reference_lora_tensors

    network = build_demo_network("stage_c_lite.safetensors", seed)
    tensors = reference_lora_tensors(network, rank=DEMO_LORA["rank"], seed=seed + 200, std=DEMO_LORA["std"])
    path = folder / DEMO_LORA["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"lora_alpha": "1"})


def _write_demo_clip(folder: Path, seed: int) -> None:
    from .conditioning import build_text_tower, build_vision_tower, save_clip, save_hf_text
    from .weights import IMAGE_ENCODER_FILE, TEXT_ENCODER_FILE

    text = randomize_(build_text_tower(DEMO_TEXT_CLIP), seed + 100)
    save_hf_text(text.state_dict(), folder / TEXT_ENCODER_FILE, DEMO_TEXT_CLIP)
    vision = randomize_(build_vision_tower(DEMO_IMAGE_CLIP), seed + 101)
    save_clip({f"visual.{k}": v for k, v in vision.state_dict().items()}, folder / IMAGE_ENCODER_FILE, DEMO_IMAGE_CLIP)
