"""Access to the shared checkpoint manifests (key/shape contracts of the released files)."""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "checkpoint-manifests"

#: manifest name -> (our network name, released variant)
RELEASED_CHECKPOINTS = {
    "stage_c": ("stage_c", "full"),
    "stage_c_lite": ("stage_c", "lite"),
    "stage_b": ("stage_b", "full"),
    "stage_b_lite": ("stage_b", "lite"),
    "stage_a": ("stage_a", "released"),
    "effnet_encoder": ("effnet", "released"),
    "previewer": ("previewer", "released"),
    "controlnet_inpainting": ("controlnet", "inpainting"),
    "controlnet_canny": ("controlnet", "canny"),
    "controlnet_super_resolution": ("controlnet", "super_resolution"),
}


def load_manifest(name: str) -> dict:
    return json.loads((MANIFEST_DIR / f"{name}.json").read_text())


def manifest_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return {t["key"]: tuple(t["shape"]) for t in load_manifest(name)["tensors"]}
