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
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar

from .geometry import MAX_SIZE, MIN_SIZE, SIZE_STEP, snap_size

MODES = ("text", "variation", "img2img")
SAMPLERS = ("ddpm", "ddim")
VARIANTS = ("lite", "full")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts up to 0xffff_ffff_ffff_ffff
MAX_PROMPT_CHARS = 100_000


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

    schema_version: ClassVar[int] = 1

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
        elif self.mode in ("variation", "img2img") and not self.source_image:
            problems.append(f"source_image is required in {self.mode} mode")
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
        source_image = data.get("source_image")
        if source_image is not None and not isinstance(source_image, str):
            raise ValueError(f"source_image must be a path string or null (got {type(source_image).__name__})")
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
            source_image=source_image,
            strength=_get_float(data, "strength", 0.8, "strength"),
            sampler=_get_str(data, "sampler", "ddpm"),
        )
        return request.validate()

    @classmethod
    def from_json(cls, text: str) -> GenerationRequest:
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"generation request is not valid JSON: {exc}") from None
        return cls.from_dict(data)


# version n -> function turning a version-n dict into a version-(n + 1) dict. Add one per schema bump.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


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
