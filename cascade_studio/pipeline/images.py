"""Converting between image files, PIL images, arrays and [0, 1] tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


def load_image(path: str | Path) -> torch.Tensor:
    """An image file as a (3, H, W) float32 tensor in [0, 1] (EXIF rotation applied)."""
    try:
        with Image.open(path) as im:
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float().div(255)


def to_pil(pixels: np.ndarray) -> Image.Image:
    """(H, W, 3) uint8 → PIL image."""
    return Image.fromarray(pixels, mode="RGB")
