"""The one typed, serialisable description of a generation.

`GenerationRequest` holds everything that changes the pixels and nothing else. The same object drives the
GPU worker, the PNG metadata and "recall these settings", so it is frozen, JSON-safe and versioned:
`to_dict()` always writes the current `schema_version`; `from_dict()` accepts any older version (migrating
it step by step) and refuses a newer one with a clear message.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, NamedTuple

from .geometry import MAX_SIZE, MIN_SIZE, SIZE_STEP, snap_size

MODES = ("text", "variation", "img2img", "inpaint", "outpaint", "canny", "upscale")
#: modes that read ``source_image`` (canny reads ``control_image`` instead)
SOURCE_MODES = ("variation", "img2img", "inpaint", "outpaint", "upscale")
#: modes whose Stage C starts from the noised source latent, so ``strength`` applies
STRENGTH_MODES = ("img2img", "inpaint", "outpaint")
#: modes that paste the result back into the source through a mask
MASK_MODES = ("inpaint", "outpaint")
#: how inpaint/outpaint run: "auto" picks "controlnet" when the inpainting ControlNet fits the Stage C (the full
#: 3.6B one for the released files) and "latent_blend" otherwise; finished images record the method used.
METHODS = ("auto", "controlnet", "latent_blend")
CONTEXTS = ("image", "mask")  # generate on the whole image, or on the masked area plus context_padding
MAX_MASK_PIXELS = 4096
SAMPLERS = ("ddpm", "ddim")
VARIANTS = ("lite", "full")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts up to 0xffff_ffff_ffff_ffff
MAX_PROMPT_CHARS = 100_000
MAX_LORAS = 16
MAX_LORA_WEIGHT = 10.0
#: ``<lora:name>``, ``<lora:name:0.8>`` and A1111's other forms (``<lora:name:TE:UNET>``, ``<lora:name:TE:UNET:DYN>``,
#: ``<lora:name:unet=0.8:te=0.5>``) in a prompt; the name may not hold ``<``, ``>`` or ``:``. The arguments are
#: read by :func:`parse_lora_tag`; a tag whose arguments do not parse stays in the prompt as text
#: (:func:`unread_lora_tags` finds those, to say so).
LORA_TAG = re.compile(r"<lora:([^<>:]+?)((?::[^<>:]*){0,3})>", re.IGNORECASE)
_ANY_LORA_TAG = re.compile(r"<lora:[^<>]*>", re.IGNORECASE)
#: What the forms read are, for messages about a tag that is not one of them.
LORA_TAG_FORMS = "<lora:name>, <lora:name:weight>, <lora:name:TE:UNET>, <lora:name:unet=W:te=W>"
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")


class LoraUse(NamedTuple):
    """One LoRA of a job: its name (in ``<models dir>/lora/``, or a path), the weight of its Stage C part, and the
    weight of its text-encoder part when that differs (None: the same weight, A1111's and ComfyUI's default)."""

    name: str
    weight: float
    text_weight: float | None = None

    @property
    def text(self) -> float:
        """The weight its text-encoder part (and nothing else) is applied at."""
        return self.weight if self.text_weight is None else self.text_weight

    def compact(self) -> list:
        """``[name, weight]``, or ``[name, weight, text weight]`` when that differs: the saved form."""
        return [self.name, self.weight] if self.text_weight is None else [self.name, self.weight, self.text_weight]

    def describe(self) -> str:
        """``0.8``, or ``0.8, text encoder 0.5``."""
        if self.text_weight is None:
            return f"{self.weight:g}"
        return f"{self.weight:g}, text encoder {self.text_weight:g}"


def parse_lora_tag(name: str, args: str) -> LoraUse | None:
    """A ``<lora:…>`` tag's use, A1111's way: no argument is weight 1; one number is the weight of both parts; two
    are the text encoder's then Stage C's (``<lora:name:TE:UNET>``); ``te=`` and ``unet=`` name them. A1111's third
    number or ``dyn=`` (the rank a LyCORIS file is cut to) is read and ignored: plain LoRAs have no such setting. None
    when an argument is not one of these."""
    positional: list[float] = []
    named: dict[str, float] = {}
    for part in [a.strip() for a in args.split(":")[1:]]:
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if eq and key in ("te", "unet", "dyn") and _NUMBER.fullmatch(value.strip()) and key not in named:
            named[key] = float(value)
        elif not eq and _NUMBER.fullmatch(part) and not named:
            positional.append(float(part))
        else:
            return None
    te = named.get("te", positional[0] if positional else 1.0)
    unet = named.get("unet", positional[1] if len(positional) > 1 else te)
    return LoraUse(name.strip(), unet, None if te == unet else te)


def _read_tag(tag: str) -> LoraUse | None:
    """The use of one ``<lora:…>`` tag as written, or None when it is not in a form we read."""
    match = LORA_TAG.fullmatch(tag)
    return None if match is None else parse_lora_tag(match.group(1), match.group(2))


def unread_lora_tags(prompt: str) -> list[str]:
    """The ``<lora:…>`` tags of ``prompt`` that :func:`split_lora_tags` leaves in it as text (arguments that do not
    parse, a name with ``:``), in order: to warn that they add no LoRA."""
    return [match.group(0) for match in _ANY_LORA_TAG.finditer(prompt) if _read_tag(match.group(0)) is None]


def split_lora_tags(prompt: str) -> tuple[str, list[LoraUse]]:
    """``prompt`` without its ``<lora:…>`` tags (:func:`parse_lora_tag`), and the tags' uses in order. The text
    around a removed tag is joined with single spaces, so "a <lora:x:1> cat" becomes "a cat"."""
    found = []

    def take(match: re.Match) -> str:
        use = _read_tag(match.group(0))
        if use is None:
            return match.group(0)
        found.append(use)
        return " "

    text = _ANY_LORA_TAG.sub(take, prompt)
    if not found:
        return prompt, []
    text = "\n".join(re.sub(r"[ \t]{2,}", " ", line).strip() for line in text.split("\n")).strip()
    text = re.sub(r"\s+([,.])", r"\1", text)
    return text, found


def lora_use(entry: object) -> LoraUse | None:
    """``entry`` as a :class:`LoraUse` when it is a (name, weight) or (name, weight, text weight) tuple or list of
    the right types (a text weight may be None); None otherwise."""
    if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3) or not isinstance(entry[0], str):
        return None
    numbers = [entry[1], entry[2] if len(entry) == 3 else None]
    if not _is_number(numbers[0]) or not (numbers[1] is None or _is_number(numbers[1])):
        return None
    weight = float(numbers[0])
    text = None if numbers[1] is None or float(numbers[1]) == weight else float(numbers[1])
    return LoraUse(entry[0], weight, text)


def combine_loras(*groups: object) -> list[LoraUse]:
    """Merge lists of uses in order; a name given again takes its later weights, keeping its first place."""
    merged: dict[str, LoraUse] = {}
    for group in groups:
        for entry in group:  # type: ignore[attr-defined]
            use = lora_use(entry)
            if use is not None:
                merged[use.name] = use
    return list(merged.values())


@dataclass(frozen=True)
class StageSettings:
    steps: int
    cfg: float
    shift: float

    def errors(self, name: str) -> list[str]:
        problems = []
        if not _is_int(self.steps) or self.steps < 1:
            problems.append(f"{name}.steps must be an integer of at least 1 (got {self.steps!r})")
        if not _is_number(self.cfg) or not self.cfg >= 0:
            problems.append(f"{name}.cfg must be a number of at least 0 (got {self.cfg!r})")
        if not _is_number(self.shift) or not self.shift > 0:
            problems.append(f"{name}.shift must be a number greater than 0 (got {self.shift!r})")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "cfg": float(self.cfg), "shift": float(self.shift)}

    @classmethod
    def from_dict(cls, d: Any, name: str, default: StageSettings) -> StageSettings:
        if not isinstance(d, Mapping):
            raise ValueError(f"{name} must be an object with steps, cfg and shift (got {type(d).__name__})")
        return cls(
            steps=_get_int(d, "steps", default.steps, f"{name}.steps"),
            cfg=_get_float(d, "cfg", default.cfg, f"{name}.cfg"),
            shift=_get_float(d, "shift", default.shift, f"{name}.shift"),
        )


STAGE_C_DEFAULTS = StageSettings(20, 4.0, 2.0)
STAGE_B_DEFAULTS = StageSettings(10, 1.1, 1.0)


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that changes the pixels of one generation (possibly a batch), and nothing else.

    Immutable, so it can be handed between threads freely. Build variants with `with_(...)`.
    """

    schema_version: ClassVar[int] = 4

    prompt: str
    _: KW_ONLY
    seed: int
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    batch_size: int = 1
    stage_c: StageSettings = field(default=STAGE_C_DEFAULTS)
    stage_b: StageSettings = field(default=STAGE_B_DEFAULTS)
    variant: str = "lite"
    mode: str = "text"
    source_image: str | None = None
    strength: float = 0.8
    sampler: str = "ddpm"
    # -- version 2: inpaint, outpaint, canny, upscale. Files are referred to by path, like source_image. --
    mask_image: str | None = None  # greyscale PNG, 255 = repaint (inpaint; optional extra mask for outpaint)
    control_image: str | None = None  # canny: the picture whose edges guide the generation
    control_strength: float = 1.0  # the ControlNet features' multiplier (the reference's cnet_multiplier)
    mask_grow: int = 0  # px the mask grows (negative: shrinks) before use
    mask_feather: int = 16  # px of the feathered transition band around the mask in the final composite
    context: str = "image"  # "image" or "mask" (the masked area plus context_padding px, pasted back)
    context_padding: int = 64
    outpaint: tuple[int, int, int, int] | None = None  # px added (left, top, right, bottom), snapped to 128 px
    method: str = "auto"
    # -- version 3: Stage C LoRAs, (name, weight) pairs; names are looked up in <models dir>/lora/ (or are paths).
    # ``<lora:name:weight>`` tags in the prompt add to these when the request runs.
    # -- version 4: (name, weight, text-encoder weight) where the text-encoder part has a weight of its own
    # (:class:`LoraUse`; pairs and triples given here are made LoraUse).
    loras: tuple[LoraUse, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.loras, tuple):
            uses = tuple(lora_use(e) or e for e in self.loras)  # malformed entries stay, for errors() to name
            object.__setattr__(self, "loras", uses)

    # -- validation -------------------------------------------------------------------------------------

    def errors(self) -> list[str]:
        """Every problem with this request, each message naming its field; empty when valid."""
        problems: list[str] = []
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if not isinstance(value, str):
                problems.append(f"{name} must be a string (got {type(value).__name__})")
            elif len(value) > MAX_PROMPT_CHARS:
                problems.append(f"{name} is longer than {MAX_PROMPT_CHARS} characters")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not _is_int(value) or not MIN_SIZE <= value <= MAX_SIZE:
                problems.append(f"{name} must be an integer from {MIN_SIZE} to {MAX_SIZE} px (got {value!r})")
            elif value % SIZE_STEP:
                nearest = snap_size(value, value)[0]
                problems.append(f"{name} must be a multiple of {SIZE_STEP} px (got {value}; nearest is {nearest})")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            problems.append(f"batch_size must be an integer of at least 1 (got {self.batch_size!r})")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            problems.append(f"seed must be an integer from 0 to {MAX_SEED} (got {self.seed!r})")
        elif _is_int(self.batch_size) and self.batch_size >= 1 and self.seed + self.batch_size - 1 > MAX_SEED:
            problems.append(f"seed is too large for a batch of {self.batch_size}: the last seed passes {MAX_SEED}")
        for name in ("stage_c", "stage_b"):
            stage = getattr(self, name)
            if isinstance(stage, StageSettings):
                problems.extend(stage.errors(name))
            else:
                problems.append(f"{name} must be StageSettings (got {type(stage).__name__})")
        for name, allowed in (("variant", VARIANTS), ("mode", MODES), ("sampler", SAMPLERS)):
            value = getattr(self, name)
            if value not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)} (got {value!r})")
        if not _is_number(self.strength) or not 0 < self.strength <= 1:
            problems.append(f"strength must be a number greater than 0 and at most 1 (got {self.strength!r})")
        if self.source_image is not None and not isinstance(self.source_image, str):
            problems.append(f"source_image must be a path string or None (got {type(self.source_image).__name__})")
        elif self.mode in SOURCE_MODES and not self.source_image:
            problems.append(f"source_image is required in {self.mode} mode")
        problems.extend(self._v2_errors())
        problems.extend(self._lora_errors())
        return problems

    def _lora_errors(self) -> list[str]:
        if not isinstance(self.loras, tuple):
            return [f"loras must be a tuple of (name, weight) pairs (got {type(self.loras).__name__})"]
        if len(self.loras) > MAX_LORAS:
            return [f"loras holds {len(self.loras)} entries; at most {MAX_LORAS} are allowed"]
        problems = []
        for i, entry in enumerate(self.loras):
            if not isinstance(entry, LoraUse):
                problems.append(
                    f"loras[{i}] must be a (name, weight) pair or (name, weight, text weight) (got {entry!r})"
                )
                continue
            name = entry.name
            if not name.strip() or any(ch in name for ch in "<>:\n") and not _is_path(name):
                problems.append(f"loras[{i}] name must be a non-empty name or path without < > (got {name!r})")
            for label, weight in (("weight", entry.weight), ("text weight", entry.text_weight)):
                if weight is not None and not -MAX_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
                    problems.append(f"loras[{i}] {label} must be a number from -{MAX_LORA_WEIGHT:g} to "
                                    f"{MAX_LORA_WEIGHT:g} (got {weight!r})")  # fmt: skip
        return problems

    def all_loras(self) -> list[LoraUse]:
        """The LoRAs this request runs with: the ``loras`` field, then the prompt's ``<lora:…>`` tags."""
        return combine_loras(self.loras, split_lora_tags(self.prompt)[1])

    def _v2_errors(self) -> list[str]:
        problems: list[str] = []
        for name in ("mask_image", "control_image"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                problems.append(f"{name} must be a path string or None (got {type(value).__name__})")
        if self.mode == "inpaint" and not self.mask_image:
            problems.append("mask_image is required in inpaint mode")
        if self.mode == "canny" and not self.control_image:
            problems.append("control_image is required in canny mode")
        if not _is_number(self.control_strength) or not 0 <= self.control_strength <= 2:
            problems.append(f"control_strength must be a number from 0 to 2 (got {self.control_strength!r})")
        if not _is_int(self.mask_grow) or not -MAX_MASK_PIXELS <= self.mask_grow <= MAX_MASK_PIXELS:
            problems.append(f"mask_grow must be an integer from -{MAX_MASK_PIXELS} to {MAX_MASK_PIXELS} px "
                            f"(got {self.mask_grow!r})")  # fmt: skip
        for name in ("mask_feather", "context_padding"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value <= MAX_MASK_PIXELS:
                problems.append(f"{name} must be an integer from 0 to {MAX_MASK_PIXELS} px (got {value!r})")
        if self.context not in CONTEXTS:
            problems.append(f"context must be one of {', '.join(CONTEXTS)} (got {self.context!r})")
        if self.outpaint is not None:
            sides = self.outpaint
            if (
                not isinstance(sides, tuple)
                or len(sides) != 4
                or not all(_is_int(v) and 0 <= v <= MAX_SIZE for v in sides)
            ):
                problems.append(f"outpaint must be four integers (left, top, right, bottom) from 0 to {MAX_SIZE} px "
                                f"(got {sides!r})")  # fmt: skip
            elif not any(sides):
                problems.append("outpaint must extend at least one side")
        if self.mode == "outpaint" and self.outpaint is None:
            problems.append("outpaint (left, top, right, bottom) is required in outpaint mode")
        elif self.mode != "outpaint" and self.outpaint is not None:
            problems.append(f"outpaint applies only in outpaint mode (mode is {self.mode}); set it to None")
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)} (got {self.method!r})")
        elif self.method == "latent_blend" and self.mode not in MASK_MODES:
            problems.append(f"method latent_blend works only for inpaint and outpaint (mode is {self.mode})")
        return problems

    def validate(self) -> GenerationRequest:
        """Raise ValueError listing every problem (each names its field); return self when valid."""
        problems = self.errors()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- batches ----------------------------------------------------------------------------------------

    def image_seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.batch_size)]

    def for_image(self, index: int) -> GenerationRequest:
        """The single-image request that regenerates image `index` of this batch exactly."""
        if not 0 <= index < self.batch_size:
            raise IndexError(f"image index {index} is outside a batch of {self.batch_size}")
        return dataclasses.replace(self, batch_size=1, seed=self.seed + index)

    def with_(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)

    # -- serialisation ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "stage_c": self.stage_c.to_dict(),
            "stage_b": self.stage_b.to_dict(),
            "variant": self.variant,
            "mode": self.mode,
            "source_image": self.source_image,
            "strength": float(self.strength),
            "sampler": self.sampler,
            "mask_image": self.mask_image,
            "control_image": self.control_image,
            "control_strength": float(self.control_strength),
            "mask_grow": self.mask_grow,
            "mask_feather": self.mask_feather,
            "context": self.context,
            "context_padding": self.context_padding,
            "outpaint": list(self.outpaint) if self.outpaint is not None else None,
            "method": self.method,
            "loras": [use.compact() for use in self.loras],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> GenerationRequest:
        """Build and validate a request from `to_dict()` output of this or any older schema version.

        Unknown keys are ignored; missing optional keys take their defaults. Raises ValueError naming the
        offending field, or saying the data comes from a newer Cascade Studio.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"a generation request must be an object (got {type(d).__name__})")
        version = d.get("schema_version", 1)
        if not _is_int(version) or version < 1:
            raise ValueError(f"schema_version must be a positive integer (got {version!r})")
        if version > cls.schema_version:
            raise ValueError(
                f"schema_version {version} comes from a newer Cascade Studio; this version reads up to "
                f"{cls.schema_version}. Update Cascade Studio to use these settings."
            )
        data = dict(d)
        while version < cls.schema_version:
            data = _MIGRATIONS[version](data)
            version += 1

        if "prompt" not in data:
            raise ValueError("prompt is missing")
        if "seed" not in data:
            raise ValueError("seed is missing")
        paths = {}
        for name in ("source_image", "mask_image", "control_image"):
            paths[name] = data.get(name)
            if paths[name] is not None and not isinstance(paths[name], str):
                raise ValueError(f"{name} must be a path string or null (got {type(paths[name]).__name__})")
        outpaint = data.get("outpaint")
        if outpaint is not None:
            if not isinstance(outpaint, (list, tuple)) or len(outpaint) != 4:
                raise ValueError(f"outpaint must be a list of four integers or null (got {outpaint!r})")
            outpaint = tuple(_get_int({"v": v}, "v", 0, "outpaint") for v in outpaint)
        request = cls(
            prompt=_get_str(data, "prompt", ""),
            seed=_get_int(data, "seed", 0, "seed"),
            negative_prompt=_get_str(data, "negative_prompt", ""),
            width=_get_int(data, "width", 1024, "width"),
            height=_get_int(data, "height", 1024, "height"),
            batch_size=_get_int(data, "batch_size", 1, "batch_size"),
            stage_c=StageSettings.from_dict(data.get("stage_c", {}), "stage_c", STAGE_C_DEFAULTS),
            stage_b=StageSettings.from_dict(data.get("stage_b", {}), "stage_b", STAGE_B_DEFAULTS),
            variant=_get_str(data, "variant", "lite"),
            mode=_get_str(data, "mode", "text"),
            source_image=paths["source_image"],
            strength=_get_float(data, "strength", 0.8, "strength"),
            sampler=_get_str(data, "sampler", "ddpm"),
            mask_image=paths["mask_image"],
            control_image=paths["control_image"],
            control_strength=_get_float(data, "control_strength", 1.0, "control_strength"),
            mask_grow=_get_int(data, "mask_grow", 0, "mask_grow"),
            mask_feather=_get_int(data, "mask_feather", 16, "mask_feather"),
            context=_get_str(data, "context", "image"),
            context_padding=_get_int(data, "context_padding", 64, "context_padding"),
            outpaint=outpaint,
            method=_get_str(data, "method", "auto"),
            loras=_get_loras(data),
        )
        return request.validate()

    @classmethod
    def from_json(cls, text: str) -> GenerationRequest:
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"generation request is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added the inpaint/outpaint/canny/upscale modes and their settings; a version-1 request (text,
    variation or img2img) means exactly what it meant, with those settings at their defaults."""
    defaults = {
        "mask_image": None,
        "control_image": None,
        "control_strength": 1.0,
        "mask_grow": 0,
        "mask_feather": 16,
        "context": "image",
        "context_padding": 64,
        "outpaint": None,
        "method": "auto",
    }
    return {**data, **defaults, "schema_version": 2}


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 added Stage C LoRAs; a version-2 request ran without any (tags in its prompt were plain text to
    it, and stay in the prompt, so a recalled v2 prompt with tags now applies them, as the user wrote them)."""
    return {**data, "loras": [], "schema_version": 3}


def _v3_to_v4(data: dict[str, Any]) -> dict[str, Any]:
    """Version 4 let a LoRA's text-encoder part have a weight of its own; a version-3 request's pairs mean the same."""
    return {**data, "schema_version": 4}


# version n -> function turning a version-n dict into a version-(n + 1) dict. Add one per schema bump.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


def _is_path(name: str) -> bool:
    return "/" in name or "\\" in name


def _get_loras(d: Mapping[str, Any]) -> tuple[LoraUse, ...]:
    value = d.get("loras", [])
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"loras must be a list of [name, weight] pairs (got {type(value).__name__})")
    out = []
    for i, entry in enumerate(value):
        use = lora_use(entry)
        if use is None:
            raise ValueError(f"loras[{i}] must be a [name, weight] or [name, weight, text weight] list (got {entry!r})")
        out.append(use)
    return tuple(out)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return _is_int(value)


def _get_str(d: Mapping[str, Any], key: str, default: str) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string (got {type(value).__name__})")
    return value


def _get_int(d: Mapping[str, Any], key: str, default: int, name: str) -> int:
    value = d.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer (got {value!r})")
    return value


def _get_float(d: Mapping[str, Any], key: str, default: float, name: str) -> float:
    value = d.get(key, default)
    if not _is_number(value):
        raise ValueError(f"{name} must be a finite number (got {value!r})")
    return float(value)
