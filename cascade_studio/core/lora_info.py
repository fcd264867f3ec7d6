"""What a LoRA file says about itself, read from its safetensors header without torch: the words that call it up.

* **Trigger words** the trainer recorded: Stability's model-spec entry ``modelspec.trigger_phrase`` (kohya's
  sd-scripts write it from ``--metadata_trigger_phrase``; comma-separated), SimpleTuner's ``trained_words`` (its
  instance prompts, comma-separated), the names of bundled textual-inversion embeddings (OneTrainer's
  ``bundle_emb.<name>.clip_g``), and a reference-format LoRA's added
  tokens (``[fernando]``), named by its ``train_tokens`` metadata or the sidecar ``<stem>.json``: their learned
  embeddings apply only where the prompt contains them.
* **Training tags**: kohya's ``ss_tag_frequency`` (``{dataset folder: {caption tag: count}}``), most frequent
  first; a style or character LoRA's activation word is usually among the first.
* A **title**: ``modelspec.title``, else kohya's ``ss_output_name``.
* What it **changes**, from its tensor names: Stage C, the text encoder (a kohya/OneTrainer ``lora_prior_te_…`` or
  a diffusers ``text_encoder.…`` part), learned tokens (a reference LoRA's ``embeddings.*``, bundled embeddings).
* Whether a job would refuse its keys, and which Stage C width it was made for (:func:`check_layout`).

Nothing here fails on a file without metadata; a file that is not a safetensors file raises ValueError naming it.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

#: safetensors metadata key (and sidecar ``<stem>.json`` key) naming a reference LoRA's tokens
TRAIN_TOKENS = "train_tokens"
MAX_TAGS = 12
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


@dataclass(frozen=True)
class LoraInfo:
    title: str | None = None
    trigger_words: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # most frequent first, at most MAX_TAGS
    changes: tuple[str, ...] = ()  # of CHANGES, in that order
    problem: str | None = None  # why a job would refuse the file's keys (check_layout), None when they look right
    widths: frozenset[int] = frozenset()  # the Stage C widths its attention factors fit (check_layout)

    @property
    def width(self) -> int | None:
        """The one Stage C width its attention factors fit, or None (no attention factors, or several widths)."""
        return next(iter(self.widths)) if len(self.widths) == 1 else None

    @property
    def variant(self) -> str | None:
        """The released Stage C it was made for ("lite" / "full"), told by its width; None when unknown."""
        return STAGE_C_VARIANTS.get(self.width) if self.width is not None else None

    def made_for_other(self, variant: str | None) -> str | None:
        """The Stage C variant it was made for when that is not ``variant`` (the one a job would use), else None."""
        return self.variant if self.variant and variant and self.variant != variant else None

    @property
    def words(self) -> tuple[str, ...]:
        """Trigger words, then the training tags that are not among them."""
        seen = {w.lower() for w in self.trigger_words}
        return self.trigger_words + tuple(t for t in self.tags if t.lower() not in seen)


def is_new_token(token: str) -> bool:
    """The reference trainer's test: ``[…]`` and ``<…>`` tokens are added to the vocabulary, others are regexes."""
    return (token.startswith("[") and token.endswith("]")) or (token.startswith("<") and token.endswith(">"))


def sidecar_path(path: Path) -> Path:
    """``<stem>.json`` next to a LoRA file: where its ``train_tokens`` may be given."""
    return path.with_suffix(".json")


# ---------------------------------------------------------------------------------------------
# key layouts (pipeline/lora.py reads the files; the names are told apart here, without torch)

#: kohya / ComfyUI / OneTrainer: prefix, module path with "_" for ".", factor
KOHYA_KEY = re.compile(
    r"^(lora_prior_unet_|lora_unet_|lora_prior_te_|lora_te_)(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$"
)
TEXT_PREFIXES = ("lora_prior_te_", "lora_te_")
#: keys of LoRA variants that are not plain low-rank products (LyCORIS LoHa / LoKr, DoRA)
OTHER_KINDS = re.compile(r"\.(hada_w\d_[ab]|lokr_w\d(_[ab])?|dora_scale|lora_mid\.weight|lora_magnitude_vector)$")
#: diffusers / PEFT keys: module path, then which factor (PEFT's names and diffusers' older ones)
PEFT_KEY = re.compile(r"^(.+)\.(lora_A\.weight|lora_B\.weight|lora\.down\.weight|lora\.up\.weight|"
                      r"lora_linear_layer\.down\.weight|lora_linear_layer\.up\.weight|alpha)$")  # fmt: skip
_PEFT_PARTS = {"lora_A": "lora_down.weight", "lora_B": "lora_up.weight", "lora.down": "lora_down.weight",
               "lora.up": "lora_up.weight", "lora_linear_layer.down": "lora_down.weight",
               "lora_linear_layer.up": "lora_up.weight", "alpha": "alpha"}  # fmt: skip
_PEFT_STAGE_C = ("prior", "unet", "transformer")
#: diffusers' StableCascadeUNet attention names -> the reference's (the kohya lookup's), at the end of a module path
_DIFFUSERS_ATTENTION = re.compile(r"\.attention\.(to_q|to_k|to_v|to_out\.0)$")
REFERENCE_KEY = re.compile(r"^weights\.(\d+)\.(lora_down|lora_up)$")
#: a textual-inversion embedding bundled in the file (OneTrainer, A1111): ``bundle_emb.<name>.<text encoder>``
BUNDLE_KEY = re.compile(r"^bundle_emb\.(.+)\.([^.]+)$")
BUNDLE_ENCODER = "clip_g"  # the vectors for Stable Cascade's text encoder


def _peft_split(path: str) -> tuple[str, str]:
    """A diffusers/PEFT module path as (prefix, path inside the model): ``prior`` / ``unet`` / ``transformer`` / ""
    for Stage C, ``text_encoder`` for the text encoder (also for an unprefixed ``text_model.…`` path)."""
    head, _, rest = path.partition(".")
    prefix, inner = (head, rest) if head in (*_PEFT_STAGE_C, "text_encoder") and rest else ("", path)
    inner = inner.removeprefix("base_model.model.")
    if not prefix and (inner.startswith("text_model.") or inner == "text_projection"):
        prefix = "text_encoder"
    return prefix, inner


def _peft_flat(inner: str) -> str:
    """A diffusers module path in the kohya lookup's flat form, diffusers' split attention names turned into the
    reference's: ``attention.to_q`` -> ``attention_attn_to_q``, ``attention.to_out.0`` -> ``…_attn_out_proj``."""
    inner = _DIFFUSERS_ATTENTION.sub(lambda m: ".attention.attn." + ("out_proj" if m[1] == "to_out.0" else m[1]), inner)
    return inner.replace(".", "_")


class ModuleKey(NamedTuple):
    """One tensor of a kohya- or diffusers-layout LoRA, with the module it changes."""

    key: str  # the tensor's name in the file
    module: str  # the file's name for the module: lora_prior_unet_…_to_q, prior.down_blocks.0.2.attention.to_q
    prefix: str  # lora_prior_unet_, lora_prior_te_ … (kohya); prior, unet, transformer, text_encoder or "" (diffusers)
    inner: str  # the module's path inside its model (diffusers' dotted path; the kohya flat name)
    flat: str  # the kohya lookup's name, without prefix: down_blocks_0_2_attention_attn_to_q
    text: bool  # in the text encoder (else Stage C)
    part: str  # "lora_down.weight", "lora_up.weight" or "alpha"


def module_keys(names: Iterable[str], layout: str) -> list[ModuleKey]:
    """The tensors of a file in the ``layout`` (:func:`key_layout`) "kohya" or "diffusers", bundled embeddings left
    out, each with the module it changes: one reading of the names for the job's reader and the header check."""
    out = []
    for key in names:
        if BUNDLE_KEY.match(key):
            continue
        if layout == "kohya":
            m = KOHYA_KEY.match(key)
            out.append(ModuleKey(key, m[1] + m[2], m[1], m[2], m[2], m[1] in TEXT_PREFIXES, m[3]))
        else:
            path, part = PEFT_KEY.match(key).groups()
            prefix, inner = _peft_split(path)
            part = _PEFT_PARTS[part.removesuffix(".weight")]
            out.append(ModuleKey(key, path, prefix, inner, _peft_flat(inner), prefix == "text_encoder", part))
    return out


#: Stage C's Linear layers and packed attentions in the kohya lookup's flat form (what a LoRA may change there), and
#: the text encoder's (transformers' names): a file naming anything else is for another model
_STAGE_C_MODULE = re.compile(
    r"(down|up)_blocks_\d+_\d+_(attention_attn_(to_[qkv]|in_proj|out_proj)|kv_mapper_1|channelwise_[04]|mapper(_[a-z]+)?)"
    r"|clip_(txt|txt_pooled|img)_mapper"
)
_TEXT_MODULE = re.compile(
    r"text_model_encoder_layers_\d+_(self_attn_[qkv]_proj|self_attn_out_proj|mlp_fc[12])|text_projection"
)
_ATTENTION_INPUT = re.compile(r"_attention_attn_(to_[qkv]|in_proj|out_proj)$")
#: the released Stage C widths (checkpoint manifests stage_c / stage_c_lite: c_hidden)
STAGE_C_VARIANTS = {2048: "full", 1536: "lite"}


#: the reference layout's learned token embeddings (offsets and their token ids)
REFERENCE_EMBEDDINGS = ("embeddings.embeddings", "embeddings.indices")


def key_layout(names: Iterable[str]) -> str:
    """The layout of a LoRA file's tensor names (bundled embeddings left out): "reference", "kohya" or "diffusers"
    ("kohya" when only bundled embeddings are left). Raises ValueError saying why for LyCORIS/DoRA files and for
    names in no layout read here."""
    keys = sorted(k for k in names if not BUNDLE_KEY.match(k))
    other = [k for k in keys if OTHER_KINDS.search(k)]
    if other:
        raise ValueError(
            f"a LyCORIS (LoHa/LoKr) or DoRA file (keys such as {', '.join(other[:2])}); only plain LoRA "
            "(lora_down/lora_up) files are read"
        )
    if all(KOHYA_KEY.match(k) for k in keys):
        return "kohya"
    if all(REFERENCE_KEY.match(k) or k in REFERENCE_EMBEDDINGS for k in keys):
        return "reference"
    if all(PEFT_KEY.match(k) for k in keys):
        return "diffusers"
    odd = [k for k in keys if not (REFERENCE_KEY.match(k) or KOHYA_KEY.match(k) or PEFT_KEY.match(k))][:3]
    raise ValueError(
        f"unknown key layout (e.g. {', '.join(odd)}); read are the reference Stable Cascade layout "
        "(weights.<i>.lora_down/lora_up), the kohya/ComfyUI/OneTrainer layout (lora_prior_unet_….lora_down.weight, "
        "text encoder lora_prior_te_…) and the diffusers/PEFT layout (prior.<module>.lora_A.weight)"
    )


def check_layout(shapes: dict[str, list[int]]) -> tuple[str | None, frozenset[int]]:
    """``(problem, widths)`` for a LoRA file's tensors (name -> shape): why a job would refuse its keys, told from the
    names alone (None when they look like a Stable Cascade LoRA; whether its shapes fit is the job's to check), and
    the Stage C widths its attention factors were made for (the input width of each; empty when it changes no
    attention)."""
    problem, widths, _ = _survey(shapes)
    return problem, widths


#: what a LoRA may change, in the order they are listed
CHANGES = ("Stage C", "text encoder", "learned tokens")


def _survey(shapes: dict[str, list[int]]) -> tuple[str | None, frozenset[int], tuple[str, ...]]:
    """:func:`check_layout`'s problem and widths, and what the file changes (of :data:`CHANGES`)."""
    tokens = any(BUNDLE_KEY.match(k) or k in REFERENCE_EMBEDDINGS for k in shapes)

    def changed(stage_c: bool, text: bool) -> tuple[str, ...]:
        return tuple(name for name, present in zip(CHANGES, (stage_c, text, tokens), strict=True) if present)

    try:
        layout = key_layout(shapes)
    except ValueError as exc:
        return str(exc), frozenset(), ()
    if layout == "reference":
        downs = [shape for k, shape in shapes.items() if REFERENCE_KEY.match(k) and k.endswith("_down")]
        # every entry is an attention's out_proj or packed in_proj: its input is Stage C's width
        return None, frozenset(shape[1] for shape in downs if len(shape) == 2), changed(bool(downs), False)
    keys = module_keys(shapes, layout)
    changes = changed(any(not k.text for k in keys), any(k.text for k in keys))
    bad = sorted({k.module for k in keys if not (_TEXT_MODULE if k.text else _STAGE_C_MODULE).fullmatch(k.flat)})
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        problem = f"not for Stable Cascade: it names {bad[0]}{more}, which Stage C and its text encoder lack"
        return problem, frozenset(), changes
    widths = {shapes[k.key][1] for k in keys if not k.text and k.part == "lora_down.weight"
              and _ATTENTION_INPUT.search(k.flat) and len(shapes[k.key]) >= 2}  # fmt: skip
    return None, frozenset(widths), changes


def _read_header(path: str | Path) -> tuple[dict[str, str], dict[str, list[int]]]:
    """The ``__metadata__`` of a safetensors file's header (empty when it has none) and its tensors' shapes."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its header length)")
        (size,) = struct.unpack("<Q", head)
        if size > _MAX_HEADER:
            raise ValueError(f"{path}: not a safetensors file (header length {size})")
        raw = f.read(size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        return {}, {}
    metadata = header.get("__metadata__")
    shapes = {}
    for name, entry in header.items():
        if name != "__metadata__":
            shape = entry.get("shape") if isinstance(entry, dict) else None
            shapes[str(name)] = [int(n) for n in shape] if isinstance(shape, list) else []
    if not isinstance(metadata, dict):
        return {}, shapes
    return {str(k): v for k, v in metadata.items() if isinstance(v, str)}, shapes


def _new_tokens(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [p[0] for p in value if isinstance(p, list) and p and isinstance(p[0], str) and is_new_token(p[0])]


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError):
        return None


def _tags(text: str | None) -> tuple[str, ...]:
    frequency = _json(text) if text else None
    if not isinstance(frequency, dict):
        return ()
    counts: dict[str, int] = {}
    shown: dict[str, str] = {}
    for folder in frequency.values():
        if not isinstance(folder, dict):
            continue
        for tag, count in folder.items():
            word = str(tag).strip()
            if word and isinstance(count, int):
                key = word.lower()
                counts[key] = counts.get(key, 0) + count
                shown.setdefault(key, word)
    ranked = sorted(counts, key=lambda k: (-counts[k], k))
    return tuple(shown[k] for k in ranked[:MAX_TAGS])


def read_lora_info(path: str | Path) -> LoraInfo:
    """Title, trigger words and training tags of the LoRA at ``path`` (see the module's docstring)."""
    path = Path(path)
    metadata, shapes = _read_header(path)
    names = list(shapes)
    triggers: list[str] = []
    for entry in ("modelspec.trigger_phrase", "trained_words"):  # kohya's; SimpleTuner's (its instance prompts)
        triggers += [word.strip() for word in metadata.get(entry, "").split(",") if word.strip()]
    bundles = [m[1] for m in map(BUNDLE_KEY.match, names) if m and m[2] == BUNDLE_ENCODER]
    triggers += bundles  # bundled embeddings apply where a prompt names them
    triggers += _new_tokens(_json(metadata.get(TRAIN_TOKENS, "")))
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = None  # the job reports a broken sidecar; here it only adds no words
        if isinstance(data, dict):
            triggers += _new_tokens(data.get(TRAIN_TOKENS))
    unique = tuple(dict.fromkeys(triggers))
    title = metadata.get("modelspec.title") or metadata.get("ss_output_name") or None
    problem, widths, changes = _survey(shapes)
    return LoraInfo(title, unique, _tags(metadata.get("ss_tag_frequency")), changes, problem, widths)
