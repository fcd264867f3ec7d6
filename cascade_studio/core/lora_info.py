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
  a diffusers ``text_encoder.…`` part), learned tokens (a reference LoRA's ``embeddings.*``).

Nothing here fails on a file without metadata; a file that is not a safetensors file raises ValueError naming it.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

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


#: what a LoRA's tensors change, told by their names' prefixes (the layouts pipeline/lora.py reads)
CHANGES = {
    "Stage C": ("weights.", "lora_prior_unet_", "lora_unet_", "prior.", "unet.", "transformer."),
    "text encoder": ("lora_prior_te_", "lora_te_", "text_encoder.", "text_model."),
    "learned tokens": ("embeddings.", "bundle_emb."),
}


_BUNDLE_G = re.compile(r"^bundle_emb\.(.+)\.clip_g$")


def _read_header(path: str | Path) -> tuple[dict[str, str], list[str]]:
    """The ``__metadata__`` of a safetensors file's header (empty when it has none) and its tensor names."""
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
        return {}, []
    metadata = header.get("__metadata__")
    names = [str(k) for k in header if k != "__metadata__"]
    if not isinstance(metadata, dict):
        return {}, names
    return {str(k): v for k, v in metadata.items() if isinstance(v, str)}, names


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
    metadata, names = _read_header(path)
    triggers: list[str] = []
    for entry in ("modelspec.trigger_phrase", "trained_words"):  # kohya's; SimpleTuner's (its instance prompts)
        triggers += [word.strip() for word in metadata.get(entry, "").split(",") if word.strip()]
    triggers += [m[1] for m in map(_BUNDLE_G.match, names) if m]  # bundled embeddings apply where they are named
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
    changes = tuple(part for part, prefixes in CHANGES.items() if any(n.startswith(prefixes) for n in names))
    return LoraInfo(title, unique, _tags(metadata.get("ss_tag_frequency")), changes)
