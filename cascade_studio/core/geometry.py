"""Image sizes and the latent grids they map to (see spec/stable-cascade.md section 10).

Pixel sizes are given as (width, height), like PIL; latent sizes are returned as (height, width), like the
tensor shapes `(B, C, H, W)` they describe.
"""

from __future__ import annotations

import math
import operator

SIZE_STEP = 128  # 128 px = 3 Stage C cells = 32 Stage B cells: exact for both latents
MIN_SIZE = 256
MAX_SIZE = 4096
STAGE_C_COMPRESSION = 42.67  # the reference's calculate_latent_sizes divides by exactly this
STAGE_B_COMPRESSION = 4
EFFNET_COMPRESSION = 32


def snap_size(width: int, height: int) -> tuple[int, int, str | None]:
    """The nearest valid size: each side rounded to a multiple of 128 px within 256..4096.

    Returns (width, height, note); note is None when the size was already valid, else a sentence for the
    user saying what was changed.
    """
    width, height = operator.index(width), operator.index(height)
    w, h = _snap(width), _snap(height)
    if (w, h) == (width, height):
        return w, h, None
    if width % SIZE_STEP or height % SIZE_STEP:
        reason = f"is not a multiple of {SIZE_STEP} px"
    else:
        reason = f"is outside {MIN_SIZE}–{MAX_SIZE} px"
    return w, h, f"{width}×{height} {reason}; using {w}×{h}"


def _snap(value: int) -> int:
    # Round half up: floor(v/128 + 0.5), in integers so there is no float rounding at all.
    snapped = (value + SIZE_STEP // 2) // SIZE_STEP * SIZE_STEP
    return min(MAX_SIZE, max(MIN_SIZE, snapped))


def stage_c_latent_size(width: int, height: int) -> tuple[int, int]:
    """(height, width) of the Stage C latent: 1024 px -> 24, 1536 px -> 36."""
    return math.ceil(height / STAGE_C_COMPRESSION), math.ceil(width / STAGE_C_COMPRESSION)


def stage_b_latent_size(width: int, height: int) -> tuple[int, int]:
    """(height, width) of the Stage B latent: 1024 px -> 256."""
    return math.ceil(height / STAGE_B_COMPRESSION), math.ceil(width / STAGE_B_COMPRESSION)


def effnet_input_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) in pixels to resize an img2img source to, so its EfficientNet latent (pixels / 32)
    has exactly the Stage C latent size of a (width, height) output: 1024×1024 -> 768×768."""
    hc, wc = stage_c_latent_size(width, height)
    return wc * EFFNET_COMPRESSION, hc * EFFNET_COMPRESSION
