"""Inputs of the control modes (spec §11): canny edges, the inpainting and super-resolution ControlNet
inputs, masks on the latent grid (the region a masked job generates and the composite back are in
:mod:`cascade_studio.core.inpaint`).

The control signals follow the reference's ``controlnet_filters``:

* Canny (``CannyFilter(resize=224)``): bilinear resize to 224 × 224, ``(x·255).astype(uint8)`` (truncation,
  RGB), ``cv2.Canny(img, 100, 200)`` on the 3-channel image, /255, bilinear resize back.
* Inpainting (``InpaintFilter`` with a user mask): ``cat([where(mask, 1, image), mask])``, on the image at the
  effnet input size (the notebooks' 768 px for 1024 px).
* Super-resolution: the EfficientNet latent of the low-resolution image, nearest-upsampled ×2; the output
  is twice the input size.

Which ControlNet fits which Stage C is decided from the files' headers (:func:`controlnet_misfit`): the
features are added in front of ResBlocks, so their width must equal the Stage C width, and the projection
indices must exist. The released ControlNets (width 2048) fit only the 3.6B Stage C.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CANNY_RESIZE = 224
CANNY_THRESHOLDS = (100, 200)
SR_SCALE = 2

#: ModelSet role -> (weights file, ControlNet input channels, what it is called in messages)
CONTROLNET_ROLES = {
    "controlnet_inpainting": ("controlnet/inpainting.safetensors", 4, "inpainting ControlNet"),
    "controlnet_canny": ("controlnet/canny.safetensors", 1, "canny ControlNet"),
    "controlnet_super_resolution": ("controlnet/super_resolution.safetensors", 16, "super-resolution ControlNet"),
}
#: request mode -> the ControlNet role it uses (inpaint/outpaint only with method "controlnet")
MODE_CONTROLNET = {
    "inpaint": "controlnet_inpainting",
    "outpaint": "controlnet_inpainting",
    "canny": "controlnet_canny",
    "upscale": "controlnet_super_resolution",
}


# --- canny -------------------------------------------------------------------------------------------------


def canny_edges(images: torch.Tensor, resize: int | None = CANNY_RESIZE) -> torch.Tensor:
    """The reference ``CannyFilter``: (B, 3, H, W) in [0, 1] → (B, 1, H, W) edge maps in [0, 1] (float32)."""
    import cv2

    images = images.detach().to("cpu", torch.float32)
    size = images.shape[-2:]
    x = F.interpolate(images, size=(resize, resize), mode="bilinear") if resize is not None else images
    low, high = CANNY_THRESHOLDS
    edges = [
        torch.from_numpy(cv2.Canny(x[i].mul(255).permute(1, 2, 0).numpy().astype(np.uint8), low, high))
        .float()
        .div(255)
        .unsqueeze(0)
        for i in range(len(x))
    ]
    out = torch.stack(edges)
    if resize is not None:
        out = F.interpolate(out, size=size, mode="bilinear")
    return out


def resize_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(B, C, H, W) float → (B, C, height, width), bilinear with antialiasing (the notebooks' ``resize_image``)."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    return F.interpolate(image, size=(height, width), mode="bilinear", antialias=True)


# --- masks on the latent grid and the inpainting ControlNet input ----------------------------------------------


def latent_mask(repaint: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) float {0, 1} → (B, 1, h, w): 1 on every latent cell that any repainted pixel touches."""
    return (F.interpolate(repaint.float(), size=size, mode="area") > 0).float()


def inpaint_control(image: torch.Tensor, repaint: torch.Tensor) -> torch.Tensor:
    """The inpainting ControlNet's input: the image with the repainted area set to 1 (white) plus the mask as a
    4th channel. ``image`` (B, 3, H, W) in [0, 1], ``repaint`` (B, 1, H, W) in {0, 1}."""
    hole = repaint.to(image.dtype)
    return torch.cat([torch.where(hole > 0, torch.ones_like(image), image), hole], dim=1)


# --- which ControlNet fits which Stage C ---------------------------------------------------------------------

_RESBLOCK_KEY = re.compile(r"^(?:down|up)_blocks\.\d+\.\d+\.depthwise\.weight$")


def stage_c_resblocks(stage_c_shapes: dict[str, tuple[int, ...]]) -> list[int]:
    """The widths of a Stage C's ResBlocks (one entry per ResBlock; Stage C repeats no block)."""
    return [shape[0] for key, shape in stage_c_shapes.items() if _RESBLOCK_KEY.match(key)]


def controlnet_misfit(stage_c_path: Path, controlnet_path: Path) -> str | None:
    """Why the ControlNet file cannot drive this Stage C file, or None when it fits."""
    from ..networks.controlnet import RELEASED_PROJ_BLOCKS
    from .checkpoints import identify, read_header

    widths = stage_c_resblocks(dict(read_header(stage_c_path).shapes))
    header, identity = identify(controlnet_path)
    c_proj = header.shapes["projections.0.2.weight"][0]
    proj_blocks = identity.kwargs.get("proj_blocks") or RELEASED_PROJ_BLOCKS
    if any(w != c_proj for w in widths):
        return f"its features are {c_proj} channels wide, the Stage C's blocks {widths[0]}"
    if max(proj_blocks) >= len(widths):
        return f"it feeds ResBlock {max(proj_blocks)}, the Stage C has {len(widths)}"
    return None
