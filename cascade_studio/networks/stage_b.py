"""Stage B, the decoder into Stage A latent space (reference ``modules/stage_b.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, reuse
from .unet import CascadeUNet


def _mapper(c_in: int, c_hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_hidden * 4, kernel_size=1),
        nn.GELU(),
        nn.Conv2d(c_hidden * 4, c_hidden, kernel_size=1),
        LayerNorm2d(c_hidden, elementwise_affine=False, eps=1e-6),
    )


class StageB(CascadeUNet):
    def __init__(
        self,
        c_in: int = 4,
        c_out: int = 4,
        c_r: int = 64,
        patch_size: int = 2,
        c_cond: int = 1280,
        c_hidden: Sequence[int] = (320, 640, 1280, 1280),
        nhead: Sequence[int] = (-1, -1, 20, 20),
        blocks: Sequence[Sequence[int]] = ((2, 6, 28, 6), (6, 28, 6, 2)),
        block_repeat: Sequence[Sequence[int]] = ((1, 1, 1, 1), (3, 3, 2, 2)),
        level_config: Sequence[str] = ("CT", "CT", "CTA", "CTA"),
        c_clip: int = 1280,
        c_clip_seq: int = 4,
        c_effnet: int = 16,
        c_pixels: int = 3,
        kernel_size: int = 3,
        dropout=(0, 0, 0.1, 0.1),
        self_attn=True,
        t_conds: Sequence[str] = ("sca",),
    ):
        super().__init__()
        self.c_r = c_r
        self.t_conds = list(t_conds)
        self.c_clip_seq = c_clip_seq
        self.c_pixels = c_pixels

        self.effnet_mapper = _mapper(c_effnet, c_hidden[0])
        self.pixels_mapper = _mapper(c_pixels, c_hidden[0])
        self.clip_mapper = nn.Linear(c_clip, c_cond * c_clip_seq)
        self.clip_norm = nn.LayerNorm(c_cond, elementwise_affine=False, eps=1e-6)

        self._build_io(c_in, c_out, patch_size, c_hidden[0])

        def downscaler(c_prev: int, c_next: int, i: int) -> nn.Module:
            return nn.Sequential(
                LayerNorm2d(c_prev, elementwise_affine=False, eps=1e-6),
                nn.Conv2d(c_prev, c_next, kernel_size=2, stride=2),
            )

        def upscaler(c_this: int, c_prev: int, i: int) -> nn.Module:
            return nn.Sequential(
                LayerNorm2d(c_this, elementwise_affine=False, eps=1e-6),
                nn.ConvTranspose2d(c_this, c_prev, kernel_size=2, stride=2),
            )

        self._build_levels(
            c_hidden=c_hidden,
            nhead=nhead,
            blocks=blocks,
            block_repeat=block_repeat,
            level_config=level_config,
            c_cond=c_cond,
            kernel_size=kernel_size,
            dropout=dropout,
            self_attn=self_attn,
            downscaler=downscaler,
            upscaler=upscaler,
        )

    def gen_c_embeddings(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.dim() == 2:
            clip = clip.unsqueeze(1)
        tokens = self.clip_mapper(clip).view(clip.size(0), clip.size(1) * self.c_clip_seq, -1)
        return self.clip_norm(tokens)

    def _map_inputs(self, x: torch.Tensor, effnet: torch.Tensor, pixels: torch.Tensor | None) -> torch.Tensor:
        """The effnet and pixel mappers' sum at the size of the embedded ``x``."""
        if pixels is None:
            pixels = x.new_zeros(x.size(0), self.c_pixels, 8, 8)
        size = x.shape[-2:]
        effnet = F.interpolate(effnet.to(x.dtype), size=size, mode="bilinear", align_corners=True)
        return self.effnet_mapper(effnet) + F.interpolate(
            self.pixels_mapper(pixels), size=size, mode="bilinear", align_corners=True
        )

    def forward(
        self,
        x: torch.Tensor,
        r: torch.Tensor,
        effnet: torch.Tensor,
        clip: torch.Tensor,
        pixels: torch.Tensor | None = None,
        **kwargs: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the noise ε for Stage A latents ``x`` given the Stage C latent ``effnet``."""
        r_embed = self._r_embed(r, kwargs).to(x.dtype)
        clip = reuse(self.condition_memo, "clip", (clip,), lambda: self.gen_c_embeddings(clip))

        x = self.embedding(x)
        # The mapped Stage C latent and pixels, the same at every step of a job (at 1024² the effnet mapper's 1×1
        # convolutions over 128×128 cost about 3 % of a forward on the CPU).
        inputs = (effnet,) if pixels is None else (effnet, pixels)
        x = x + reuse(self.condition_memo, "maps", inputs, lambda: self._map_inputs(x, effnet, pixels))
        level_outputs = self._down_encode(x, r_embed, clip)
        x = self._up_decode(level_outputs, r_embed, clip)
        return self.clf(x)
