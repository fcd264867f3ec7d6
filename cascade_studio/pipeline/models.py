"""Which weight files a generation needs, where they are, and the loaded networks.

Files keep their official names (``stage_c_lite_bf16.safetensors`` …) in the weights folder. The
text encoder is ``text_encoder/model.safetensors`` (its path in stabilityai/stable-cascade, transformers
format), or else open_clip's full ViT-bigG-14 file under ``clip/``; the image encoder, which Stability AI
does not ship in the single-file release, lives under ``clip/`` in open_clip's safetensors format.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.request import MASK_MODES
from .checkpoints import load_network, read_header
from .control import CONTROLNET_ROLES
from .weights import IMAGE_ENCODER_FILE, OPEN_CLIP_TEXT_ENCODER_FILE, TEXT_ENCODER_FILE, entry_named, locate

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
    "text_encoder": [TEXT_ENCODER_FILE, OPEN_CLIP_TEXT_ENCODER_FILE],  # TextEncoder.from_file reads both layouts
    "image_encoder": [IMAGE_ENCODER_FILE],
}
#: the ControlNets (registry variant "controlnets"; they fit the full Stage C), by role
_CONTROLNETS = {role: [file] for role, (file, _, _) in CONTROLNET_ROLES.items()}
#: roles every mode needs; the others only for some modes
_ALWAYS = ("stage_c", "stage_b", "stage_a", "previewer", "text_encoder")
_BY_MODE = {
    "text": (),
    "variation": ("image_encoder",),
    "img2img": ("effnet",),
    "inpaint": ("effnet",),  # + the inpainting ControlNet with method "controlnet"
    "outpaint": ("effnet",),
    "canny": ("controlnet_canny",),
    "upscale": ("effnet", "controlnet_super_resolution"),
}


class MissingWeights(FileNotFoundError):
    """Weight files a request needs are not in the weights folder; the message lists them."""


def candidates(variant: str) -> dict[str, list[str]]:
    if variant not in _CANDIDATES:
        raise ValueError(f"variant must be 'lite' or 'full', not {variant!r}")
    return {**_CANDIDATES[variant], **_SHARED}


def _role_names(variant: str, role: str) -> list[str]:
    return _CONTROLNETS[role] if role in _CONTROLNETS else candidates(variant)[role]


_HINT = (
    "Download them with `cascade-studio download --variant {variant}` (from "
    "https://huggingface.co/stabilityai/stable-cascade, whose licence must be accepted there first, and the CLIP "
    "repositories), or copy them into that folder by hand, or try the app with `cascade-studio generate --demo` "
    "(tiny demo weights)."
)


def _locate(folder: Path, names: list[str]) -> Path | None:
    """The first of ``names`` in ``folder``, else the first already in the Hugging Face cache."""
    path = next((folder / n for n in names if (folder / n).is_file()), None)
    if path is not None:
        return path

    for name in names:
        try:
            found = locate(entry_named(name), folder)
        except KeyError:  # not a registry file
            continue
        if found is not None:
            return found.path
    return None


def find_files(folder: str | Path, variant: str, mode: str = "text", method: str | None = None) -> dict[str, Path]:
    """The files for ``variant`` and ``mode`` in ``folder``; raises :class:`MissingWeights`. Inpaint and outpaint
    need the inpainting ControlNet only with ``method="controlnet"``."""
    folder = Path(folder)
    roles = (*_ALWAYS, *_BY_MODE[mode])
    if mode in MASK_MODES and method == "controlnet":
        roles = (*roles, "controlnet_inpainting")
    found = {role: _locate(folder, _role_names(variant, role)) for role in roles}
    missing = [_role_names(variant, role)[0] for role, path in found.items() if path is None]
    if missing:
        raise MissingWeights(
            f"missing in the weights folder {folder}: {', '.join(missing)}. {_HINT.format(variant=variant)}"
        )
    return found


MEMORY_MODES = {
    "resident": "all resident (every network stays on the device)",
    "sequential": "one stage at a time (each network is on the device only while its stage runs)",
}
_FLOAT32_ROLES = ("stage_a", "previewer", "effnet")


@dataclass
class ModelSet:
    """The networks of one weights folder, each loaded on first use.

    Stage B, Stage C and the CLIP encoders run in ``dtype``; Stage A, the EfficientNet encoder
    and the Previewer (small float32 files) always run in float32.

    ``memory="resident"`` keeps every loaded network on the device. ``"sequential"`` puts a
    network on the device only inside :meth:`using`: on a GPU it waits in CPU memory between its
    stages; on the CPU it is freed and read from disk again next time. The text encoder is thus
    released as soon as the prompts are encoded. Not thread-safe: owned by one thread.
    """

    folder: Path
    variant: str = "lite"
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    memory: str = "resident"

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.device = torch.device(self.device)
        candidates(self.variant)  # validates the variant
        if self.memory not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {', '.join(MEMORY_MODES)}, not {self.memory!r}")
        self._networks: dict[str, torch.nn.Module] = {}

    def check(self, mode: str, method: str | None = None) -> dict[str, Path]:
        return find_files(self.folder, self.variant, mode, method)

    def path(self, role: str) -> Path | None:
        """The file for ``role``, or None when it is not there (nothing is loaded)."""
        return _locate(self.folder, _role_names(self.variant, role))

    def _path(self, role: str) -> Path:
        names = _role_names(self.variant, role)
        path = _locate(self.folder, names)
        if path is None:
            raise MissingWeights(
                f"missing in the weights folder {self.folder}: {names[0]}. {_HINT.format(variant=self.variant)}"
            )
        return path

    @property
    def _parking(self) -> torch.device | None:
        """Where a sequential-mode network waits between its stages (None: it is freed)."""
        return torch.device("cpu") if self.device.type != "cpu" else None

    def _load(self, role: str) -> torch.nn.Module:
        device = self.device if self.memory == "resident" else (self._parking or self.device)
        dtype = torch.float32 if role in _FLOAT32_ROLES else self.dtype
        path = self._path(role)
        if role == "text_encoder":
            from .conditioning import TextEncoder

            return TextEncoder.from_file(path, device=device, dtype=dtype)
        if role == "image_encoder":
            from .conditioning import ImageEncoder

            return ImageEncoder.from_file(path, device=device, dtype=dtype)
        network = "controlnet" if role.startswith("controlnet_") else role
        return load_network(path, dtype=dtype, device=device, expect=network).module

    def get(self, role: str) -> torch.nn.Module:
        """The network for ``role``, loaded if needed (outside :meth:`using` it may be parked)."""
        if role not in self._networks:
            self._networks[role] = self._load(role)
        return self._networks[role]

    @contextlib.contextmanager
    def using(self, *roles: str) -> Iterator[tuple[torch.nn.Module, ...]]:
        """The networks for ``roles``, on the device for the duration of the block."""
        modules = tuple(self.get(role) for role in roles)
        if self.memory == "resident":
            yield modules
            return
        try:
            for module in modules:
                module.to(self.device)
            yield modules
        finally:
            for role in roles:
                self.release(role)

    def release(self, role: str) -> None:
        module = self._networks.get(role)
        if module is None:
            return
        if self._parking is None:
            del self._networks[role]
        else:
            module.to(self._parking)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def loaded(self) -> dict[str, torch.device]:
        """Role → device of every network currently held in memory."""
        return {role: next(m.parameters()).device for role, m in self._networks.items()}

    @property
    def stage_c_widths(self) -> frozenset[int]:
        """The widths of Stage C's attentions (each in_proj_weight is 3c × c), read from the file's header without
        loading it; empty when the file is missing."""
        path = self.path("stage_c")
        if path is None:
            return frozenset()
        tensors = read_header(path).tensors
        return frozenset(t.shape[1] for k, t in tensors.items() if k.endswith(".attention.attn.in_proj_weight"))

    @property
    def c_clip_img(self) -> int:
        """Width of Stage C's image embedding, read from the file without loading it."""
        return read_header(self._path("stage_c")).tensors["clip_img_mapper.weight"].shape[1]
