"""Stage C ControlNets (reference ``modules/controlnet.py``, class ``ControlNet``).

The network maps a control signal (B×c_in×H×W) to a list of feature maps, one per Stage C
ResBlock in execution order up to ``max(proj_blocks)``, ``None`` everywhere except at
``proj_blocks``. Bottlenecks:

* ``'effnet'`` (canny, inpainting): EfficientNetV2-S features, 1280 channels at stride 32; with
  ``c_in != 3`` the stem conv is an *unpadded* ``Conv2d(c_in, 24, 3, stride=2, bias=False)``.
* ``'large'`` (super-resolution): 1×1 conv to 16384 → LeakyReLU(0.2) → 1×1 conv to 1024 →
  8 × :class:`CNetResBlock` → 1×1 conv to 1280 (stride 1).
* ``'simple'`` (unreleased): 3×3 conv c_in→4c_in → LeakyReLU(0.2) → 3×3 conv back to c_in.

The keyword-only arguments exist so tests can build tiny variants; their defaults are the
released values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import LayerNorm2d
from .effnet import EFFNET_V2_S_LAST_CHANNELS, EFFNET_V2_S_STAGES, EfficientNetV2Features, StageSpec

RELEASED_PROJ_BLOCKS = (0, 4, 8, 12, 51, 55, 59, 63)
BOTTLENECK_MODES = ("effnet", "large", "simple")


class CNetResBlock(nn.Module):
    """x + [LayerNorm2d → GELU → Conv3×3 → LayerNorm2d → GELU → Conv3×3](x); LN affine, eps 1e-5."""

    def __init__(self, c: int):
        super().__init__()
        self.blocks = nn.Sequential(
            LayerNorm2d(c, eps=1e-5),
            nn.GELU(),
            nn.Conv2d(c, c, kernel_size=3, padding=1),
            LayerNorm2d(c, eps=1e-5),
            nn.GELU(),
            nn.Conv2d(c, c, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.blocks(x)


class ControlNet(nn.Module):
    def __init__(
        self,
        c_in: int = 3,
        c_proj: int = 2048,
        proj_blocks: Sequence[int] | None = None,
        bottleneck_mode: str | None = None,
        *,
        backbone_stages: Sequence[StageSpec] = EFFNET_V2_S_STAGES,
        c_embd: int = EFFNET_V2_S_LAST_CHANNELS,
        large_c_wide: int = 16384,
        large_c_hidden: int = 1024,
        large_depth: int = 8,
    ):
        """``proj_blocks=None`` means :data:`RELEASED_PROJ_BLOCKS` (the reference has no usable
        default). ``c_embd`` is the bottleneck output width for 'effnet' and 'large' (1280)."""
        super().__init__()
        if bottleneck_mode is None:
            bottleneck_mode = "effnet"
        if bottleneck_mode not in BOTTLENECK_MODES:
            raise ValueError(f"unknown bottleneck mode {bottleneck_mode!r} (expected one of {BOTTLENECK_MODES})")
        proj_blocks = RELEASED_PROJ_BLOCKS if proj_blocks is None else tuple(int(i) for i in proj_blocks)
        if not proj_blocks or min(proj_blocks) < 0:
            raise ValueError(f"proj_blocks must be a non-empty list of block indices, got {proj_blocks}")
        self.c_in = c_in
        self.c_proj = c_proj
        self.proj_blocks = proj_blocks
        self.bottleneck_mode = bottleneck_mode

        if bottleneck_mode == "effnet":
            self.backbone = EfficientNetV2Features(
                backbone_stages, last_channels=c_embd, in_channels=c_in, stem_padding=c_in == 3
            )
        elif bottleneck_mode == "large":
            self.backbone = nn.Sequential(
                nn.Conv2d(c_in, large_c_wide, kernel_size=1),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(large_c_wide, large_c_hidden, kernel_size=1),
                *[CNetResBlock(large_c_hidden) for _ in range(large_depth)],
                nn.Conv2d(large_c_hidden, c_embd, kernel_size=1),
            )
        else:
            c_embd = c_in
            self.backbone = nn.Sequential(
                nn.Conv2d(c_in, c_in * 4, kernel_size=3, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(c_in * 4, c_in, kernel_size=3, padding=1),
            )
        self.c_embd = c_embd

        self.projections = nn.ModuleList()
        for _ in proj_blocks:
            projection = nn.Sequential(
                nn.Conv2d(c_embd, c_embd, kernel_size=1, bias=False),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(c_embd, c_proj, kernel_size=1, bias=False),
            )
            nn.init.zeros_(projection[-1].weight)  # zero output projection, as in the reference
            self.projections.append(projection)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        x = self.backbone(x)
        outputs: list[torch.Tensor | None] = [None] * (max(self.proj_blocks) + 1)
        for projection, idx in zip(self.projections, self.proj_blocks):
            outputs[idx] = projection(x)
        return outputs
