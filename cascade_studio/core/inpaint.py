"""Inpainting and outpainting geometry without torch: the effective mask, the region a masked request generates,
its generation size, and pasting the result back (the window may import this in the GUI thread).

Mask contract: an (H, W) uint8 array, 255 = repaint. Pixels of 128 and more are repainted (they form the
ControlNet's mask and the latent-blending mask); every non-zero pixel takes part in the final composite, whose
feathered transition band of ``mask_feather`` px lies outside the mask. Pixels outside mask + band stay exactly
as they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import mask as masks
from .geometry import snap_size
from .request import GenerationRequest

REPAINT_THRESHOLD = 128


class InputError(ValueError):
    """The inputs of a request do not fit together (mask size, empty mask, missing image): the user's to fix."""


# --- masks -------------------------------------------------------------------------------------------------


def load_mask(path: str | Path) -> np.ndarray:
    """A mask file as an (H, W) uint8 array, 255 = repaint. Greyscale or RGB files are read as luminance;
    a file with transparency uses its alpha channel when its colour channels are all black."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                colour = np.asarray(rgba.convert("L"))
                if not colour.any():
                    return np.asarray(rgba)[:, :, 3].copy()
                return colour.copy()
            return np.asarray(im.convert("L")).copy()
    except FileNotFoundError:
        raise InputError(f"{path}: mask file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None


def repaint_area(mask: np.ndarray) -> np.ndarray:
    """The pixels that are repainted (bool): mask values of 128 and more. Softer pixels are only blended."""
    return mask >= REPAINT_THRESHOLD


def effective_mask(mask: np.ndarray, grow: int) -> np.ndarray:
    """The mask as the engine uses it: grown (or shrunk, for negative ``grow``) by ``grow`` px. Show this as the
    overlay before Generate; the composite band (``mask_feather``) extends beyond it."""
    return masks.grow(mask, grow) if grow else mask.copy()


def fit_generation_size(width: int, height: int, area: int) -> tuple[int, int]:
    """A valid generation size (multiples of 128 px) with about ``area`` pixels and the aspect of width × height."""
    scale = math.sqrt(area / (width * height))
    w, h, _ = snap_size(max(1, round(width * scale)), max(1, round(height * scale)))
    return w, h


@dataclass(frozen=True)
class MaskJob:
    """What an inpaint/outpaint request works on, all in output pixels."""

    canvas: np.ndarray  # (H, W, 3) uint8: the source, extended for outpainting; the output has this size
    mask: np.ndarray  # (H, W) uint8: the effective mask (grown; the new area for outpainting)
    region: masks.Rect  # the part of the canvas that is generated (all of it for context "image")
    size: tuple[int, int]  # (width, height) the region is generated at

    @property
    def region_pixels(self) -> np.ndarray:
        x, y, w, h = self.region
        return self.canvas[y : y + h, x : x + w]

    @property
    def region_mask(self) -> np.ndarray:
        x, y, w, h = self.region
        return self.mask[y : y + h, x : x + w]

    def paste(self, generated: np.ndarray, band: int) -> np.ndarray:
        """The generated region ((h, w, 3) uint8 at ``size``) resized back, pasted into the canvas and composited
        through the mask with a transition band of ``band`` px: pixels outside mask + band are the canvas's."""
        x, y, w, h = self.region
        if generated.shape[:2] != (h, w):
            generated = np.asarray(Image.fromarray(generated, "RGB").resize((w, h), Image.Resampling.LANCZOS))
        full = self.canvas.copy()
        full[y : y + h, x : x + w] = generated
        return masks.composite(self.canvas, full, self.mask, band)


def prepare_mask_job(request: GenerationRequest, source: np.ndarray, mask: np.ndarray | None) -> MaskJob:
    """The canvas, effective mask, region and generation size of an inpaint/outpaint request.

    ``source`` is the (H, W, 3) uint8 source image; ``mask`` an (H, W) uint8 mask of the same size (required for
    inpaint, optional for outpaint, where the added area is always masked). The generation size has about
    ``request.width × request.height`` pixels and the region's aspect.
    """
    if mask is not None and mask.shape != source.shape[:2]:
        raise InputError(
            f"the mask is {mask.shape[1]}×{mask.shape[0]} px but the source image is "
            f"{source.shape[1]}×{source.shape[0]} px; they must be the same size"
        )
    if request.mode == "outpaint":
        ext = masks.outpaint_geometry(source.shape[1], source.shape[0], *request.outpaint)
        canvas, mask = masks.extend(source, mask, ext)
    elif request.mode == "inpaint":
        if mask is None:
            raise InputError("inpaint mode needs a mask")
        canvas = source
    else:
        raise ValueError(f"{request.mode} is not a masked mode")
    mask = effective_mask(mask, request.mask_grow)
    repaint = repaint_area(mask)
    if not repaint.any():
        raise InputError("the mask is empty: paint the area to repaint (mask values of 128 and more)")
    height, width = mask.shape
    if request.context == "mask":
        region = masks.crop_context(repaint.astype(np.uint8) * 255, request.context_padding, grid=128)
    else:
        region = (0, 0, width, height)
    size = fit_generation_size(region[2], region[3], request.width * request.height)
    return MaskJob(np.ascontiguousarray(canvas), mask, region, size)
