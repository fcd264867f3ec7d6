"""GDF sampling as Stable Cascade uses it (spec §9–10): cosine schedule with shift, VP scaler,
ε target, CosineTNoiseCond, classifier-free guidance with the ρ = 0.7 rescale, DDPM/DDIM steps.

Everything here is plain torch (no Qt, no I/O). :func:`sample` is a Python generator that yields a
:class:`Step` after every model call, so callers can preview, report progress and cancel simply by
no longer iterating. The result a caller keeps is the **last step's ``x0``** (as the reference
notebooks do), not the final noisy state.

Reproducibility: :class:`SeededNoise` draws every random number on the CPU from one generator per
image, so an image depends only on its own seed, never on the device or on its batch mates. Together
with ``rescale="image"`` (the guidance rescale computed per image) image k of a batch equals the
same seed sampled alone, provided the network itself treats images independently.

The schedule math is done in float32 with the same operation order as the reference ``gdf`` package.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

__all__ = [
    "SAMPLERS",
    "RESCALE_SCOPES",
    "Img2ImgStart",
    "NoiseSource",
    "SeededNoise",
    "Step",
    "alpha_sigma",
    "diffuse",
    "img2img_start",
    "log_snr",
    "noise_cond",
    "sample",
]

SAMPLERS = ("ddpm", "ddim")
RESCALE_SCOPES = ("image", "batch")

_S = 0.008  # cosine schedule offset
_VAR_MIN, _VAR_MAX = 0.0001, 0.9999  # clamp range of the schedule's variance (= a²)
_HALF_PI = math.pi * 0.5


def _min_var() -> torch.Tensor:
    """cos²(s/(1+s)·π/2): the schedule's normaliser, so that var(0) = 1 before clamping."""
    s = torch.tensor(_S, dtype=torch.float32)
    return torch.cos(s / (1 + s) * _HALF_PI) ** 2


def _cosine_log_snr(t: torch.Tensor) -> torch.Tensor:
    s = torch.tensor(_S, dtype=torch.float32)
    var = torch.cos((s + t) / (1 + s) * _HALF_PI).clamp(0, 1) ** 2 / _min_var()
    var = var.clamp(_VAR_MIN, _VAR_MAX)
    return (var / (1 - var)).log()


# logSNR limits of the unshifted schedule, [logSNR(1), logSNR(0)] ≈ [−9.21, +9.21]; shifted values
# are clamped back into them.
_LOG_SNR_MIN, _LOG_SNR_MAX = _cosine_log_snr(torch.tensor([1.0, 0.0])).tolist()


def _as_time(t: float | torch.Tensor) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.to(torch.float32)
    return torch.tensor(float(t), dtype=torch.float32)


def log_snr(t: float | torch.Tensor, shift: float = 1.0) -> torch.Tensor:
    """Cosine-schedule logSNR at time ``t`` (t = 1 is pure noise), float32, same shape as ``t``.

    ``var = clamp(cos²((s+t)/(1+s)·π/2) / cos²(s/(1+s)·π/2), 1e-4, 0.9999)``,
    ``logSNR = log(var/(1−var))``; a shift subtracts 2·ln(shift) and the result is clamped to the
    shift-1 limits ≈ [−9.21, 9.21]. ``t`` is clamped to [0, 1] like the reference.
    """
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    t = _as_time(t).clamp(0, 1)
    value = _cosine_log_snr(t)
    if shift != 1:
        value = value + 2 * math.log(1 / shift)
    return value.clamp(_LOG_SNR_MIN, _LOG_SNR_MAX)


def alpha_sigma(log_snr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VP scaler: ``a = sqrt(sigmoid(logSNR))``, ``b = sqrt(sigmoid(−logSNR))`` (a² + b² = 1)."""
    return log_snr.sigmoid().sqrt(), (-log_snr).sigmoid().sqrt()


def noise_cond(log_snr: torch.Tensor) -> torch.Tensor:
    """CosineTNoiseCond: the ``r`` the networks receive, i.e. the time at which the *unshifted*
    cosine schedule reaches this logSNR: ``r = acos(sqrt(sigmoid(L)·cos²(s/(1+s)·π/2)))/(π/2)·(1+s) − s``.
    With shift > 1 this is larger than the sampling time t."""
    var = log_snr.to(torch.float32).sigmoid().clamp(0, 1)
    return ((var * _min_var()) ** 0.5).acos() / _HALF_PI * (1 + _S) - _S


def _per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Make a scalar or (B,) tensor broadcast against a (B, …) tensor."""
    value = value.to(like.device)
    if value.dim() == 1:
        return value.view(-1, *[1] * (like.dim() - 1))
    return value


def diffuse(x0: torch.Tensor, t: float | torch.Tensor, noise: torch.Tensor, shift: float = 1.0) -> torch.Tensor:
    """Noise a clean latent to time ``t``: ``x_t = a·x0 + b·noise`` (float32). ``t`` may be a number
    or a (B,) tensor of per-image times."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, x0 has {tuple(x0.shape)}")
    x0 = x0.to(torch.float32)
    a, b = alpha_sigma(log_snr(t, shift))
    a, b = _per_sample(a, x0), _per_sample(b, x0)
    return x0 * a + noise.to(x0.device, torch.float32) * b


class NoiseSource(Protocol):
    """Anything with ``step(i)``: the fresh noise z (same shape as x) for DDPM step ``i``."""

    def step(self, i: int) -> torch.Tensor: ...


class SeededNoise:
    """Per-image seeded noise: one CPU :class:`torch.Generator` per image, seeded with that image's
    seed, so results depend neither on the device nor on the other images of the batch.

    Each generator is consumed in a fixed order: first the starting noise (:meth:`initial`), then
    one draw of ``shape`` per DDPM step (:meth:`step`, called with i = 0, 1, 2 … in order). Image k
    of a batch therefore receives exactly the numbers a batch-1 run with its seed receives.
    """

    def __init__(
        self,
        seeds: int | Sequence[int],
        shape: Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        seeds = [seeds] if isinstance(seeds, int) else list(seeds)
        if not seeds:
            raise ValueError("seeds must name at least one seed")
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(f"seeds must be integers, got {seed!r}")
        self.seeds = seeds
        self.shape = tuple(int(n) for n in shape)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self._generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        self._initial: torch.Tensor | None = None
        self._next_step = 0
        self._prefetched: torch.Tensor | None = None  # (steps, B, *shape) on the device, from prefetch()
        self._prefetch_start = 0  # the step the first prefetched draw belongs to

    @property
    def batch_size(self) -> int:
        return len(self.seeds)

    def _draw(self) -> torch.Tensor:
        per_image = [torch.randn(self.shape, generator=g, dtype=torch.float32) for g in self._generators]
        return torch.stack(per_image)

    def initial(self) -> torch.Tensor:
        """The starting noise (B, *shape) on ``device``/``dtype``; drawn once, then cached."""
        if self._initial is None:
            self._initial = self._draw()
        return self._initial.to(self.device, self.dtype)

    def prefetch(self, steps: int) -> None:
        """Draw the noise of the next ``steps`` steps now and move it to the device in one copy, so that the
        sampling loop makes no host-to-device transfer. The same numbers, in the same order, as drawing them
        step by step."""
        if self._initial is None:
            self._initial = self._draw()
        if self._prefetched is not None or steps < 1:
            raise ValueError("prefetch once, before the first step, for at least one step")
        draws = torch.stack([self._draw() for _ in range(steps)])
        self._prefetched = draws.to(self.device, self.dtype)
        self._prefetch_start = self._next_step

    def step(self, i: int) -> torch.Tensor:
        """The fresh noise z (B, *shape) for sampling step ``i``. Steps must be requested in order
        (0, 1, 2 …); the starting noise is drawn first if it has not been yet."""
        if i != self._next_step:
            raise ValueError(f"noise for step {i} requested, but the next step in order is {self._next_step}")
        if self._initial is None:
            self._initial = self._draw()
        self._next_step += 1
        if self._prefetched is not None:
            k = i - self._prefetch_start
            if k < len(self._prefetched):
                return self._prefetched[k]
            raise ValueError(f"noise for step {i} requested beyond the {len(self._prefetched)} prefetched steps")
        return self._draw().to(self.device, self.dtype)

    __call__ = step


@dataclass
class Step:
    """One finished sampling step (``index`` is 0-based, ``total`` = number of steps)."""

    index: int
    total: int
    x: torch.Tensor  # the state after this step's update (float32)
    x0: torch.Tensor  # this step's x0 prediction (float32); the last one is the sample
    eps: torch.Tensor  # the guided (and rescaled) ε̂ used for the update (float32)


Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _std(t: torch.Tensor, per_image: bool) -> torch.Tensor:
    """Unbiased std over the whole tensor, or per image as a (B, 1, …) tensor. The per-image std is
    computed image by image so that each value is bit-identical to a batch-1 computation."""
    if not per_image:
        return t.std()
    return torch.stack([image.std() for image in t]).view(-1, *[1] * (t.dim() - 1))


def _guide(eps_c: torch.Tensor, eps_u: torch.Tensor, cfg: float, rho: float, per_image: bool) -> torch.Tensor:
    # ε_u + cfg·(ε_c − ε_u) as separate elementwise ops (not torch.lerp, whose vectorised and scalar
    # paths may round differently), so every element is computed identically whatever the batch size.
    guided = eps_u + cfg * (eps_c - eps_u)
    if rho <= 0:
        return guided
    std_c, std_g = _std(eps_c, per_image), _std(guided, per_image)
    return rho * (guided * std_c / (std_g + 1e-9)) + guided * (1 - rho)


def _validate(steps, cfg, t_start, sampler, rescale, cfg_rho, shift) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if cfg is not None and (isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg)):
        raise ValueError(f"cfg must be a finite number or None, got {cfg!r}")
    if not (isinstance(t_start, (int, float)) and 0 < t_start <= 1):
        raise ValueError(f"t_start must be in (0, 1], got {t_start!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if rescale not in RESCALE_SCOPES:
        raise ValueError(f"rescale must be one of {RESCALE_SCOPES}, got {rescale!r}")
    if not (isinstance(cfg_rho, (int, float)) and 0 <= cfg_rho <= 1):
        raise ValueError(f"cfg_rho must be in [0, 1], got {cfg_rho!r}")
    if not (isinstance(shift, (int, float)) and shift > 0):
        raise ValueError(f"shift must be > 0, got {shift!r}")


def sample(
    predict: Predict,
    x_init: torch.Tensor,
    *,
    steps: int,
    cfg: float | None,
    shift: float,
    t_start: float = 1.0,
    sampler: str = "ddpm",
    cfg_rho: float = 0.7,
    rescale: str = "image",
    noise: NoiseSource | Callable[[int], torch.Tensor] | None = None,
    blend: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[Step]:
    """Run GDF sampling from ``x_init`` at time ``t_start`` down to 0, yielding a :class:`Step`
    after every step; keep the last step's ``x0``. Stop iterating to cancel: ``predict`` is called
    once per step, before that step's yield, and never again once the caller stops.

    ``predict(x, r)`` is the caller's network call and returns ε. With ``cfg`` set it receives the
    doubled batch ``cat([x, x])`` and ``r`` repeated (2B,) and must return (2B, …), conditional half
    first; with ``cfg=None`` it receives (x, r) and its output is used unguided.

    Guidance ``g = ε_u + cfg·(ε_c − ε_u)`` is rescaled to ``ρ·g·std(ε_c)/(std(g)+1e-9) + (1−ρ)·g``
    (unbiased std; ``cfg_rho=0`` disables it) with the std taken over the whole conditional
    half-batch (``rescale="batch"``, the reference) or per image (``rescale="image"``, identical at
    batch 1 and independent of batch mates). ``x0 = (x − b·ε̂)/a``; DDPM:
    ``σ = sqrt(b'²/b²)·sqrt(1 − a²/a'²)``, ``x ← a'·x0 + sqrt(b'² − σ²)·ε̂ + σ·z``; DDIM uses σ = 0
    and draws no noise. Time grid ``linspace(t_start, 0, steps+1)``.

    ``noise`` supplies z for DDPM step i: a :class:`SeededNoise` (or anything with ``step(i)``), a
    callable ``noise(i)``, or ``None`` for torch's global generator (not reproducible across
    devices). Math is float32 whatever ``x_init``'s or the predictions' dtype. Arguments are checked
    when ``sample`` is called, before the first step.

    ``blend(i, x)``, when given, replaces the state after step ``i`` (at time ``times[i+1]``) before it is
    yielded and used by the next step: latent-blending inpainting puts the re-noised source back there.
    """
    _validate(steps, cfg, t_start, sampler, rescale, cfg_rho, shift)
    if noise is None:
        draw = None
    elif hasattr(noise, "step"):
        draw = noise.step
    elif callable(noise):
        draw = noise
    else:
        raise ValueError(f"noise must be a noise source with step(i), a callable or None, got {type(noise).__name__}")
    return _sample(predict, x_init, steps, cfg, shift, float(t_start), sampler, float(cfg_rho), rescale, draw, blend)


def _sample(predict, x_init, steps, cfg, shift, t_start, sampler, cfg_rho, rescale, draw, blend=None) -> Iterator[Step]:
    x = x_init.to(torch.float32, copy=True)
    batch, device = x.shape[0], x.device
    times = torch.linspace(t_start, 0, steps + 1)
    log_snrs = log_snr(times, shift).to(device)
    a_all, b_all = alpha_sigma(log_snrs)
    conds = noise_cond(log_snrs)
    per_image = rescale == "image"

    for i in range(steps):
        r = conds[i].expand(batch)
        if cfg is not None:
            out = predict(torch.cat([x, x]), r.repeat(2)).to(torch.float32)
            if out.shape != (2 * batch, *x.shape[1:]):
                raise ValueError(f"predict returned shape {tuple(out.shape)}, expected {(2 * batch, *x.shape[1:])}")
            eps_c, eps_u = out.chunk(2)
            eps = _guide(eps_c, eps_u, cfg, cfg_rho, per_image)
        else:
            eps = predict(x, r).to(torch.float32)
            if eps.shape != x.shape:
                raise ValueError(f"predict returned shape {tuple(eps.shape)}, expected {tuple(x.shape)}")

        a, b, a_next, b_next = a_all[i], b_all[i], a_all[i + 1], b_all[i + 1]
        x0 = (x - b * eps) / a
        if sampler == "ddpm":
            sigma = (b_next**2 / b**2).sqrt() * (1 - a**2 / a_next**2).sqrt()
            z = torch.randn_like(x) if draw is None else draw(i)
            if z.shape != x.shape:
                raise ValueError(f"noise for step {i} has shape {tuple(z.shape)}, expected {tuple(x.shape)}")
            x = a_next * x0 + (b_next**2 - sigma**2).clamp(min=0).sqrt() * eps + sigma * z.to(device, torch.float32)
        else:
            x = a_next * x0 + b_next * eps
        if blend is not None:
            x = blend(i, x).to(torch.float32)
        yield Step(index=i, total=steps, x=x, x0=x0, eps=eps)


class Img2ImgStart(NamedTuple):
    x_init: torch.Tensor  # the noised latent to start from (float32)
    t_start: float  # = strength
    steps: int  # = max(1, int(steps · strength))


def img2img_start(x0: torch.Tensor, strength: float, steps: int, noise: torch.Tensor) -> Img2ImgStart:
    """Image-to-image start (spec §10): ``t_start = strength``, ``steps = int(steps·strength)`` (at
    least 1), ``x_init = diffuse(x0, t_start, noise, shift=1)``. The noising always uses shift 1,
    even though sampling then runs with the caller's shift (2 for Stage C), as the reference does.
    ``steps`` is the full-strength step count (e.g. 20 → 16 at strength 0.8)."""
    if not (isinstance(strength, (int, float)) and 0 < strength <= 1):
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    t_start = float(strength)
    return Img2ImgStart(diffuse(x0, t_start, noise, shift=1.0), t_start, max(1, int(steps * strength)))
