"""Stage C LoRA files: find them, read them (safetensors only), check they fit, turn them into deltas.

Three layouts are read:

* **reference** (Stability AI ``modules/lora.py`` / ``train/train_c_lora.py``, spec §12): ``weights.<i>.lora_down``
  (rank × in) and ``weights.<i>.lora_up`` (out × rank), the i-th entry following Stage C's module order over the
  ``.attn`` modules with each attention's ``out_proj`` before its packed ``in_proj_weight``; scale ``alpha / rank``
  with alpha 1 (a ``lora_alpha`` entry in the safetensors metadata overrides it). Optional learned token
  embeddings ``embeddings.embeddings`` (n × width offsets) and ``embeddings.indices`` (int64 token ids), see
  below.
* **kohya / ComfyUI** (``lora_prior_unet_<module path with "_" for ".">.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha``, also with the plain ``lora_unet_`` prefix, as ComfyUI's ``comfy/lora.py`` maps them for Stable
  Cascade): module paths are the reference Stage C names, with each attention's q, k and v as separate
  ``…attention_attn_to_q`` / ``to_k`` / ``to_v`` (ComfyUI's split attention) mapped onto the thirds of our packed
  ``in_proj_weight``, and any Linear layer (``out_proj``, ``kv_mapper_1``, ``channelwise_0`` …) as itself.
  Scale ``alpha / rank`` (1 when no alpha). OneTrainer writes its Stable Cascade LoRAs in this layout too.
  A text-encoder part (``lora_prior_te_…``, also ``lora_te_…``: transformers' ``CLIPTextModelWithProjection``
  module paths, ``text_model_encoder_layers_<i>_self_attn_q_proj`` / ``k`` / ``v`` / ``out_proj``, ``mlp_fc1`` /
  ``mlp_fc2``, ``text_projection``, as ComfyUI maps them onto CLIP-G) applies to the text encoder for the job
  (:meth:`LoraFile.text_deltas`, :meth:`TextEncoder.applying`), with the same weight as the Stage C part.
* **diffusers / PEFT** (what diffusers' ``save_lora_weights`` writes for a PEFT-trained ``StableCascadeUNet``, e.g.
  SimpleTuner's Stage C LoRAs): ``<prefix>.<module path>.lora_A.weight`` / ``.lora_B.weight`` (also diffusers'
  older ``lora.down`` / ``lora.up`` and ``lora_linear_layer.down`` / ``.up``), prefix ``prior`` / ``unet`` /
  ``transformer`` (or none) for Stage C in diffusers' module names (``attention.to_q`` / ``to_k`` / ``to_v`` onto
  the packed thirds, ``attention.to_out.0`` as ``out_proj``, every other Linear as itself), ``text_encoder`` for
  the text encoder in transformers' names. Scale ``lora_alpha / rank`` from the ``lora_adapter_metadata`` entry
  (its ``alpha_pattern`` and ``use_rslora`` honoured), else from an ``alpha`` tensor, else 1 (alpha = rank, as
  diffusers assumes).

Bundled textual-inversion embeddings (OneTrainer's ``bundle_emb.<name>.clip_g``, n × width, beside either of the
last two layouts or alone) are added for the job where a prompt names them (:func:`token_overrides`: the name
stands for its n vectors); vectors for other encoders and output embeddings (``clip_g_out``) are left out with a
warning.

Anything else (pickle files, other models' keys, LoHa/LoKr/DoRA files, wrong shapes) is refused with a
:class:`LoraError` naming the file and the problem.

Learned tokens (reference layout, spec §12). The trainer's ``train_tokens`` config, e.g.
``[['[fernando]', '^dog</w>'], ['^snail', null]]``, lists (token, init regex) pairs: a token written ``[…]`` or
``<…>`` is added to the tokenizer (transformers' ``add_tokens``: ids 49408, 49409 … in list order, matched
case-insensitively in the prompt) with an embedding row that starts as the mean of the vocabulary rows whose
token string matches the init regex (``re.search``; zeros for ``null``); any other token is a regex selecting
existing vocabulary entries. Every selected id gets a learned offset; the file stores the offsets and ids but
not the names, so the names come from a ``train_tokens`` metadata entry (JSON, that same list) or a sidecar
``<stem>.json`` holding ``{"train_tokens": […]}``. :func:`token_overrides` replays the trainer over the
vocabulary to rebuild each new row (init mean + offset) and gives the existing ids their row + offset, for one
job. Offsets of existing ids apply even without names; new tokens of a file without names are left out, with a
warning (:attr:`LoraFile.token_warning`). The offsets do not scale with the LoRA's weight (the reference has
no weight for them; a half-learned token is no use), and the offsets of several LoRAs for the same existing
id add up. Two LoRAs may add the same token only with the same row.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.lora_info import (
    BUNDLE_ENCODER,
    BUNDLE_KEY,
    REFERENCE_KEY,
    TRAIN_TOKENS,
    ModuleKey,
    check_layout,
    is_new_token,
    key_layout,
    module_keys,
    sidecar_path,
)
from ..core.paths import find_lora_file, list_loras, lora_candidates, lora_folder
from ..networks.common import MultiheadAttention
from ..networks.lora import LoraDelta, check_deltas
from .checkpoints import CheckpointError, read_header
from .conditioning import VOCAB_SIZE, TextEncoder, TokenOverrides, normal_token

log = logging.getLogger(__name__)

#: a text-encoder LoRA's layer parts (transformers' CLIP names, "." as "_") -> the text tower's open_clip names
_TEXT_LINEARS = {"self_attn_out_proj": "attn.out_proj", "mlp_fc1": "mlp.c_fc", "mlp_fc2": "mlp.c_proj"}
_NAMING_HELP = (
    'a train_tokens metadata entry or a {stem}.json next to the file holding {{"train_tokens": '
    '[["[token]", "^init regex"], …]}}, the list from the training config (see docs/formats.md)'
)


class LoraError(ValueError):
    """A LoRA file is missing, unreadable or does not fit this Stage C; the message names the file."""


@dataclass
class LoraFile:
    path: Path
    layout: str  # "reference", "kohya" or "diffusers"
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    #: the trainer's ``train_tokens`` (token, init regex or None) pairs, if the file's tokens are named
    train_tokens: tuple[tuple[str, str | None], ...] | None = None
    #: where ``train_tokens`` came from (for messages): "its train_tokens metadata" or the sidecar's path
    token_source: str = ""
    #: bundled textual-inversion embeddings: name as typed in a prompt -> its CLIP-G vectors (n × width)
    bundles: dict[str, torch.Tensor] = field(default_factory=dict)
    #: bundled vectors that are not applied (``<name>.clip_g_out``, other text encoders' vectors)
    bundles_skipped: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def token_embeddings(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The reference format's learned token offsets (n × width, int64 ids), or None; applied through
        :func:`token_overrides`."""
        if "embeddings.embeddings" in self.tensors:
            return self.tensors["embeddings.embeddings"], self.tensors["embeddings.indices"]
        return None

    @property
    def new_token_count(self) -> int:
        """How many tokens the file adds to the vocabulary (embedding ids from 49408 on)."""
        emb = self.token_embeddings
        return 0 if emb is None else int((emb[1] >= VOCAB_SIZE).sum())

    @property
    def token_warning(self) -> str | None:
        """Why some of the file's learned tokens or bundled embeddings are not applied, or None."""
        notes = []
        count = self.new_token_count
        if count and self.train_tokens is None:
            them, s = ("them", "s are") if count > 1 else ("it", " is")
            notes.append(
                f"LoRA {self.name}: its {count} learned token{s} not applied, the file does not name {them} (its "
                f"Stage C weights apply); name {them} in {sidecar_path(self.path).name} next to it, "
                '{"train_tokens": [["[token]", "^init regex"], …]} as in the training config (see docs/formats.md)'
            )
        if self.bundles_skipped:
            notes.append(
                f"LoRA {self.name}: bundled embedding vectors not applied: {', '.join(self.bundles_skipped)} "
                f"(only input vectors for CLIP-G, bundle_emb.<name>.{BUNDLE_ENCODER}, are used)"
            )
        return "; ".join(notes) or None

    @property
    def stage_c_widths(self) -> frozenset[int]:
        """The Stage C widths its attention factors were made for (:func:`core.lora_info.check_layout`)."""
        return check_layout({k: list(t.shape) for k, t in self.tensors.items()})[1]

    @property
    def has_text_part(self) -> bool:
        """Whether the file changes the text encoder (``lora_prior_te_…`` / ``lora_te_…`` / ``text_encoder.…``)."""
        return self.layout != "reference" and any(k.text for k in module_keys(self.tensors, self.layout))

    def deltas(self, network: nn.Module) -> list[LoraDelta]:
        """The deltas for ``network`` (a Stage C); raises :class:`LoraError` when the file does not fit it."""
        try:
            deltas = self._reference(network) if self.layout == "reference" else self._by_module_name(network)
            check_deltas(network, deltas)
        except (ValueError, KeyError) as exc:
            raise LoraError(f"LoRA {self.path}: {exc}") from None
        return deltas

    def text_deltas(self, encoder: TextEncoder) -> list[LoraDelta]:
        """The deltas of the file's text-encoder part for ``encoder`` (none when it has no such part); raises
        :class:`LoraError` when they do not fit it."""
        if not self.has_text_part:
            return []
        tower = encoder.tower
        blocks = len(tower.transformer.resblocks)
        lookup: dict[str, tuple[str, tuple[int, int] | None]] = {"text_projection": ("text_projection", None)}
        for i in range(blocks):
            block = f"transformer.resblocks.{i}"
            width = tower.transformer.resblocks[i].attn.in_proj_weight.shape[1]
            for j, part in enumerate("qkv"):
                lookup[f"text_model_encoder_layers_{i}_self_attn_{part}_proj"] = (
                    f"{block}.attn",
                    (j * width, (j + 1) * width),
                )
            for part, name in _TEXT_LINEARS.items():
                lookup[f"text_model_encoder_layers_{i}_{part}"] = (f"{block}.{name}", None)
        try:
            deltas = _named_deltas(self._groups(text=True), lookup, f"this {blocks}-layer text encoder")
            encoder.check_lora(deltas)
        except (ValueError, KeyError) as exc:
            raise LoraError(f"LoRA {self.path}: text encoder part: {exc} (a LoRA for another model?)") from None
        return deltas

    def _groups(self, text: bool) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
        """The tensors of the text-encoder part or of the Stage C part by module: (the file's name for it, its
        kohya name without prefix) -> {"lora_down.weight", "lora_up.weight", "alpha"}. A diffusers/PEFT file's
        scale is turned into an ``alpha`` (scale × rank) here."""
        groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        where: dict[tuple[str, str], ModuleKey] = {}
        for k in module_keys(self.tensors, self.layout):
            if k.text == text:
                groups.setdefault((k.module, k.flat), {})[k.part] = self.tensors[k.key]
                where[k.module, k.flat] = k
        if self.layout == "diffusers":
            configs = _peft_configs(self.metadata)
            for name, parts in groups.items():
                if "alpha" not in parts and "lora_down.weight" in parts:
                    rank = parts["lora_down.weight"].shape[0]
                    scale = _peft_scale(configs.get(where[name].prefix, {}), where[name].inner, rank)
                    parts["alpha"] = torch.tensor(scale * rank, dtype=torch.float64)
        return groups

    def _reference(self, network: nn.Module) -> list[LoraDelta]:
        slots = reference_slots(network)
        count = len({int(REFERENCE_KEY.match(k).group(1)) for k in self.tensors if REFERENCE_KEY.match(k)})
        if count != len(slots):
            raise ValueError(
                f"it holds {count} LoRA weight pairs but this Stage C has {len(slots)} attention matrices "
                "(a LoRA for another Stage C variant, or trained with other module_filters?)"
            )
        alpha = float(self.metadata.get("lora_alpha", 1.0))
        out = []
        for i, (module, rows) in enumerate(slots):
            down, up = self.tensors[f"weights.{i}.lora_down"], self.tensors[f"weights.{i}.lora_up"]
            out.append(LoraDelta(module, down, up, alpha / down.shape[0], rows, f"weights.{i}"))
        return out

    def _by_module_name(self, network: nn.Module) -> list[LoraDelta]:
        """The Stage C part of a kohya or diffusers/PEFT file (:meth:`_groups`) on ``network``'s modules."""
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
        return _named_deltas(self._groups(text=False), lookup, "this Stage C")


def _named_deltas(
    groups: dict[tuple[str, str], dict[str, torch.Tensor]],
    lookup: dict[str, tuple[str, tuple[int, int] | None]],
    network: str,
) -> list[LoraDelta]:
    """A kohya or diffusers file's tensors grouped by module (:meth:`LoraFile._groups`) as deltas on the modules
    ``lookup`` names (flat name -> (qualified name, rows of a packed attention or None)); scale ``alpha / rank``, 1
    without alpha."""
    out = []
    for (stem, flat), parts in sorted(groups.items()):
        if flat not in lookup:
            raise ValueError(f"{stem} names no Linear layer or attention of {network} (a LoRA for another model?)")
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise ValueError(f"{stem} lacks its lora_down or lora_up weight")
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        if down.ndim == 4 and down.shape[2:] == (1, 1) and up.ndim == 4 and up.shape[2:] == (1, 1):
            down, up = down.flatten(1), up.flatten(1)
        rank = down.shape[0]
        alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
        module, rows = lookup[flat]
        out.append(LoraDelta(module, down, up, alpha / rank, rows, stem))
    return out


def _peft_configs(metadata: dict[str, str]) -> dict[str, dict]:
    """diffusers' ``lora_adapter_metadata`` (PEFT ``LoraConfig`` fields as ``<prefix>.<field>``) by prefix; empty
    when absent. Raises ValueError for a config that is not JSON or asks for DoRA."""
    text = metadata.get("lora_adapter_metadata")
    if not text:
        return {}
    try:
        flat = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"its lora_adapter_metadata is not JSON ({exc})") from None
    configs: dict[str, dict] = {}
    for key, value in flat.items() if isinstance(flat, dict) else ():
        prefix, _, field_name = key.rpartition(".")
        configs.setdefault(prefix, {})[field_name] = value
    if any(c.get("use_dora") for c in configs.values()):
        raise ValueError("a DoRA LoRA (use_dora in its lora_adapter_metadata); only plain LoRA files are read")
    return configs


def _peft_scale(config: dict, inner: str, rank: int) -> float:
    """PEFT's scale for the module at ``inner``: ``lora_alpha / rank`` (``/ sqrt(rank)`` with ``use_rslora``), alpha
    from the first ``alpha_pattern`` entry whose pattern ends the module path; 1 without a config."""
    if not config:
        return 1.0
    alpha = float(config.get("lora_alpha", rank))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", inner):
            alpha = float(value)
            break
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


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
    """The file for ``name``: an existing path as given, else ``<models_dir>/lora/<name>[.safetensors]`` (the same
    lookup as the prompt panel's list, :func:`core.paths.lora_candidates`)."""
    path = find_lora_file(name, models_dir)
    if path is not None:
        return path
    known = list_loras(models_dir)
    raise LoraError(
        f"LoRA {name!r} not found (looked for {', '.join(str(p) for p in lora_candidates(name, models_dir))}); "
        + (f"the LoRA folder holds: {', '.join(known)}" if known else f"put LoRA files in {lora_folder(models_dir)}")
    )


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
    bundles, skipped = _bundles(path, tensors)
    try:
        layout = key_layout(tensors)
    except ValueError as exc:
        raise LoraError(f"LoRA {path}: {exc}") from None
    keys = {k for k in tensors if not BUNDLE_KEY.match(k)}
    names, source = None, ""
    if layout == "reference":
        ids = sorted({int(REFERENCE_KEY.match(k).group(1)) for k in keys if REFERENCE_KEY.match(k)})
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
            names, source = _check_tokens(path, idx.tolist(), metadata)
    elif layout == "diffusers":
        try:
            _peft_configs(metadata)
        except ValueError as exc:
            raise LoraError(f"LoRA {path}: {exc}") from None
    return _checked_floats(LoraFile(path, layout, tensors, metadata, names, source, bundles, skipped))


def _bundles(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """The file's bundled embeddings for CLIP-G (name -> (n, width) vectors) and the names of bundled vectors that are
    not (``<name>.clip_g_out`` output embeddings, other text encoders' vectors)."""
    bundles: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, tensor in tensors.items():
        m = BUNDLE_KEY.match(key)
        if m is None:
            continue
        name, encoder = m.groups()
        if encoder != BUNDLE_ENCODER:
            skipped.append(f"{name}.{encoder}")
            continue
        if not name.strip() or tensor.ndim != 2 or tensor.shape[0] == 0:
            raise LoraError(
                f"LoRA {path}: {key} must be a named (vectors × width) embedding, not {tuple(tensor.shape)}"
            )
        if any(normal_token(n) == normal_token(name) for n in bundles):
            raise LoraError(f"LoRA {path}: two bundled embeddings are named {name!r} (names ignore case)")
        bundles[name] = tensor
    return bundles, tuple(sorted(skipped))


def _checked_floats(lora: LoraFile) -> LoraFile:
    for key, tensor in lora.tensors.items():
        if key != "embeddings.indices" and not tensor.is_floating_point():
            raise LoraError(f"LoRA {lora.path}: {key} is {tensor.dtype}, not a floating-point tensor")
    return lora


def _parse_train_tokens(value: object, where: str) -> tuple[tuple[str, str | None], ...]:
    pairs = []
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of [token, init regex or null] pairs")
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not item[0].strip()
            or not (item[1] is None or isinstance(item[1], str))
        ):
            raise ValueError(f"{where}: {json.dumps(item)} is not a [token, init regex or null] pair")
        token, init = item
        for regex in (init,) if is_new_token(token) else (token, init):
            if regex is not None:
                try:
                    re.compile(regex)
                except re.error as exc:
                    raise ValueError(f"{where}: {regex!r} is not a valid regular expression ({exc})") from None
        pairs.append((token, init))
    return tuple(pairs)


def _token_names(path: Path, metadata: dict[str, str]) -> tuple[tuple[tuple[str, str | None], ...] | None, str]:
    """A reference LoRA's ``train_tokens`` from its metadata and/or its sidecar ``<stem>.json`` (which must agree
    when both give them); ``(None, "")`` when neither does. A sidecar without the key (another tool's notes on
    the LoRA) is not ours and is ignored."""
    found: list[tuple[tuple[tuple[str, str | None], ...], str]] = []
    if TRAIN_TOKENS in metadata:
        where = "its train_tokens metadata"
        try:
            found.append((_parse_train_tokens(json.loads(metadata[TRAIN_TOKENS]), where), where))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            help_ = _NAMING_HELP.format(stem=path.stem)
            raise LoraError(f"LoRA {path}: {where} is not usable ({exc}); it must be {help_}") from None
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
            if isinstance(data, dict) and TRAIN_TOKENS in data:
                found.append((_parse_train_tokens(data[TRAIN_TOKENS], f"{sidecar}: train_tokens"), str(sidecar)))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise LoraError(
                f"LoRA {path}: its token names in {sidecar} are not usable ({exc}); the file must hold "
                '{"train_tokens": [["[token]", "^init regex"], …]} (see docs/formats.md)'
            ) from None
    if len(found) == 2 and found[0][0] != found[1][0]:
        raise LoraError(
            f"LoRA {path}: its train_tokens metadata and {sidecar} name different tokens; remove or correct {sidecar}"
        )
    return found[0] if found else (None, "")


def _check_tokens(
    path: Path, indices: list[int], metadata: dict[str, str]
) -> tuple[tuple[tuple[str, str | None], ...] | None, str]:
    """Check the token ids (distinct; new ones 49408, 49409 … as the trainer numbers them) and that the names,
    if any, add as many tokens as the file has new ids."""
    if len(set(indices)) != len(indices) or min(indices, default=0) < 0:
        raise LoraError(f"LoRA {path}: embeddings.indices must be distinct token ids ≥ 0")
    new = sorted(i for i in indices if i >= VOCAB_SIZE)
    if new != list(range(VOCAB_SIZE, VOCAB_SIZE + len(new))):
        raise LoraError(
            f"LoRA {path}: its new token ids {new} are not {VOCAB_SIZE}, {VOCAB_SIZE + 1} … as the trainer numbers "
            "the tokens it adds (a LoRA for another text encoder?)"
        )
    names, source = _token_names(path, metadata)
    if names is not None:
        added = [t for t, _ in names if is_new_token(t)]
        if len(added) != len(new):
            raise LoraError(
                f"LoRA {path}: {source} adds {len(added)} token{'s' if len(added) != 1 else ''} "
                f"({', '.join(added) or 'none'}; added are the ones written […] or <…>) but the file holds "
                f"learned embeddings for {len(new)} new token{'s' if len(new) != 1 else ''} (ids ≥ {VOCAB_SIZE}); "
                "give train_tokens exactly as in the training config"
            )
        if len({t.lower() for t in added}) != len(added):
            raise LoraError(f"LoRA {path}: {source} adds a token twice ({', '.join(added)})")
    return names, source


def _replay_trainer(lora: LoraFile, vocabulary: list[str], table: torch.Tensor) -> tuple[set[int], list[torch.Tensor]]:
    """What ``train_c_lora.py`` did with the file's ``train_tokens``: the ids it gave offsets to, and the initial
    rows (float32, rounded to ``table``'s dtype as the trainer's were) of the tokens it added, in order.

    As there, each regex is ``re.search``-ed over the vocabulary as it stands at that point (with the tokens added
    so far, the one just added included), and a new row is the mean of the matching rows."""
    strings = list(vocabulary)
    vocab = len(strings)
    rows: list[torch.Tensor] = []
    selected: set[int] = set()

    def matches(regex: str) -> list[int]:
        return [i for i, text in enumerate(strings) if re.search(regex, text) is not None]

    def row(i: int) -> torch.Tensor:
        return table[i].float() if i < vocab else rows[i - vocab]

    for token, init in lora.train_tokens or ():
        if not is_new_token(token):
            selected.update(matches(token))
            continue
        if token in strings:
            raise LoraError(f"LoRA {lora.path}: {lora.token_source} adds {token!r}, which the vocabulary already has")
        new_id = len(strings)
        strings.append(token)  # add_tokens comes before the init regex is searched
        if init is None:
            rows.append(torch.zeros(table.shape[1], device=table.device))
        else:
            found = matches(init)
            if new_id in found or not found:
                why = "matches the new token itself" if found else "matches no vocabulary entry"
                raise LoraError(
                    f"LoRA {lora.path}: the init regex {init!r} of {token!r} in {lora.token_source} {why}, so "
                    "the trainer cannot have used it; give train_tokens exactly as in the training config (null "
                    "for a token that started as zeros)"
                )
            mean = torch.stack([row(i) for i in found]).mean(dim=0)
            rows.append(mean.to(table.dtype).float())
        selected.add(new_id)
    return selected, rows


def _few(ids) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:6])) + (f" … ({len(ids)} ids)" if len(ids) > 6 else "")


def token_overrides(loras: Sequence[LoraFile], encoder: TextEncoder) -> TokenOverrides | None:
    """The added tokens and embedding rows of ``loras``'s learned token embeddings and bundled embeddings for one
    encoding with ``encoder`` (whose weights are only read), or None when none has any. Raises :class:`LoraError`
    naming the file when they do not fit; logs :attr:`LoraFile.token_warning` for what is left out."""
    for f in loras:
        if f.token_warning:
            log.warning("%s", f.token_warning)
    files = [f for f in loras if f.token_embeddings is not None or f.bundles]
    if not files:
        return None
    table = encoder.tower.token_embedding.weight
    vocab, width = table.shape
    vocabulary = None
    added: dict[str, tuple[str, torch.Tensor, LoraFile]] = {}  # normalised string -> (as written, (n, width), file)

    def add(f: LoraFile, text: str, rows: torch.Tensor, what: str) -> None:
        key = normal_token(text)
        if key in added and not torch.equal(added[key][1], rows):
            raise LoraError(
                f"LoRA {f.path} and LoRA {added[key][2].path} both add the {what} {text!r} with different "
                "embeddings; use one of them at a time"
            )
        added.setdefault(key, (text, rows, f))

    existing: dict[int, torch.Tensor] = {}  # id -> summed offsets
    for f in files:
        for name, vectors in f.bundles.items():
            if vectors.shape[1] != width:
                raise LoraError(
                    f"LoRA {f.path}: its bundled embedding {name!r} is {vectors.shape[1]} wide, this text encoder's "
                    f"embeddings are {width} wide (an embedding for another text encoder)"
                )
            add(f, name, vectors.to(table.device, torch.float32), "embedding")
        if f.token_embeddings is None:
            continue
        offsets, indices = f.token_embeddings
        if offsets.shape[1] != width or vocab != VOCAB_SIZE:
            raise LoraError(
                f"LoRA {f.path}: its learned token embeddings are {offsets.shape[1]} wide for a {VOCAB_SIZE}-token "
                f"vocabulary, this text encoder's are {width} wide for {vocab} (a LoRA for another text encoder)"
            )
        offsets = offsets.to(table.device, torch.float32)
        ids = indices.tolist()
        if f.train_tokens is not None:
            if vocabulary is None:
                try:
                    vocabulary = encoder.vocabulary()
                except ValueError as exc:
                    raise LoraError(f"LoRA {f.path}: its tokens cannot be added ({exc})") from None
            selected, rows = _replay_trainer(f, vocabulary, table)
            if selected != set(ids):
                raise LoraError(
                    f"LoRA {f.path}: {f.token_source} selects token ids {_few(selected)} but the file holds learned "
                    f"embeddings for ids {_few(ids)}; these train_tokens are not the ones it was trained with"
                )
            new_tokens = [t for t, _ in f.train_tokens if is_new_token(t)]
            for k, token in enumerate(new_tokens):
                add(f, token, (rows[k] + offsets[ids.index(vocab + k)])[None], "token")
        for i, index in enumerate(ids):
            if index < vocab:
                existing[index] = existing[index] + offsets[i] if index in existing else offsets[i]
    if not added and not existing:
        return None
    base_ids = sorted(existing)
    lengths = tuple(rows.shape[0] for _, rows, _ in added.values())
    final_rows = [table[i].float() + existing[i] for i in base_ids] + [r for _, rows, _ in added.values() for r in rows]
    return TokenOverrides(
        added=tuple(text for text, _, _ in added.values()),
        ids=torch.tensor(base_ids + list(range(vocab, vocab + sum(lengths))), dtype=torch.int64),
        rows=torch.stack(final_rows),
        lengths=lengths,
    )


class LoraCache:
    """Read LoRA files once while they are unchanged (keyed by path, size and modification time)."""

    def __init__(self, limit: int = 8):
        self.limit = limit
        self._files: dict[tuple[str, int, int], LoraFile] = {}

    def get(self, path: Path) -> LoraFile:
        stat = path.stat()
        sidecar = sidecar_path(path)  # token names may live there: a new or edited sidecar means a new read
        side = (sidecar.stat().st_size, sidecar.stat().st_mtime_ns) if sidecar.is_file() else None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, side)
        if key not in self._files:
            if len(self._files) >= self.limit:
                self._files.pop(next(iter(self._files)))
            self._files[key] = read_lora(path)
        return self._files[key]
