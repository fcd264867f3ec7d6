"""CLIP conditioning: the ViT-bigG-14 text encoder and the ViT-L/14 image encoder.

The text tower is our :class:`TextTower`, which holds exactly open_clip's ``TextTransformer`` tensors under
the same names; the image tower is open_clip's. The text tower is read from either of two safetensors layouts:

* transformers' ``CLIPTextModelWithProjection`` (``text_model.*`` keys, q/k/v projections apart,
  ``text_projection.weight`` a Linear weight): Stability AI's ``text_encoder/model.safetensors``
  (bigG's text tower alone, bf16, 1.39 GB), the default;
* open_clip's full CLIP file (text keys at the top level, the vision tower under ``visual.``), e.g.
  ``open_clip_model.safetensors`` of ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k`` (10 GB, both towers).

The image tower is read from an open_clip file. Only the tower that is needed is built (on the
``meta`` device) and only its tensors are read. No network access is ever needed: the tokenizer's
BPE vocabulary ships with open_clip.

The reference conditions Stable Cascade with Hugging Face's ``CLIPTextModelWithProjection`` called
*with* the tokenizer's attention mask. open_clip's own text forward has no padding mask, and the
hidden states at padded positions (which Stage C attends to) then differ, so :class:`TextEncoder`
runs the blocks itself with the causal mask plus a key-padding mask (every position after the first
end-of-text token is padding) and returns

* ``clip_text``: the last block's output *before* ``ln_final``, at all 77 positions, (B, 77, C);
* ``clip_text_pooled``: ``ln_final`` at the end-of-text position, times ``text_projection``
  (not normalised), (B, 1, C_proj).

It runs the blocks batch-first with ``F.linear`` and ``scaled_dot_product_attention`` on open_clip's
weights: ``nn.MultiheadAttention(batch_first=True)`` would transpose its input to sequence-first and
project a non-contiguous tensor, which PyTorch's CPU linear does as a slow batched matmul (about
1.6x the whole encoder's time).

:class:`ImageEncoder` returns the projected (not normalised) ViT-L/14 image embedding, (B, 1, 768),
after CLIP's preprocessing. The open_clip package (seconds to import, about 240 MiB) is imported only for the
image encoder: the text side needs just its ``tokenizer.py`` and BPE vocabulary, which are loaded on their own
(:func:`load_tokenizer_module`), and bigG's text config is built in (:data:`BIGG_TEXT_CONFIG`).

Extra tokens for one call (:class:`TokenOverrides`, built from a LoRA's learned token embeddings by
:func:`cascade_studio.pipeline.lora.token_overrides`): the tokenizer then also recognises the added token
strings (ids ``vocab + k``, matched case-insensitively anywhere in the prompt and split out before the rest
is tokenised, as transformers' ``add_tokens`` does), and the embedding lookup takes the given rows for the
listed ids (new ones and existing ones) and the tower's own rows for every other id. The tower's weights are
never written, so a call without overrides, or a prompt that uses none of the listed ids, gives exactly the
plain result.

A LoRA's text-encoder part (:meth:`TextEncoder.applying`, deltas from
:meth:`cascade_studio.pipeline.lora.LoraFile.text_deltas`) is applied the same way for the encodings inside a
``with`` block: low-rank terms added to the packed q/k/v projection's rows, forward hooks on the Linear layers
(``attn.out_proj``, ``mlp.c_fc``, ``mlp.c_proj``) and terms added after ``text_projection``; leaving the block gives
the plain encoder back, bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..networks.linear import add_low_rank_
from ..networks.lora import LoraDelta, apply_loras, check_deltas, lora_terms
from .checkpoints import (
    DTYPES,
    META_CONFIG,
    META_NETWORK,
    CheckpointError,
    Header,
    layout_diff,
    read_header,
    read_tensors,
    write_safetensors,
)

#: ``cascade_studio.network`` value of CLIP files that carry their open_clip model config in the
#: safetensors metadata (``cascade_studio.config``: ``{"embed_dim", "text_cfg", "vision_cfg",
#: "quick_gelu"}``), used for tiny demo and test encoders that match no open_clip model name.
CLIP_NETWORK = "open_clip"

TEXT_MODEL = "ViT-bigG-14"  # laion2b_s39b_b160k: trained with exact GELU
#: open_clip's model config of TEXT_MODEL (model_configs/ViT-bigG-14.json), text part: built in, so that loading the
#: text encoder needs no open_clip import (tests/test_conditioning.py checks it against open_clip's)
BIGG_TEXT_CONFIG = {
    "embed_dim": 1280,
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1280, "heads": 20, "layers": 32},
}
IMAGE_MODEL = "ViT-L-14-quickgelu"  # ViT-L/14 for the OpenAI weights, which were trained with QuickGELU
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
VOCAB_SIZE = 49408  # CLIP's BPE vocabulary (every Stable Cascade text encoder); added tokens get ids from here on
CONTEXT_LENGTH = 77
#: open_clip's names of the two special tokens -> transformers' (the names a trainer's regexes saw)
_HF_SPECIAL_NAMES = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Keys of a full open_clip CLIP checkpoint that belong to neither tower.
_SHARED_KEYS = {"logit_scale", "logit_bias"}
_VISUAL = "visual."


def _model_config(header: Header, model_name: str, tower_cfg: str) -> dict:
    """The open_clip model config for a file: from its metadata if it carries one, else by name."""
    if header.metadata.get(META_NETWORK) == CLIP_NETWORK and META_CONFIG in header.metadata:
        try:
            cfg = json.loads(header.metadata[META_CONFIG])
            if not isinstance(cfg, dict) or "embed_dim" not in cfg or not isinstance(cfg.get(tower_cfg), dict):
                raise ValueError(f"not an open_clip model config with 'embed_dim' and {tower_cfg!r}")
        except ValueError as exc:
            raise CheckpointError(f"{header.path}: metadata {META_CONFIG!r} is not usable ({exc})") from None
        return cfg
    if model_name == TEXT_MODEL and tower_cfg == "text_cfg":
        return json.loads(json.dumps(BIGG_TEXT_CONFIG))  # a copy; no open_clip import for the text tower
    import open_clip

    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"open_clip knows no model called {model_name!r}")
    return cfg


def _target_dtype(header: Header, keys: Sequence[str], dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    floats = {header.tensors[k].dtype for k in keys} & {"F64", "F32", "F16", "BF16"}
    return DTYPES[floats.pop()][0] if len(floats) == 1 else torch.float32


def _read_and_assign(
    tower: nn.Module,
    header: Header,
    keys: Sequence[str],
    assemble: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    *,
    dtype: torch.dtype | None,
    device: str | torch.device,
) -> torch.dtype:
    """Read the tensors ``keys`` of ``header`` and assign ``assemble(tensors)`` into the meta-built ``tower``."""
    target = _target_dtype(header, list(keys), dtype)
    wanted = dataclasses.replace(header, tensors={k: header.tensors[k] for k in keys})
    tensors = dict(read_tensors(wanted, dtype=target, device=device))
    tower.load_state_dict(assemble(tensors), strict=True, assign=True)
    return target


def _load_tower(
    tower: nn.Module,
    header: Header,
    keys: Mapping[str, str],
    *,
    what: str,
    dtype: torch.dtype | None,
    device: str | torch.device,
) -> torch.dtype:
    """Assign the tensors ``keys`` (file key -> tower key) of an open_clip file into the meta-built ``tower``.

    Strict: a missing, unexpected or wrongly shaped key is a :class:`CheckpointError` naming the file.
    """
    path = header.path
    expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    found = {tower_key: header.tensors[file_key].shape for file_key, tower_key in keys.items()}
    if not found:
        also = " or in transformers format (stabilityai/stable-cascade's text_encoder/model.safetensors)"
        raise CheckpointError(
            f"{path}: holds no {what} tensors; expected a CLIP checkpoint in open_clip format (e.g. "
            f"open_clip_model.safetensors from the model's Hugging Face repository){also if 'text' in what else ''}."
        )
    diff = layout_diff(found, expected)
    if diff.size:
        raise CheckpointError(
            f"{path}: the {what} tensors do not match the expected open_clip layout: {diff.describe()}. "
            "Use the open_clip-format (open_clip_model.safetensors) file of the right model, or re-download it "
            "if it should be that file."
        )
    return _read_and_assign(
        tower, header, list(keys), lambda t: {keys[k]: v for k, v in t.items()}, dtype=dtype, device=device
    )


def _check_materialised(module: nn.Module) -> None:
    left = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left on the meta device after loading: {', '.join(left[:5])}")


def save_clip(state: Mapping[str, torch.Tensor], path: str | os.PathLike, model_cfg: Mapping) -> Path:
    """Write an open_clip-format CLIP state dict with its model config in the metadata.

    Such a file loads with :meth:`TextEncoder.from_file` / :meth:`ImageEncoder.from_file` whatever
    its size (tiny test encoders, the demo model set's image encoder).
    """
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    return write_safetensors(tensors, path, {META_NETWORK: CLIP_NETWORK, META_CONFIG: json.dumps(dict(model_cfg))})


# ---------------------------------------------------------------------------------------------
# text

#: :func:`text_layout` values
OPEN_CLIP_LAYOUT = "open_clip"
TRANSFORMERS_LAYOUT = "transformers"
#: prefix of the text model's keys in transformers' ``CLIPTextModel(WithProjection)`` state dicts
HF_TEXT_PREFIX = "text_model."
#: keys a transformers text checkpoint may hold that the tower has no use for (older transformers
#: saved the position ids; some single-file exports keep the logit scale)
_HF_IGNORED = frozenset({"text_model.embeddings.position_ids", "logit_scale"})
_HF_NAMES = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "text_projection": "text_projection.weight",  # open_clip: x @ P, P (width, embed); transformers: Linear
    "text_projection.weight": "text_projection.weight",  # open_clip towers built with a Linear projection
}
_HF_BLOCK_NAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
#: open_clip text tower keys whose transformers tensor is the transpose
_HF_TRANSPOSED = frozenset({"text_projection"})


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _TextBlock(nn.Module):
    """open_clip's ``ResidualAttentionBlock`` parameters (run by :func:`_attention_block`)."""

    def __init__(self, width: int, heads: int, mlp_width: int, quick_gelu: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = nn.Identity()
        self.ln_2 = nn.LayerNorm(width)
        act = _QuickGELU() if quick_gelu else nn.GELU()
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, mlp_width)), ("gelu", act), ("c_proj", nn.Linear(mlp_width, width))])
        )
        self.ls_2 = nn.Identity()


class TextTower(nn.Module):
    """The CLIP text transformer with open_clip's ``TextTransformer`` parameter names (so both file layouts load
    into it), without open_clip: :class:`TextEncoder` runs it. Only the plain configuration of the CLIP text
    towers is built (causal mask, end-of-text pooling, a projection matrix, no layer scale)."""

    #: ``pool_type`` / ``eos_id`` only say where open_clip's own forward pools; TextEncoder pools at the first
    #: end-of-text token whatever they say
    _OPTIONS = frozenset(
        {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pool_type", "eos_id"}
    )

    def __init__(self, embed_dim: int, text_cfg: Mapping, quick_gelu: bool = False):
        super().__init__()
        unknown = {k for k, v in text_cfg.items() if k not in self._OPTIONS and v not in (None, False)}
        if unknown:
            raise ValueError(f"text tower options not supported: {', '.join(sorted(unknown))}")
        width, layers = int(text_cfg.get("width", 512)), int(text_cfg.get("layers", 12))
        heads = int(text_cfg.get("heads", 8))
        mlp_width = int(width * float(text_cfg.get("mlp_ratio", 4.0)))
        self.context_length = int(text_cfg.get("context_length", 77))
        self.vocab_size = int(text_cfg.get("vocab_size", 49408))
        self.token_embedding = nn.Embedding(self.vocab_size, width, _weight=torch.empty(self.vocab_size, width))
        self.positional_embedding = nn.Parameter(torch.empty(self.context_length, width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            _TextBlock(width, heads, mlp_width, quick_gelu) for _ in range(layers)
        )
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))


def build_text_tower(model_cfg: Mapping, *, quick_gelu: bool | None = None) -> nn.Module:
    """The text tower (:class:`TextTower`) for an open_clip model config, on the current default device."""
    if quick_gelu is None:
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
    return TextTower(int(model_cfg["embed_dim"]), dict(model_cfg["text_cfg"]), quick_gelu)


def text_keys(header: Header) -> dict[str, str]:
    """File key -> text tower key: everything of a full CLIP file but the vision tower and logit scale."""
    return {k: k for k in header.tensors if not k.startswith(_VISUAL) and k not in _SHARED_KEYS}


def text_layout(header: Header) -> str:
    """:data:`TRANSFORMERS_LAYOUT` for transformers' ``text_model.*`` keys, else :data:`OPEN_CLIP_LAYOUT`."""
    return TRANSFORMERS_LAYOUT if any(k.startswith(HF_TEXT_PREFIX) for k in header.tensors) else OPEN_CLIP_LAYOUT


def hf_text_names(key: str) -> tuple[str, ...]:
    """The transformers key(s) of open_clip text tower tensor ``key``: (q, k, v) for a packed ``in_proj``.

    A packed ``in_proj_weight`` / ``in_proj_bias`` is the concatenation of the three along dim 0;
    ``text_projection`` is transposed (see :data:`_HF_TRANSPOSED`); every other tensor is the same.
    """
    if key in _HF_NAMES:
        return (_HF_NAMES[key],)
    if m := _RESBLOCK.fullmatch(key):
        index, rest = m.groups()
        prefix = f"{HF_TEXT_PREFIX}encoder.layers.{index}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]
            return tuple(f"{prefix}self_attn.{name}_proj.{kind}" for name in "qkv")
        module, _, kind = rest.rpartition(".")
        if module in _HF_BLOCK_NAMES:
            return (f"{prefix}{_HF_BLOCK_NAMES[module]}.{kind}",)
    raise KeyError(f"the open_clip text tower tensor {key!r} has no transformers counterpart")


def to_hf_text_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip text tower state dict in transformers' ``CLIPTextModelWithProjection`` key layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "attn_mask":
            continue
        names = hf_text_names(key)
        if key in _HF_TRANSPOSED:
            value = value.t()
        out.update((name, part.contiguous()) for name, part in zip(names, value.chunk(len(names)), strict=True))
    return out


def _hf_text_shapes(tower: nn.Module) -> dict[str, tuple[int, ...]]:
    """transformers key -> shape of the tensors that make up ``tower``'s state dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    for key, value in tower.state_dict().items():
        if key == "attn_mask":
            continue
        try:
            names = hf_text_names(key)
        except KeyError as exc:
            raise CheckpointError(f"this text tower cannot be read from a transformers-format file: {exc}") from None
        shape = tuple(value.shape)[::-1] if key in _HF_TRANSPOSED else tuple(value.shape)
        shapes.update((name, (shape[0] // len(names), *shape[1:])) for name in names)
    return shapes


def _load_hf_text(tower: nn.Module, header: Header, *, dtype: torch.dtype | None, device: str | torch.device) -> None:
    """Assign a transformers-format text checkpoint (``CLIPTextModelWithProjection``) into the meta-built ``tower``.

    Strict, like :func:`_load_tower`: the file must hold exactly the tensors of this tower (errors name
    the transformers keys); the position ids and a logit scale are skipped.
    """
    expected = _hf_text_shapes(tower)
    keys = [k for k in header.tensors if k not in _HF_IGNORED]
    diff = layout_diff({k: header.tensors[k].shape for k in keys}, expected)
    if diff.size:
        raise CheckpointError(
            f"{header.path}: the CLIP text tensors do not match the expected transformers "
            f"CLIPTextModelWithProjection layout: {diff.describe()}. Use Stability AI's text_encoder/model.safetensors "
            "(CLIP ViT-bigG/14) from stabilityai/stable-cascade, or re-download it if it should be that file."
        )
    tower_keys = [k for k in tower.state_dict() if k != "attn_mask"]

    def assemble(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = {}
        for key in tower_keys:
            parts = [tensors.pop(name) for name in hf_text_names(key)]
            value = torch.cat(parts) if len(parts) > 1 else parts[0]
            state[key] = value.t().contiguous() if key in _HF_TRANSPOSED else value
        return state

    _read_and_assign(tower, header, keys, assemble, dtype=dtype, device=device)


def save_hf_text(state: Mapping[str, torch.Tensor], path: str | os.PathLike, model_cfg: Mapping) -> Path:
    """Write an open_clip text tower state dict in transformers' layout, with its model config in the metadata.

    The file has the key layout of Stability AI's ``text_encoder/model.safetensors`` and loads with
    :meth:`TextEncoder.from_file` whatever its size (the demo model set's tiny text encoder).
    """
    metadata = {META_NETWORK: CLIP_NETWORK, META_CONFIG: json.dumps(dict(model_cfg)), "format": "pt"}
    return write_safetensors(to_hf_text_state(state), path, metadata)


def _open_clip_tokenizer(model_name: str, context_length: int) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's BPE tokenizer, for TEXT_MODEL read from open_clip's ``tokenizer.py`` alone: importing the open_clip
    package (models, torchvision …) costs seconds and about 240 MiB, none of which encoding a prompt needs."""
    if model_name != TEXT_MODEL:
        import open_clip

        return open_clip.get_tokenizer(model_name, context_length=context_length)
    return load_tokenizer_module().SimpleTokenizer(context_length=context_length)


@functools.cache
def load_tokenizer_module():
    """open_clip's ``tokenizer.py`` as a module of its own (the package's ``__init__`` is not run)."""
    spec = importlib.util.find_spec("open_clip")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip_torch is not installed (it ships the CLIP tokenizer's vocabulary)")
    source = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("cascade_studio._clip_bpe", source)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _check_blocks(tower: nn.Module) -> None:
    for i, block in enumerate(tower.transformer.resblocks):
        attn = getattr(block, "attn", None)
        plain = (
            isinstance(attn, nn.MultiheadAttention)
            and attn._qkv_same_embed_dim
            and not hasattr(block, "ln_1_kv")
            and all(hasattr(block, name) for name in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2"))
        )
        if not plain:
            raise ValueError(f"text tower block {i} ({type(block).__name__}) is not a plain open_clip attention block")


def _attention_block(block: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """open_clip's ``ResidualAttentionBlock`` on a batch-first (B, L, C) ``x``, attention by linear + SDPA.

    Same weights and arithmetic as the block's own forward, but the input projection gets a contiguous
    input (see the module docstring). ``mask``: boolean (B, 1, L, L), True where a query may attend a key.
    """
    attn = block.attn
    batch, length, width = x.shape
    heads = attn.num_heads
    h = block.ln_1(x)
    qkv = add_low_rank_(F.linear(h, attn.in_proj_weight, attn.in_proj_bias), h, getattr(attn, "in_proj_lora", ()))
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # 3 x (B, heads, L, d)
    h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    x = x + block.ls_1(attn.out_proj(h.transpose(1, 2).reshape(batch, length, width)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@dataclasses.dataclass(frozen=True)
class TokenOverrides:
    """Added tokens and replaced embedding rows for one encoding (the tower's weights are not touched).

    ``added[k]`` is a string that stands for ``lengths[k]`` new ids (one each when ``lengths`` is empty: a learned
    token; several: a textual-inversion embedding of that many vectors), numbered from ``vocab`` on in order;
    ``ids`` (m,) int64 are the ids whose embedding row is ``rows`` (m, width) instead of the tower's: every new id,
    and any existing id a LoRA retrained. ``rows`` are cast to the encoder's dtype when used.
    """

    added: tuple[str, ...]
    ids: torch.Tensor
    rows: torch.Tensor
    lengths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.ids.dtype != torch.int64 or self.ids.ndim != 1 or self.rows.ndim != 2:
            raise ValueError("ids must be (m,) int64 and rows (m, width)")
        if self.rows.shape[0] != self.ids.shape[0] or len(set(self.ids.tolist())) != self.ids.shape[0]:
            raise ValueError("every listed id needs exactly one row")
        if len({normal_token(t) for t in self.added}) != len(self.added) or not all(t.strip() for t in self.added):
            raise ValueError("added tokens must be distinct, non-blank strings (compared case-insensitively)")
        if self.lengths and (len(self.lengths) != len(self.added) or min(self.lengths) < 1):
            raise ValueError("lengths gives each added string its number of ids (at least 1)")

    @property
    def spans(self) -> tuple[int, ...]:
        """How many new ids each added string stands for."""
        return self.lengths or (1,) * len(self.added)

    @property
    def new_ids(self) -> int:
        """How many ids the added strings take after the vocabulary."""
        return sum(self.spans)


def normal_token(token: str) -> str:
    """How added strings are compared: lower-cased, runs of whitespace as one space."""
    return " ".join(token.lower().split())


def _added_token_pattern(added: Sequence[str]) -> re.Pattern:
    """One alternative per added token (group ``t<k>``), longest first, case-insensitive, any run of
    whitespace matching the token's spaces: transformers matches added tokens on the normalised
    (lower-cased, whitespace-collapsed) text, leftmost-longest. A string that begins (ends) with a letter,
    digit or ``_`` is not matched right after (before) another one, so an embedding named ``ohwx`` is not found
    inside ``ohwxy``; a learned token (``[name]``, ``<name>``) is matched anywhere, as transformers does."""
    order = sorted(range(len(added)), key=lambda k: -len(added[k]))
    spaces = r"\s+"
    parts = []
    for k in order:
        text = spaces.join(re.escape(w) for w in added[k].split())
        before = r"(?<!\w)" if re.match(r"\w", added[k].strip()) else ""
        after = r"(?!\w)" if re.search(r"\w$", added[k].strip()) else ""
        parts.append(f"(?P<t{k}>{before}{text}{after})")
    return re.compile("|".join(parts), re.IGNORECASE)


class TextEncoder(nn.Module):
    """The CLIP text encoder as Stable Cascade uses it (Hugging Face semantics, open_clip tower).

    ``tower`` is an open_clip ``TextTransformer``; ``tokenizer`` maps a list of prompts to a
    (B, context) LongTensor (default: open_clip's tokenizer for ``TEXT_MODEL``, created on first use).
    """

    def __init__(
        self,
        tower: nn.Module,
        *,
        eot_token_id: int = EOT_TOKEN_ID,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        tokenizer_model: str = TEXT_MODEL,
    ) -> None:
        super().__init__()
        _check_blocks(tower)
        self.tower = tower.eval().requires_grad_(False)
        self.eot_token_id = eot_token_id
        self.context_length = int(tower.positional_embedding.shape[0])
        self._tokenizer = tokenizer
        self._tokenizer_model = tokenizer_model
        self._vocabulary: list[str] | None = None
        # low-rank terms (down, up, 0) added after a parameter text_projection while a LoRA is applied (applying)
        self._projection_lora: tuple[tuple[torch.Tensor, torch.Tensor, int], ...] = ()

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        model_name: str = TEXT_MODEL,
        model_cfg: Mapping | None = None,
        quick_gelu: bool | None = None,
        eot_token_id: int = EOT_TOKEN_ID,
    ) -> TextEncoder:
        """Load the text tower of a CLIP safetensors file in transformers or open_clip layout.

        The layout is told by the keys (:func:`text_layout`): transformers' ``CLIPTextModelWithProjection``
        (Stability AI's ``text_encoder/model.safetensors``), or a full open_clip CLIP file, whose
        ``visual.*`` tensors are not read. ``dtype=None`` keeps the file's precision. The architecture
        is ``model_cfg`` (an open_clip model config) if given, else the one in the file's metadata
        (see :data:`CLIP_NETWORK`), else open_clip's ``model_name`` config.
        """
        header = read_header(path)
        cfg = dict(model_cfg) if model_cfg is not None else _model_config(header, model_name, "text_cfg")
        with torch.device("meta"):
            tower = build_text_tower(cfg, quick_gelu=quick_gelu)
        if text_layout(header) == TRANSFORMERS_LAYOUT:
            _load_hf_text(tower, header, dtype=dtype, device=device)
        else:
            _load_tower(tower, header, text_keys(header), what="CLIP text", dtype=dtype, device=device)
        _check_materialised(tower)
        return cls(tower, eot_token_id=eot_token_id)

    @property
    def device(self) -> torch.device:
        return self.tower.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tower.token_embedding.weight.dtype

    @property
    def width(self) -> int:
        return int(self.tower.token_embedding.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.tower.token_embedding.num_embeddings)

    def _base_tokenizer(self) -> Callable[[list[str]], torch.Tensor]:
        if self._tokenizer is None:
            self._tokenizer = _open_clip_tokenizer(self._tokenizer_model, self.context_length)
        return self._tokenizer

    def vocabulary(self) -> list[str]:
        """The token strings by id (BPE strings such as ``dog</w>``; the special tokens under transformers'
        names ``<|startoftext|>`` / ``<|endoftext|>``): what a trainer's token regexes were matched against.
        Needs open_clip's BPE tokenizer (or any with an ``encoder`` dict) covering the whole vocabulary."""
        if self._vocabulary is None:
            encoder = getattr(self._base_tokenizer(), "encoder", None)
            if not isinstance(encoder, Mapping) or sorted(encoder.values()) != list(range(self.vocab_size)):
                raise ValueError(
                    f"this text encoder's tokenizer does not expose its {self.vocab_size}-token vocabulary"
                )
            strings = [""] * self.vocab_size
            for text, index in encoder.items():
                strings[index] = _HF_SPECIAL_NAMES.get(text, text)
            self._vocabulary = strings
        return list(self._vocabulary)

    def tokenize(
        self, prompts: str | Sequence[str], added: Sequence[str] = (), lengths: Sequence[int] = ()
    ) -> torch.Tensor:
        """(B, 77) token ids: BOS, the prompt, EOT, then zeros; long prompts are cut keeping EOT.

        ``added``: extra strings, found case-insensitively in a prompt (leftmost, longest first; see
        :func:`_added_token_pattern`) and split out before the text around them is tokenised; string ``k`` stands for
        ``lengths[k]`` ids (1 when ``lengths`` is empty), numbered from ``vocab`` on in order.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        tokenizer = self._base_tokenizer()
        if not added:
            return tokenizer(list(prompts))
        spans = list(lengths) or [1] * len(added)
        starts = [self.vocab_size + sum(spans[:k]) for k in range(len(added))]
        pattern = _added_token_pattern(added)
        bos = int(tokenizer([""])[0, 0])
        out = torch.zeros(len(prompts), self.context_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids, start = [bos], 0
            for m in pattern.finditer(prompt):
                ids += self._plain_ids(prompt[start : m.start()])
                k = int(m.lastgroup[1:])
                ids += range(starts[k], starts[k] + spans[k])
                start = m.end()
            ids += [*self._plain_ids(prompt[start:]), self.eot_token_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def _plain_ids(self, text: str) -> list[int]:
        """The ids of ``text`` between BOS and EOT (a piece longer than the context ends the prompt anyway)."""
        if not text.strip():
            return []
        row = self._base_tokenizer()([text])[0].tolist()
        return row[1 : row.index(self.eot_token_id, 1)]

    @torch.no_grad()
    def encode(
        self, prompts: str | Sequence[str], tokens: TokenOverrides | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clip_text (B, 77, C), clip_text_pooled (B, 1, C_proj))`` for the prompts, with ``tokens``'s
        added tokens and embedding rows if given (for this call only)."""
        ids = self.tokenize(prompts, tokens.added, tokens.lengths) if tokens else self.tokenize(prompts)
        return self.encode_tokens(ids, tokens)

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the first end-of-text token in each row; every row must have one."""
        is_eot = tokens == self.eot_token_id
        has = is_eot.any(dim=1)
        if not bool(has.all()):
            rows = torch.nonzero(~has).flatten().tolist()
            raise ValueError(f"token rows {rows} have no end-of-text token (id {self.eot_token_id})")
        return is_eot.int().argmax(dim=1)

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """Boolean (B, 1, L, L) mask, True where a query may attend a key: causal, and no key after the EOT.

        What transformers builds from the tokenizer's ``attention_mask`` (padding keys masked) on top of
        the causal mask. Key 0 is never masked, so no row is fully masked (no NaN from the softmax).
        """
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        causal = positions[None, :] <= positions[:, None]  # (Lq, Lk)
        not_padding = positions[None, :] <= self.eot_positions(tokens)[:, None]  # (B, Lk)
        return (causal[None] & not_padding[:, None, :]).unsqueeze(1)

    @torch.no_grad()
    def encode_tokens(
        self, tokens: torch.Tensor, overrides: TokenOverrides | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clip_text (B, L, C), clip_text_pooled (B, 1, C_proj))`` for (B, L) token ids; ids ``vocab + k``
        and the rows of listed ids come from ``overrides`` (see :class:`TokenOverrides`)."""
        tower = self.tower
        tokens = torch.as_tensor(tokens).to(self.device, torch.long)
        if tokens.dim() != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(f"tokens must have shape (B, {self.context_length}), not {tuple(tokens.shape)}")
        vocab = self.vocab_size
        limit = vocab + (overrides.new_ids if overrides is not None else 0)
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= limit):
            raise ValueError(f"token ids must lie in [0, {limit}); this text encoder's vocabulary is {vocab}")
        eot = self.eot_positions(tokens)
        mask = self.attention_mask(tokens)

        x = tower.token_embedding(tokens.clamp(max=vocab - 1) if limit > vocab else tokens)
        if overrides is not None and overrides.ids.numel():
            if overrides.rows.shape[1] != self.width:
                raise ValueError(f"override rows are {overrides.rows.shape[1]} wide, the embeddings {self.width}")
            missing = set(range(vocab, limit)) - set(overrides.ids.tolist())
            if missing:
                raise ValueError(f"added token ids {sorted(missing)} have no embedding row")
            listed = tokens.unsqueeze(-1) == overrides.ids.to(self.device)  # (B, L, m)
            hit = listed.any(dim=-1, keepdim=True)
            if bool(hit.any()):  # other positions keep the tower's rows bit for bit
                rows = overrides.rows.to(self.device, self.dtype)[listed.int().argmax(dim=-1)]
                x = torch.where(hit, rows, x)
        x = x + tower.positional_embedding.to(self.dtype)
        for block in tower.transformer.resblocks:  # batch-first whatever the tower's own layout
            x = _attention_block(block, x, mask)
        clip_text = x

        pooled = tower.ln_final(x[torch.arange(x.shape[0], device=x.device), eot])
        projection = tower.text_projection
        if isinstance(projection, nn.Linear):
            pooled = projection(pooled)
        elif projection is not None:
            pooled = add_low_rank_(pooled @ projection, pooled, self._projection_lora)
        return clip_text, pooled.unsqueeze(1)

    def _on_projection(self, d: LoraDelta) -> bool:
        """Whether ``d`` targets a parameter ``text_projection`` (used as ``x @ P``, so no Linear to hook)."""
        return d.module == "text_projection" and isinstance(self.tower.text_projection, nn.Parameter)

    def check_lora(self, deltas: Sequence[LoraDelta]) -> None:
        """Raise ValueError when a text-encoder delta names no Linear layer, packed attention or ``text_projection``
        of the tower, or does not fit its weight."""
        check_deltas(self.tower, [d for d in deltas if not self._on_projection(d)])
        projection = self.tower.text_projection
        for d in filter(self._on_projection, deltas):
            out, inp, rank = projection.shape[1], projection.shape[0], d.down.shape[0]
            if d.rows is not None or d.down.shape != (rank, inp) or d.up.shape != (out, rank):
                raise ValueError(
                    f"{d.label}: LoRA shapes down {tuple(d.down.shape)} / up {tuple(d.up.shape)} do not fit a "
                    f"({out} × {inp}) projection (expected down (rank, {inp}) and up ({out}, rank))"
                )

    @contextlib.contextmanager
    def applying(self, loras: Sequence[tuple[Sequence[LoraDelta], float]]) -> Iterator[None]:
        """Encode with each LoRA's text-encoder deltas (naming tower modules: Linear layers, packed attentions with
        a row range, ``text_projection``), times its weight, inside the ``with`` block; the tower's weights are never
        written. Raises ValueError when a delta does not fit (:meth:`check_lora`)."""
        self.check_lora([d for deltas, _ in loras for d in deltas])
        projection = self.tower.text_projection
        terms = tuple((*lora_terms(d, w, projection), 0) for ds, w in loras for d in ds if self._on_projection(d))
        with apply_loras(self.tower, [([d for d in ds if not self._on_projection(d)], w) for ds, w in loras]):
            self._projection_lora = terms
            try:
                yield
            finally:
                self._projection_lora = ()


# ---------------------------------------------------------------------------------------------
# image


def build_vision_tower(model_cfg: Mapping, *, quick_gelu: bool | None = None) -> nn.Module:
    """open_clip's vision tower (``VisionTransformer``) for ``model_cfg``, on the current default device."""
    from open_clip.model import _build_vision_tower

    if quick_gelu is None:
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
    return _build_vision_tower(model_cfg["embed_dim"], dict(model_cfg["vision_cfg"]), quick_gelu)


def vision_keys(header: Header) -> dict[str, str]:
    """File key -> vision tower key: the ``visual.*`` tensors without their prefix."""
    return {k: k[len(_VISUAL) :] for k in header.tensors if k.startswith(_VISUAL)}


def _resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)``: the shorter side becomes ``size``, the longer one is truncated."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def clip_preprocess(
    images: torch.Tensor,
    size: int = 224,
    *,
    antialias: bool = True,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """CLIP preprocessing of a [0, 1] float (B, 3, H, W) tensor, computed in float32.

    Resize the shorter side to ``size`` (bicubic; antialiased when shrinking unless
    ``antialias=False``), center-crop ``size`` × ``size`` (torchvision's rounding), normalise.
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), not {tuple(images.shape)}")
    x = images.float()
    height, width = x.shape[-2:]
    new_h, new_w = _resized_size(height, width, size)
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=antialias)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    x = x[..., top : top + size, left : left + size]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class ImageEncoder(nn.Module):
    """The CLIP ViT-L/14 image encoder: [0, 1] images -> (B, 1, 768) projected image embeddings."""

    def __init__(self, visual: nn.Module, *, antialias: bool = True) -> None:
        super().__init__()
        self.visual = visual.eval().requires_grad_(False)
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.antialias = antialias

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        model_name: str = IMAGE_MODEL,
        quick_gelu: bool | None = None,
    ) -> ImageEncoder:
        """Load the ``visual.*`` tower of an open_clip-format CLIP safetensors file (text keys are not read).

        ``dtype=None`` keeps the file's precision. ``quick_gelu=None`` takes the config's setting (the
        default ``ViT-L-14-quickgelu`` config matches OpenAI's weights, which use QuickGELU).
        """
        header = read_header(path)
        cfg = _model_config(header, model_name, "vision_cfg")
        with torch.device("meta"):
            visual = build_vision_tower(cfg, quick_gelu=quick_gelu)
        _load_tower(visual, header, vision_keys(header), what="CLIP vision", dtype=dtype, device=device)
        _check_materialised(visual)
        return cls(visual)

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def embed_dim(self) -> int:
        return int(self.visual.output_dim)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(images.to(self.device), self.image_size, antialias=self.antialias)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, embed_dim) un-normalised image embeddings of [0, 1] float (B, 3, H, W) images."""
        pixels = self.preprocess(images).to(self.dtype)
        features = self.visual(pixels)
        if isinstance(features, tuple):  # towers built with output_tokens=True
            features = features[0]
        return features.unsqueeze(1)


__all__ = [
    "CLIP_MEAN",
    "CLIP_NETWORK",
    "CLIP_STD",
    "CONTEXT_LENGTH",
    "EOT_TOKEN_ID",
    "SOT_TOKEN_ID",
    "HF_TEXT_PREFIX",
    "OPEN_CLIP_LAYOUT",
    "TRANSFORMERS_LAYOUT",
    "ImageEncoder",
    "TextEncoder",
    "TokenOverrides",
    "VOCAB_SIZE",
    "build_text_tower",
    "build_vision_tower",
    "clip_preprocess",
    "normal_token",
    "hf_text_names",
    "save_clip",
    "save_hf_text",
    "text_keys",
    "text_layout",
    "to_hf_text_state",
    "vision_keys",
]
