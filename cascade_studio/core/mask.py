"""Mask maths for the canvas, inpainting and outpainting: plain numpy (and Pillow for the blur and polygons).

A mask is an (H, W) uint8 array: 255 = masked (repaint), 0 = keep; values between are partial (soft edges).
Rectangles are (x, y, width, height) in pixels. Every function returns a new array and leaves its input alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .geometry import SIZE_STEP

Rect = tuple[int, int, int, int]  # x, y, width, height


def invert(mask: np.ndarray) -> np.ndarray:
    return 255 - mask


def bounding_box(mask: np.ndarray) -> Rect | None:
    """The smallest rectangle holding every non-zero pixel, or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def changed_box(before: np.ndarray, after: np.ndarray) -> Rect | None:
    """The smallest rectangle holding every pixel that differs (same-shaped arrays), or None."""
    return bounding_box((before != after).reshape(before.shape[0], -1))


def clip_rect(rect: Rect, width: int, height: int) -> Rect | None:
    x, y, w, h = rect
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def union_rect(a: Rect | None, b: Rect | None) -> Rect | None:
    if a is None:
        return b
    if b is None:
        return a
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return x0, y0, x1 - x0, y1 - y0


def _expand(rect: Rect, by: int, width: int, height: int) -> Rect:
    x, y, w, h = rect
    return clip_rect((x - by, y - by, w + 2 * by, h + 2 * by), width, height)  # type: ignore[return-value]


# --- grow, shrink, feather -------------------------------------------------------------------------------


def _shifted_max(out: np.ndarray, src: np.ndarray, dy: int, dx: int) -> None:
    """out = max(out, src shifted by (dy, dx)), pixels shifted in from outside counting as 0."""
    h, w = src.shape
    if abs(dy) >= h or abs(dx) >= w:
        return
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    np.maximum(out[yd, xd], src[ys, xs], out=out[yd, xd])


def _dilate_disc(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation by a flat disc of `radius` px (exact disc: offsets with dx² + dy² <= r²).

    Columns first: `vertical` is the max over dy in [-h, h]; h only grows as |dx| falls from r to 0, so each
    step widens it by the rows it lacks. About 4r whole-array maxima in all.
    """
    vertical = mask.copy()
    out = mask.copy()
    h = 0
    for dx in range(radius, -1, -1):
        reach = math.isqrt(radius * radius - dx * dx)
        while h < reach:
            h += 1
            grown = vertical.copy()
            _shifted_max(grown, mask, h, 0)
            _shifted_max(grown, mask, -h, 0)
            vertical = grown
        _shifted_max(out, vertical, 0, dx)
        if dx:
            _shifted_max(out, vertical, 0, -dx)
    return out


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow (pixels > 0) or shrink (pixels < 0) the mask by a disc of |pixels| px.

    Shrinking treats everything outside the image as masked, so a mask touching the image border stays there
    (an outpainting border is not eaten from the outside).
    """
    pixels = int(pixels)
    if pixels == 0:
        return mask.copy()
    if pixels < 0:
        return shrink(mask, -pixels)
    box = bounding_box(mask)
    out = mask.copy()
    if box is None:
        return out
    hgt, wid = mask.shape
    x, y, w, h = _expand(box, pixels, wid, hgt)
    out[y : y + h, x : x + w] = _dilate_disc(mask[y : y + h, x : x + w], pixels)
    return out


def shrink(mask: np.ndarray, pixels: int) -> np.ndarray:
    pixels = int(pixels)
    if pixels <= 0:
        return grow(mask, -pixels)
    box = bounding_box(mask)
    out = mask.copy()
    if box is None:
        return out
    hgt, wid = mask.shape
    # Erosion = inverted dilation of the inverse. Pixels in the margin are 0 and stay 0; the pad (0 in the
    # inverse = masked) only matters where the crop ends at the image border.
    x, y, w, h = _expand(box, pixels, wid, hgt)
    crop = mask[y : y + h, x : x + w]
    out[y : y + h, x : x + w] = 255 - _dilate_disc(255 - crop, pixels)
    return out


def feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """Soften the mask edge with a Gaussian blur whose transition spans about ±radius px (sigma = radius / 2)."""
    if radius <= 0:
        return mask.copy()
    box = bounding_box(mask)
    out = mask.copy()
    if box is None:
        return out
    sigma = radius / 2
    hgt, wid = mask.shape
    x, y, w, h = _expand(box, math.ceil(3 * sigma) + 2, wid, hgt)
    crop = Image.fromarray(np.ascontiguousarray(mask[y : y + h, x : x + w]), mode="L")
    out[y : y + h, x : x + w] = np.asarray(crop.filter(ImageFilter.GaussianBlur(sigma)))
    return out


# --- shapes --------------------------------------------------------------------------------------------


def fill_polygon(mask: np.ndarray, points: Sequence[tuple[float, float]], value: int = 255) -> tuple[np.ndarray, Rect]:
    """The mask with the polygon filled with `value`, and the rectangle that may have changed (None-safe:
    a polygon entirely outside gives a zero-size rectangle and an unchanged copy)."""
    out = mask.copy()
    hgt, wid = mask.shape
    if len(points) < 3:
        return out, (0, 0, 0, 0)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    box = clip_rect(
        (
            math.floor(min(xs)),
            math.floor(min(ys)),
            math.ceil(max(xs)) - math.floor(min(xs)) + 1,
            math.ceil(max(ys)) - math.floor(min(ys)) + 1,
        ),
        wid,
        hgt,
    )
    if box is None:
        return out, (0, 0, 0, 0)
    x, y, w, h = box
    stencil = Image.new("L", (w, h), 0)
    ImageDraw.Draw(stencil).polygon([(px - x, py - y) for px, py in points], fill=255, outline=255)
    inside = np.asarray(stencil) > 0
    out[y : y + h, x : x + w][inside] = value
    return out, box


def fill_rect(mask: np.ndarray, rect: Rect, value: int = 255) -> tuple[np.ndarray, Rect]:
    out = mask.copy()
    box = clip_rect(rect, mask.shape[1], mask.shape[0])
    if box is None:
        return out, (0, 0, 0, 0)
    x, y, w, h = box
    out[y : y + h, x : x + w] = value
    return out, box


# --- brush dabs ----------------------------------------------------------------------------------------


def brush_dab(diameter: float, hardness: float) -> np.ndarray:
    """A round brush footprint as float32 in [0, 1], odd-sized and centred on its middle pixel.

    Hardness 1: 1 inside the radius, with a one-pixel anti-aliased rim. Hardness h < 1: 1 out to h·radius,
    then a smoothstep fall to 0 at the radius.
    """
    radius = max(0.5, float(diameter) / 2)
    hardness = min(1.0, max(0.0, float(hardness)))
    half = math.ceil(radius)
    coords = np.arange(-half, half + 1, dtype=np.float32)
    dist = np.sqrt(coords[None, :] ** 2 + coords[:, None] ** 2)
    coverage = np.clip(radius + 0.5 - dist, 0.0, 1.0)  # anti-aliased disc
    inner = hardness * radius
    span = radius - inner
    if span > 1e-6:
        t = np.clip((dist - inner) / span, 0.0, 1.0)
        coverage *= 1.0 - t * t * (3.0 - 2.0 * t)
    dab = coverage.astype(np.float32)
    dab[half, half] = 1.0  # the centre pixel is always fully covered, however small or soft the brush
    return dab


def stamp(mask: np.ndarray, dab: np.ndarray, cx: int, cy: int, amount: float, erase: bool = False) -> Rect | None:
    """Stamp a dab (from brush_dab) centred on pixel (cx, cy), in place.

    Painting raises each pixel to at least dab·amount·255; erasing lowers it to at most 255 − that. Stamping is
    idempotent, so dab spacing and overlaps within a stroke never darken a line. Returns the touched rectangle.
    """
    half = dab.shape[0] // 2
    hgt, wid = mask.shape
    box = clip_rect((cx - half, cy - half, dab.shape[1], dab.shape[0]), wid, hgt)
    if box is None:
        return None
    x, y, w, h = box
    sx, sy = x - (cx - half), y - (cy - half)
    values = dab[sy : sy + h, sx : sx + w] * (255.0 * amount)
    values = (values + 0.5).astype(np.uint8)
    region = mask[y : y + h, x : x + w]
    if erase:
        np.minimum(region, 255 - values, out=region)
    else:
        np.maximum(region, values, out=region)
    return box


# --- outpainting and compositing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Extension:
    """How far each side grows (after snapping) and the resulting canvas size."""

    left: int
    top: int
    right: int
    bottom: int
    width: int
    height: int


def outpaint_geometry(
    width: int, height: int, left: int, top: int, right: int, bottom: int, grid: int = SIZE_STEP
) -> Extension:
    """Extend a width×height canvas per side; an axis that grows is rounded up to a multiple of `grid`.

    The extra pixels go to the growing sides in proportion (the remainder to the right/bottom), so every side
    gets at least what was asked for. An axis that does not grow keeps its size.
    """
    if min(left, top, right, bottom) < 0:
        raise ValueError("outpaint extensions must be >= 0")

    def axis(size: int, a: int, b: int) -> tuple[int, int]:
        if a + b == 0 or grid <= 1:
            return a, b
        total = size + a + b
        extra = -total % grid
        add_a = extra * a // (a + b)
        return a + add_a, b + extra - add_a

    left, right = axis(width, int(left), int(right))
    top, bottom = axis(height, int(top), int(bottom))
    return Extension(left, top, right, bottom, width + left + right, height + top + bottom)


def extend(image: np.ndarray, mask: np.ndarray | None, ext: Extension) -> tuple[np.ndarray, np.ndarray]:
    """The image padded per `ext` (new area: the nearest edge pixels, stretched) and its mask: the old mask in
    the old area (or 0), 255 in the new area."""
    pad = ((ext.top, ext.bottom), (ext.left, ext.right)) + ((0, 0),) * (image.ndim - 2)
    new_image = np.pad(image, pad, mode="edge")
    old = mask if mask is not None else np.zeros(image.shape[:2], dtype=np.uint8)
    new_mask = np.pad(old, pad[:2], mode="constant", constant_values=255)
    return new_image, new_mask


def transition_alpha(mask: np.ndarray, band: int) -> np.ndarray:
    """Blend weights in [0, 1] (float32): the mask's own value inside, a smooth ramp over `band` px outside
    the mask's non-zero pixels, and exactly 0 everywhere beyond that band."""
    alpha = mask.astype(np.float32) / 255.0
    if band <= 0:
        return alpha
    binary = np.where(mask > 0, np.uint8(255), np.uint8(0))
    outer = grow(binary, band) > 0
    half = max(1, band // 2)
    # Blur the half-grown mask with sigma = band/6: ~1 at the mask edge (3 sigma inside), ~0 at band's end.
    ramp = feather(grow(binary, half), band / 3).astype(np.float32) / 255.0
    np.maximum(alpha, ramp, out=alpha)
    alpha[~outer] = 0.0
    return alpha


def composite(source: np.ndarray, result: np.ndarray, mask: np.ndarray, band: int = 16) -> np.ndarray:
    """`result` over `source` where the mask says so, with a feathered transition band of `band` px around it.

    Every pixel outside the mask's non-zero area grown by `band` is byte-identical to `source`.
    """
    if source.shape != result.shape:
        raise ValueError(f"source {source.shape} and result {result.shape} differ in shape")
    if mask.shape != source.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {source.shape[:2]}")
    alpha = transition_alpha(mask, band)
    out = source.copy()
    box = bounding_box((alpha > 0).view(np.uint8))
    if box is None:
        return out
    x, y, w, h = box
    a = alpha[y : y + h, x : x + w]
    if source.ndim == 3:
        a = a[:, :, None]
    src = source[y : y + h, x : x + w].astype(np.float32)
    res = result[y : y + h, x : x + w].astype(np.float32)
    blended = np.clip(src + (res - src) * a + 0.5, 0, 255).astype(np.uint8)
    keep = np.broadcast_to(a == 0, blended.shape)
    out[y : y + h, x : x + w] = np.where(keep, source[y : y + h, x : x + w], blended)
    return out


def crop_context(mask: np.ndarray, padding: int, grid: int = 1) -> Rect | None:
    """The masked area's bounding box plus `padding` px each side, clipped to the image (for "masked area +
    padding" inpainting context); None for an empty mask. With grid > 1 the box is widened (if the image
    allows) to a multiple of `grid` in each direction."""
    box = bounding_box(mask)
    if box is None:
        return None
    hgt, wid = mask.shape
    x, y, w, h = _expand(box, padding, wid, hgt)
    if grid > 1:
        x, w = _widen(x, w, wid, grid)
        y, h = _widen(y, h, hgt, grid)
    return x, y, w, h


def _widen(start: int, size: int, limit: int, grid: int) -> tuple[int, int]:
    target = min(limit, -(-size // grid) * grid)
    extra = target - size
    start = max(0, min(start - extra // 2, limit - target))
    return start, target
