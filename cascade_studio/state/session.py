"""The prompt panel's state: every value that goes into the next Generate press.

Widgets bind to a `SessionModel` (see `ui/prompt_panel.py`); none of them holds a value another part of the
window needs. Each field is a property whose setter converts and checks the value, stores it and emits
`<name>_changed` when it really changed (so two-way bindings settle after one round). Threading: GUI thread
only.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from ..core.geometry import snap_size
from ..core.request import (
    CONTEXTS,
    MASK_MODES,
    MAX_MASK_PIXELS,
    MAX_SEED,
    METHODS,
    MODES,
    SAMPLERS,
    SOURCE_MODES,
    STAGE_B_DEFAULTS,
    STAGE_C_DEFAULTS,
    VARIANTS,
    GenerationRequest,
    LoraUse,
    StageSettings,
    lora_use,
)
from .settings import HISTORY_LIMIT, Settings

#: aspect ratio -> (width, height): sides multiples of 128 px, about one megapixel (Stable Cascade's native size)
SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "4:3": (1152, 896),
    "3:4": (896, 1152),
    "3:2": (1152, 768),
    "2:3": (768, 1152),
    "16:9": (1408, 768),
    "9:16": (768, 1408),
    "21:9": (1536, 640),
    "9:21": (640, 1536),
}
CUSTOM = "custom"
SEED_POLICIES = ("random", "fixed", "increment")
RANDOM_SEED_BELOW = 2**31  # as the CLI: short enough to read out and type back
MAX_BATCH = 16
MAX_COUNT = 999
MAX_STEPS = 1000
MAX_PADDING = 1024
MAX_GROW = 256
#: the outpaint extents (left, top, right, bottom) a switch to outpaint mode starts from
DEFAULT_OUTPAINT = (0, 0, 256, 0)
#: where canny and upscale take their picture from: the canvas, or the source image file
INPUTS = ("canvas", "file")


def random_seed() -> int:
    return secrets.randbelow(RANDOM_SEED_BELOW)


def _choice(allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)} (got {value!r})")
        return value

    return convert


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ValueError(f"must be an integer (got {value!r})")
        return min(high, max(low, int(value)))

    return convert


def _float_range(low: float, high: float) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"must be a number (got {value!r})")
        return float(min(high, max(low, value)))

    return convert


def _sides(value: Any) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"must be four integers (left, top, right, bottom) or None (got {value!r})")
    clamp = _int_range(0, 4096)
    return tuple(clamp(v) for v in value)  # type: ignore[return-value]


def _loras(value: Any) -> tuple[LoraUse, ...]:
    """(name, weight) or (name, weight, text weight) entries (lists from a saved state are accepted); weight ranges
    are checked by the request."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of (name, weight) pairs (got {type(value).__name__})")
    out = []
    for entry in value:
        use = lora_use(entry)
        if use is None:
            raise ValueError(f"must hold (name, weight) or (name, weight, text weight) entries (got {entry!r})")
        out.append(use)
    return tuple(out)


def _str(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"must be a string (got {type(value).__name__})")
    return value


class _Field:
    """A stored, converted value that emits `<name>_changed` on the owner when it changes."""

    def __init__(self, default: Any, convert: Callable[[Any], Any]):
        self.default, self.convert = default, convert

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return obj._values.get(self.name, self.default)

    def __set__(self, obj: Any, value: Any) -> None:
        try:
            value = self.convert(value)
        except ValueError as exc:
            raise ValueError(f"{self.name} {exc}") from None
        if obj._values.get(self.name, self.default) == value:
            return
        obj._values[self.name] = value
        getattr(obj, f"{self.name}_changed").emit(value)


class SessionModel(QObject):
    """Every prompt-panel value, the prompt history, and building the requests of one Generate press."""

    prompt_changed = Signal(str)
    negative_changed = Signal(str)
    size_preset_changed = Signal(str)
    width_changed = Signal(int)
    height_changed = Signal(int)
    size_note_changed = Signal(str)  # why the last size typed was changed ("" when it was valid)
    seed_changed = Signal(object)  # an int up to 2**64 - 1: wider than a Qt int
    seed_policy_changed = Signal(str)
    batch_size_changed = Signal(int)
    count_changed = Signal(int)
    steps_c_changed = Signal(int)
    cfg_c_changed = Signal(float)
    shift_changed = Signal(float)
    steps_b_changed = Signal(int)
    cfg_b_changed = Signal(float)
    shift_b_changed = Signal(float)
    sampler_changed = Signal(str)
    variant_changed = Signal(str)
    mode_changed = Signal(str)
    strength_changed = Signal(float)
    source_image_changed = Signal(str)  # "" when none
    mask_image_changed = Signal(str)  # "" when none (the window fills it from the canvas at Generate)
    control_image_changed = Signal(str)  # "" when none
    control_strength_changed = Signal(float)
    mask_grow_changed = Signal(int)
    mask_feather_changed = Signal(int)
    context_changed = Signal(str)
    context_padding_changed = Signal(int)
    outpaint_changed = Signal(object)  # (left, top, right, bottom) or None (None unless mode is outpaint)
    method_changed = Signal(str)
    loras_changed = Signal(object)  # tuple of LoraUse: the LoRAs besides the prompt's <lora:…> tags
    input_changed = Signal(str)  # canny/upscale: "canvas" or "file"
    history_changed = Signal()  # the history or the position in it changed (enable previous/next)

    prompt = _Field("", _str)
    negative = _Field("", _str)
    seed = _Field(0, _int_range(0, MAX_SEED))
    seed_policy = _Field("random", _choice(SEED_POLICIES))
    batch_size = _Field(1, _int_range(1, MAX_BATCH))
    count = _Field(1, _int_range(1, MAX_COUNT))
    steps_c = _Field(STAGE_C_DEFAULTS.steps, _int_range(1, MAX_STEPS))
    cfg_c = _Field(STAGE_C_DEFAULTS.cfg, _float_range(0.0, 30.0))
    shift = _Field(STAGE_C_DEFAULTS.shift, _float_range(0.01, 20.0))
    steps_b = _Field(STAGE_B_DEFAULTS.steps, _int_range(1, MAX_STEPS))
    cfg_b = _Field(STAGE_B_DEFAULTS.cfg, _float_range(0.0, 30.0))
    shift_b = _Field(STAGE_B_DEFAULTS.shift, _float_range(0.01, 20.0))  # not in the panel; kept for recall
    sampler = _Field("ddpm", _choice(SAMPLERS))
    variant = _Field("lite", _choice(VARIANTS))
    mode = _Field("text", _choice(MODES))
    strength = _Field(0.8, _float_range(0.01, 1.0))
    source_image = _Field("", _str)
    mask_image = _Field("", _str)
    control_image = _Field("", _str)
    control_strength = _Field(1.0, _float_range(0.0, 2.0))
    mask_grow = _Field(0, _int_range(-MAX_GROW, MAX_GROW))
    mask_feather = _Field(16, _int_range(0, MAX_MASK_PIXELS))
    context = _Field("image", _choice(CONTEXTS))
    context_padding = _Field(64, _int_range(0, MAX_PADDING))
    outpaint = _Field(None, _sides)
    method = _Field("auto", _choice(METHODS))
    input = _Field("canvas", _choice(INPUTS))
    loras = _Field((), _loras)  # the panel's LoRA list (ui/lora_list.py)

    #: fields saved between runs by state()/restore_state() (the size is saved as width/height)
    STATE_FIELDS = (
        "prompt", "negative", "seed", "seed_policy", "batch_size", "count", "steps_c", "cfg_c", "shift",
        "steps_b", "cfg_b", "shift_b", "sampler", "variant", "mode", "strength", "source_image", "mask_image",
        "control_image", "control_strength", "mask_grow", "mask_feather", "context", "context_padding", "outpaint",
        "method", "input", "loras",
    )  # fmt: skip

    def __init__(self, settings: Settings | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._values: dict[str, Any] = {"seed": random_seed()}
        self._width, self._height = SIZE_PRESETS["1:1"]
        self._size_preset = "1:1"
        self._size_note = ""
        self._settings = settings
        self._history: list[dict[str, str]] = settings.prompt_history if settings is not None else []
        self._history_pos: int | None = None  # index into the history while browsing it
        self._draft: dict[str, str] | None = None  # what was typed before browsing started
        self._mode = self.mode
        self.mode_changed.connect(self._on_mode_changed)

    def _on_mode_changed(self, mode: str) -> None:
        """Outpaint extents exist only in outpaint mode; inpaint and outpaint start at strength 1 (the
        reference's), and latent blending is offered only for them."""
        previous, self._mode = self._mode, mode
        if mode == "outpaint":
            if self.outpaint is None:
                self.outpaint = DEFAULT_OUTPAINT
        else:
            self.outpaint = None
        if mode in MASK_MODES and previous not in MASK_MODES:
            self.strength = 1.0
        if mode not in MASK_MODES and self.method == "latent_blend":
            self.method = "auto"

    # -- size ------------------------------------------------------------------------------------------

    @property
    def width(self) -> int:
        return self._width

    @width.setter
    def width(self, value: int) -> None:
        self.set_size(value, self._height)

    @property
    def height(self) -> int:
        return self._height

    @height.setter
    def height(self, value: int) -> None:
        self.set_size(self._width, value)

    @property
    def size_preset(self) -> str:
        return self._size_preset

    @size_preset.setter
    def size_preset(self, key: str) -> None:
        if key != CUSTOM and key not in SIZE_PRESETS:
            raise ValueError(f"size_preset must be one of {', '.join([*SIZE_PRESETS, CUSTOM])} (got {key!r})")
        if key == CUSTOM:
            self._set_preset(CUSTOM)
        else:
            self.set_size(*SIZE_PRESETS[key])

    @property
    def size_note(self) -> str:
        return self._size_note

    def set_size(self, width: int, height: int) -> None:
        """Any size; it is snapped to the nearest valid one and `size_note` says what was changed."""
        w, h, note = snap_size(int(width), int(height))
        if w != self._width:
            self._width = w
            self.width_changed.emit(w)
        if h != self._height:
            self._height = h
            self.height_changed.emit(h)
        if (note or "") != self._size_note:
            self._size_note = note or ""
            self.size_note_changed.emit(self._size_note)
        self._set_preset(next((k for k, size in SIZE_PRESETS.items() if size == (w, h)), CUSTOM))

    def swap_size(self) -> None:
        self.set_size(self._height, self._width)

    def _set_preset(self, key: str) -> None:
        if key != self._size_preset:
            self._size_preset = key
            self.size_preset_changed.emit(key)

    # -- source image ----------------------------------------------------------------------------------

    def use_source_image(self, path: str) -> None:
        """An image chosen as source (dropped, opened, or from the gallery): text mode becomes image-to-image;
        in canny mode it becomes the control image. Canny and upscale then read that file, not the canvas."""
        if self.mode == "canny":
            self.control_image = str(path)
        else:
            self.source_image = str(path)
        if self.mode == "text":
            self.mode = "img2img"
        if self.mode in ("canny", "upscale"):
            self.input = "file"

    @property
    def chosen_image(self) -> str:
        """The picture file the panel shows for this mode: the control image in canny mode, else the source."""
        return self.control_image if self.mode == "canny" else self.source_image

    def new_random_seed(self) -> None:
        self.seed = random_seed()

    # -- requests --------------------------------------------------------------------------------------

    def request(self, seed: int | None = None, **inputs: Any) -> GenerationRequest:
        """The request the panel describes now (not validated). `inputs` replace request fields the window
        supplies itself (the canvas's saved image and mask, the outpaint extension, an upscale's size)."""
        mode = self.mode
        outpaint = self.outpaint if mode == "outpaint" else None
        request = GenerationRequest(
            prompt=self.prompt,
            negative_prompt=self.negative,
            seed=self.seed if seed is None else seed,
            width=self._width,
            height=self._height,
            batch_size=self.batch_size,
            stage_c=StageSettings(self.steps_c, self.cfg_c, self.shift),
            stage_b=StageSettings(self.steps_b, self.cfg_b, self.shift_b),
            variant=self.variant,
            mode=mode,
            source_image=(self.source_image or None) if mode in SOURCE_MODES else None,
            strength=self.strength,
            sampler=self.sampler,
            mask_image=(self.mask_image or None) if mode in MASK_MODES else None,
            control_image=(self.control_image or None) if mode == "canny" else None,
            control_strength=self.control_strength,
            mask_grow=self.mask_grow,
            mask_feather=self.mask_feather,
            context=self.context,
            context_padding=self.context_padding,
            outpaint=outpaint,
            method=self.method,
            loras=self.loras,
        )
        return request.with_(**inputs) if inputs else request

    def requests(self, **inputs: Any) -> list[GenerationRequest]:
        """The `count` requests of one Generate press; raises ValueError (naming the fields) when invalid.

        Seeds: random gives each job a new seed (the seed field then shows the first); fixed gives job j the
        seed `seed + j * batch_size`, so the same press gives the same images; increment does the same and
        then moves the seed past the last image, so the next press continues the sequence.
        """
        step = self.batch_size
        if self.seed_policy == "random":
            seeds = [random_seed() for _ in range(self.count)]
        else:
            seeds = [self.seed + j * step for j in range(self.count)]
        jobs = [self.request(seed, **inputs).validate() for seed in seeds]
        if self.seed_policy == "random":
            self.seed = seeds[0]
        elif self.seed_policy == "increment":
            following = seeds[-1] + step
            self.seed = following if following <= MAX_SEED - step else 0
        self.remember_prompt()
        return jobs

    def apply_request(self, request: GenerationRequest) -> None:
        """Recall: put every value of `request` back (the seed policy becomes fixed, so it reproduces)."""
        self._history_pos, self._draft = None, None
        self.prompt = request.prompt
        self.negative = request.negative_prompt
        self.set_size(request.width, request.height)
        self.seed_policy = "fixed"
        self.seed = request.seed
        self.batch_size = request.batch_size
        self.steps_c, self.cfg_c, self.shift = request.stage_c.steps, request.stage_c.cfg, request.stage_c.shift
        self.steps_b, self.cfg_b, self.shift_b = request.stage_b.steps, request.stage_b.cfg, request.stage_b.shift
        self.sampler = request.sampler
        self.variant = request.variant
        self.strength = request.strength
        self.source_image = request.source_image or ""
        self.mask_image = request.mask_image or ""
        self.control_image = request.control_image or ""
        self.control_strength = request.control_strength
        self.mask_grow = request.mask_grow
        self.mask_feather = request.mask_feather
        self.context = request.context
        self.context_padding = request.context_padding
        self.method = request.method
        # the request's LoRA field comes back into the panel's LoRA list; <lora:…> tags stay in the prompt
        self.loras = request.loras
        self.mode = request.mode
        self.strength = request.strength  # after the mode: entering inpaint/outpaint resets it to 1
        self.outpaint = request.outpaint  # after the mode, which clears or defaults it
        if request.mode in ("canny", "upscale"):  # a recalled picture comes from its file, not the canvas
            self.input = "file" if (request.control_image or request.source_image) else self.input
        self.history_changed.emit()

    # -- persistence between runs ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in self.STATE_FIELDS}
        state.update(width=self._width, height=self._height, loras=[use.compact() for use in self.loras])
        return state

    def restore_state(self, state: dict[str, Any]) -> None:
        """Values from `state()`; unknown keys and values that no longer fit are skipped."""
        for name in self.STATE_FIELDS:
            if name in state:
                with contextlib.suppress(TypeError, ValueError):
                    setattr(self, name, state[name])
        with contextlib.suppress(TypeError, ValueError):
            self.set_size(int(state.get("width", self._width)), int(state.get("height", self._height)))
        if self._size_note:  # a note is about what the user just typed, not about a restored value
            self._size_note = ""
            self.size_note_changed.emit("")

    # -- prompt history --------------------------------------------------------------------------------

    @property
    def history(self) -> list[dict[str, str]]:
        return list(self._history)

    @property
    def can_go_previous(self) -> bool:
        if self._history_pos is None:
            return bool(self._history)
        return self._history_pos > 0

    @property
    def can_go_next(self) -> bool:
        return self._history_pos is not None

    def remember_prompt(self) -> None:
        entry = {"prompt": self.prompt, "negative": self.negative}
        if entry["prompt"].strip() or entry["negative"].strip():
            self._history = [e for e in self._history if e != entry] + [entry]
            self._history = self._history[-HISTORY_LIMIT:]
            if self._settings is not None:
                self._settings.prompt_history = self._history
        self._history_pos, self._draft = None, None
        self.history_changed.emit()

    def history_previous(self) -> bool:
        """Show the previous prompt of the history; False when there is none."""
        current = {"prompt": self.prompt, "negative": self.negative}
        if self._history_pos is None:
            if not self._history:
                return False
            self._draft = current
            pos = len(self._history) - 1
            if self._history[pos] == current and pos > 0:  # skip the entry that is already shown
                pos -= 1
        elif self._history_pos > 0:
            pos = self._history_pos - 1
        else:
            return False
        self._history_pos = pos
        self._show(self._history[pos])
        return True

    def history_next(self) -> bool:
        """Step forward; past the newest entry, the text typed before browsing comes back."""
        if self._history_pos is None:
            return False
        pos = self._history_pos + 1
        if pos < len(self._history):
            self._history_pos = pos
            self._show(self._history[pos])
        else:
            draft = self._draft or {"prompt": "", "negative": ""}
            self._history_pos, self._draft = None, None
            self._show(draft)
        return True

    def _show(self, entry: dict[str, str]) -> None:
        self.prompt = entry["prompt"]
        self.negative = entry["negative"]
        self.history_changed.emit()
