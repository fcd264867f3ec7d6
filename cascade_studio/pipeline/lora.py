"""Stage C LoRA files: find them, read them (safetensors only), check they fit, turn them into deltas.

Two layouts are read:

* **reference** (Stability AI ``modules/lora.py`` / ``train/train_c_lora.py``, spec §12): ``weights.<i>.lora_down``
  (rank × in) and ``weights.<i>.lora_up`` (out × rank), the i-th entry following Stage C's module order over the
  ``.attn`` modules with each attention's ``out_proj`` before its packed ``in_proj_weight``; scale ``alpha / rank``
  with alpha 1 (a ``lora_alpha`` entry in the safetensors metadata overrides it). Optional learned token
  embeddings ``embeddings.embeddings`` (n × width) and ``embeddings.indices`` (int64 token ids) are read and
  checked; see :attr:`LoraFile.token_embeddings`.
* **kohya / ComfyUI** (``lora_prior_unet_<module path with "_" for ".">.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha``, also with the plain ``lora_unet_`` prefix, as ComfyUI's ``comfy/lora.py`` maps them for Stable
  Cascade): module paths are the reference Stage C names, with each attention's q, k and v as separate
  ``…attention_attn_to_q`` / ``to_k`` / ``to_v`` (ComfyUI's split attention) mapped onto the thirds of our packed
  ``in_proj_weight``, and any Linear layer (``out_proj``, ``kv_mapper_1``, ``channelwise_0`` …) as itself.
  Scale ``alpha / rank`` (1 when no alpha).

Anything else (pickle files, other models' keys, text-encoder LoRA parts, wrong shapes) is refused with a
:class:`LoraError` naming the file and the problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..networks.common import MultiheadAttention
from ..networks.lora import LoraDelta, check_deltas
from .checkpoints import CheckpointError, read_header

LORA_FOLDER = "lora"
_KOHYA = re.compile(r"^(lora_prior_unet_|lora_unet_)(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_REFERENCE = re.compile(r"^weights\.(\d+)\.(lora_down|lora_up)$")


class LoraError(ValueError):
    """A LoRA file is missing, unreadable or does not fit this Stage C; the message names the file."""


@dataclass
class LoraFile:
    path: Path
    layout: str  # "reference" or "kohya"
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def token_embeddings(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The reference format's learned token offsets (n × width, int64 ids), or None. Not applied to the text
        encoder yet: the file does not name the tokens it adds (the trainer's ``train_tokens`` config does)."""
        if "embeddings.embeddings" in self.tensors:
            return self.tensors["embeddings.embeddings"], self.tensors["embeddings.indices"]
        return None

    def deltas(self, network: nn.Module) -> list[LoraDelta]:
        """The deltas for ``network`` (a Stage C); raises :class:`LoraError` when the file does not fit it."""
        try:
            deltas = self._reference(network) if self.layout == "reference" else self._kohya(network)
            check_deltas(network, deltas)
        except (ValueError, KeyError) as exc:
            raise LoraError(f"LoRA {self.path}: {exc}") from None
        return deltas

    def _reference(self, network: nn.Module) -> list[LoraDelta]:
        slots = reference_slots(network)
        count = len({int(_REFERENCE.match(k).group(1)) for k in self.tensors if _REFERENCE.match(k)})
        if count != len(slots):
            raise ValueError(
                f"it holds {count} LoRA weight pairs but this Stage C has {len(slots)} attention matrices "
                "(a LoRA for another Stage C variant, or trained with other module_filters?)"
            )
        alpha = float(self.metadata.get("lora_alpha", 1.0))
        out = []
        for i, (module, rows) in enumerate(slots):
            down, up = self.tensors[f"weights.{i}.lora_down"], self.tensors[f"weights.{i}.lora_up"]
            out.append(LoraDelta(module, down, up, alpha / down.shape[0], rows))
        return out

    def _kohya(self, network: nn.Module) -> list[LoraDelta]:
        lookup: dict[str, tuple[str, tuple[int, int] | None]] = {}
        for name, module in network.named_modules():
            flat = name.replace(".", "_")
            if isinstance(module, nn.Linear):
                lookup[flat] = (name, None)
            elif isinstance(module, MultiheadAttention):
                c = module.in_proj_weight.shape[1]
                for j, part in enumerate(("to_q", "to_k", "to_v")):
                    lookup[f"{flat}_{part}"] = (name, (j * c, (j + 1) * c))
                lookup[f"{flat}_in_proj"] = (name, (0, 3 * c))
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in self.tensors.items():
            m = _KOHYA.match(key)
            groups.setdefault(m.group(2), {})[m.group(3)] = tensor
        out = []
        for flat, parts in sorted(groups.items()):
            if flat not in lookup:
                raise ValueError(
                    f"{flat} names no Linear layer or attention of this Stage C (a LoRA for another model?)"
                )
            if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
                raise ValueError(f"{flat} lacks its lora_down or lora_up weight")
            down, up = parts["lora_down.weight"], parts["lora_up.weight"]
            if down.ndim == 4 and down.shape[2:] == (1, 1) and up.ndim == 4 and up.shape[2:] == (1, 1):
                down, up = down.flatten(1), up.flatten(1)
            rank = down.shape[0]
            alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
            module, rows = lookup[flat]
            out.append(LoraDelta(module, down, up, alpha / rank, rows))
        return out


def reference_slots(network: nn.Module) -> list[tuple[str, tuple[int, int] | None]]:
    """The reference format's ``weights.<i>`` targets in order: per attention (Stage C module order), its
    ``out_proj`` (a Linear) and then its packed ``in_proj_weight`` (all 3c rows)."""
    slots: list[tuple[str, tuple[int, int] | None]] = []
    for name, module in network.named_modules():
        if isinstance(module, MultiheadAttention) and ".attn" in name:
            slots.append((f"{name}.out_proj", None))
            slots.append((name, (0, module.in_proj_weight.shape[0])))
    return slots


def reference_lora_tensors(
    network: nn.Module, rank: int = 4, seed: int = 0, std: float = 1.0
) -> dict[str, torch.Tensor]:
    """Random reference-format LoRA tensors for ``network`` (the demo set's LoRA and the tests use them)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (module, rows) in enumerate(reference_slots(network)):
        target = network.get_submodule(module)
        out, inp = (rows[1] - rows[0], target.in_proj_weight.shape[1]) if rows else tuple(target.weight.shape)
        tensors[f"weights.{i}.lora_down"] = torch.randn(rank, inp, generator=gen) * std / inp**0.5
        tensors[f"weights.{i}.lora_up"] = torch.randn(out, rank, generator=gen) * std
    return tensors


def find_lora(name: str, models_dir: str | Path) -> Path:
    """The file for ``name``: an existing path as given, else ``<models_dir>/lora/<name>[.safetensors]``."""
    given = Path(name).expanduser()
    if given.is_absolute() or given.suffix:
        candidates = [given] if given.is_absolute() else [Path(models_dir) / LORA_FOLDER / given, given]
    else:
        candidates = [Path(models_dir) / LORA_FOLDER / f"{name}.safetensors"]
    for path in candidates:
        if path.is_file():
            return path
    folder = Path(models_dir) / LORA_FOLDER
    known = list_loras(models_dir)
    raise LoraError(
        f"LoRA {name!r} not found (looked for {', '.join(str(p) for p in candidates)}); "
        + (f"the LoRA folder holds: {', '.join(known)}" if known else f"put LoRA files in {folder}")
    )


def list_loras(models_dir: str | Path) -> list[str]:
    folder = Path(models_dir) / LORA_FOLDER
    return sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def read_lora(path: str | Path) -> LoraFile:
    """Read and check one LoRA file (safetensors only; the header is checked before any tensor is used)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise LoraError(
            f"LoRA {path}: only .safetensors files are read (pickle files such as .ckpt/.pt/.bin can run code "
            "when loaded, so they are refused)"
        )
    try:
        read_header(path)  # size, header and offsets checked before any tensor is read
    except CheckpointError as exc:
        raise LoraError(f"LoRA {exc}") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise LoraError(f"LoRA {path}: not a readable safetensors file ({exc})") from None
    if not tensors:
        raise LoraError(f"LoRA {path}: the file holds no tensors")
    keys = set(tensors)
    if all(_REFERENCE.match(k) or k in ("embeddings.embeddings", "embeddings.indices") for k in keys):
        layout = "reference"
        ids = sorted({int(_REFERENCE.match(k).group(1)) for k in keys if _REFERENCE.match(k)})
        if not ids:
            raise LoraError(f"LoRA {path}: it holds token embeddings but no weights.<i>.lora_down/lora_up")
        for i in range(len(ids)):
            for part in ("lora_down", "lora_up"):
                if f"weights.{i}.{part}" not in keys:
                    raise LoraError(f"LoRA {path}: weights.{i}.{part} is missing (entries must be numbered 0…n-1)")
        if ("embeddings.embeddings" in keys) != ("embeddings.indices" in keys):
            raise LoraError(f"LoRA {path}: embeddings.embeddings and embeddings.indices come together")
        if "embeddings.indices" in keys:
            emb, idx = tensors["embeddings.embeddings"], tensors["embeddings.indices"]
            if idx.dtype != torch.int64 or idx.ndim != 1 or emb.ndim != 2 or emb.shape[0] != idx.shape[0]:
                raise LoraError(
                    f"LoRA {path}: token embeddings must be (n × width) with n int64 indices "
                    f"(got {tuple(emb.shape)} and {tuple(idx.shape)} {idx.dtype})"
                )
    elif all(_KOHYA.match(k) for k in keys):
        layout = "kohya"
    else:
        odd = sorted(k for k in keys if not (_REFERENCE.match(k) or _KOHYA.match(k)))[:3]
        raise LoraError(
            f"LoRA {path}: unknown key layout (e.g. {', '.join(odd)}); read are the reference Stable Cascade layout "
            "(weights.<i>.lora_down/lora_up) and the kohya/ComfyUI layout (lora_prior_unet_….lora_down.weight); "
            "text-encoder LoRA parts (lora_te…) are not supported"
        )
    for key, tensor in tensors.items():
        if key != "embeddings.indices" and not tensor.is_floating_point():
            raise LoraError(f"LoRA {path}: {key} is {tensor.dtype}, not a floating-point tensor")
    return LoraFile(path, layout, tensors, metadata)


class LoraCache:
    """Read LoRA files once while they are unchanged (keyed by path, size and modification time)."""

    def __init__(self, limit: int = 8):
        self.limit = limit
        self._files: dict[tuple[str, int, int], LoraFile] = {}

    def get(self, path: Path) -> LoraFile:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._files:
            if len(self._files) >= self.limit:
                self._files.pop(next(iter(self._files)))
            self._files[key] = read_lora(path)
        return self._files[key]
