"""Which weight files a generation needs, where they are, and the loaded networks.

Files keep their official names (``stage_c_lite_bf16.safetensors`` …) in the weights folder. The
two CLIP encoders, which Stability AI does not ship in the single-file release, live under
``clip/`` in open_clip's safetensors format.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import load_network

TEXT_ENCODER_FILE = "clip/ViT-bigG-14-laion2b_s39b_b160k.safetensors"
IMAGE_ENCODER_FILE = "clip/ViT-L-14-openai.safetensors"

#: role -> candidate file names, preferred first, per variant
_CANDIDATES = {
    "lite": {
        "stage_c": ["stage_c_lite_bf16.safetensors", "stage_c_lite.safetensors"],
        "stage_b": ["stage_b_lite_bf16.safetensors", "stage_b_lite.safetensors"],
    },
    "full": {
        "stage_c": ["stage_c_bf16.safetensors", "stage_c.safetensors"],
        "stage_b": ["stage_b_bf16.safetensors", "stage_b.safetensors"],
    },
}
_SHARED = {
    "stage_a": ["stage_a.safetensors"],
    "previewer": ["previewer.safetensors"],
    "effnet": ["effnet_encoder.safetensors"],
    "text_encoder": [TEXT_ENCODER_FILE],
    "image_encoder": [IMAGE_ENCODER_FILE],
}
#: roles every mode needs; the others only for some modes
_ALWAYS = ("stage_c", "stage_b", "stage_a", "previewer", "text_encoder")
_BY_MODE = {"text": (), "variation": ("image_encoder",), "img2img": ("effnet",)}


class MissingWeights(FileNotFoundError):
    """Weight files a request needs are not in the weights folder; the message lists them."""


def candidates(variant: str) -> dict[str, list[str]]:
    if variant not in _CANDIDATES:
        raise ValueError(f"variant must be 'lite' or 'full', not {variant!r}")
    return {**_CANDIDATES[variant], **_SHARED}


_HINT = (
    "Download them from https://huggingface.co/stabilityai/stable-cascade (CLIP encoders: see docs/formats.md) "
    "into that folder, or try the app with `cascade-studio generate --demo` (tiny demo weights)."
)


def _locate(folder: Path, names: list[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def find_files(folder: str | Path, variant: str, mode: str = "text") -> dict[str, Path]:
    """The files for ``variant`` and ``mode`` in ``folder``; raises :class:`MissingWeights`."""
    folder = Path(folder)
    names = candidates(variant)
    roles = (*_ALWAYS, *_BY_MODE[mode])
    found = {role: _locate(folder, names[role]) for role in roles}
    missing = [names[role][0] for role, path in found.items() if path is None]
    if missing:
        raise MissingWeights(f"missing in the weights folder {folder}: {', '.join(missing)}. {_HINT}")
    return found


@dataclass
class ModelSet:
    """The networks of one weights folder, each loaded on first use.

    Stage B, Stage C and the CLIP encoders run in ``dtype``; Stage A, the EfficientNet encoder
    and the Previewer (small float32 files) always run in float32.
    """

    folder: Path
    variant: str = "lite"
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.device = torch.device(self.device)
        candidates(self.variant)  # validates the variant

    def check(self, mode: str) -> dict[str, Path]:
        return find_files(self.folder, self.variant, mode)

    def _path(self, role: str) -> Path:
        names = candidates(self.variant)[role]
        path = _locate(self.folder, names)
        if path is None:
            raise MissingWeights(f"missing in the weights folder {self.folder}: {names[0]}. {_HINT}")
        return path

    def _load(self, role: str, dtype: torch.dtype) -> torch.nn.Module:
        return load_network(self._path(role), dtype=dtype, device=self.device, expect=role).module

    @functools.cached_property
    def stage_c(self) -> torch.nn.Module:
        return self._load("stage_c", self.dtype)

    @functools.cached_property
    def stage_b(self) -> torch.nn.Module:
        return self._load("stage_b", self.dtype)

    @functools.cached_property
    def stage_a(self) -> torch.nn.Module:
        return self._load("stage_a", torch.float32)

    @functools.cached_property
    def previewer(self) -> torch.nn.Module:
        return self._load("previewer", torch.float32)

    @functools.cached_property
    def effnet(self) -> torch.nn.Module:
        return self._load("effnet", torch.float32)

    @functools.cached_property
    def text_encoder(self):
        from .conditioning import TextEncoder

        return TextEncoder.from_file(self._path("text_encoder"), device=self.device, dtype=self.dtype)

    @functools.cached_property
    def image_encoder(self):
        from .conditioning import ImageEncoder

        return ImageEncoder.from_file(self._path("image_encoder"), device=self.device, dtype=self.dtype)

    @property
    def c_clip_img(self) -> int:
        return self.stage_c.clip_img_mapper.in_features
