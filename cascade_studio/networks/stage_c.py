"""Stage C, the text-conditional prior in EfficientNet latent space (reference ``modules/stage_c.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import LayerNorm2d, reuse
from .unet import CascadeUNet


class UpDownBlock2d(nn.Module):
    """1×1 conv plus an optional ×2 bilinear resample; disabled in every released Stage C."""

    def __init__(self, c_in: int, c_out: int, mode: str, enabled: bool = True):
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"mode must be 'up' or 'down', not {mode!r}")
        interpolation = (
            nn.Upsample(scale_factor=2 if mode == "up" else 0.5, mode="bilinear", align_corners=True)
            if enabled
            else nn.Identity()
        )
        mapping = nn.Conv2d(c_in, c_out, kernel_size=1)
        self.blocks = nn.ModuleList([interpolation, mapping] if mode == "up" else [mapping, interpolation])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class StageC(CascadeUNet):
    def __init__(
        self,
        c_in: int = 16,
        c_out: int = 16,
        c_r: int = 64,
        patch_size: int = 1,
        c_cond: int = 2048,
        c_hidden: Sequence[int] = (2048, 2048),
        nhead: Sequence[int] = (32, 32),
        blocks: Sequence[Sequence[int]] = ((8, 24), (24, 8)),
        block_repeat: Sequence[Sequence[int]] = ((1, 1), (1, 1)),
        level_config: Sequence[str] = ("CTA", "CTA"),
        c_clip_text: int = 1280,
        c_clip_text_pooled: int = 1280,
        c_clip_img: int = 768,
        c_clip_seq: int = 4,
        kernel_size: int = 3,
        dropout=(0.1, 0.1),
        self_attn=True,
        t_conds: Sequence[str] = ("sca", "crp"),
        switch_level: Sequence[bool] = (False,),
    ):
        super().__init__()
        self.c_r = c_r
        self.t_conds = list(t_conds)
        self.c_clip_seq = c_clip_seq

        self.clip_txt_mapper = nn.Linear(c_clip_text, c_cond)
        self.clip_txt_pooled_mapper = nn.Linear(c_clip_text_pooled, c_cond * c_clip_seq)
        self.clip_img_mapper = nn.Linear(c_clip_img, c_cond * c_clip_seq)
        self.clip_norm = nn.LayerNorm(c_cond, elementwise_affine=False, eps=1e-6)

        self._build_io(c_in, c_out, patch_size, c_hidden[0])

        def downscaler(c_prev: int, c_next: int, i: int) -> nn.Module:
            return nn.Sequential(
                LayerNorm2d(c_prev, elementwise_affine=False, eps=1e-6),
                UpDownBlock2d(c_prev, c_next, mode="down", enabled=switch_level[i - 1]),
            )

        def upscaler(c_this: int, c_prev: int, i: int) -> nn.Module:
            return nn.Sequential(
                LayerNorm2d(c_this, elementwise_affine=False, eps=1e-6),
                UpDownBlock2d(c_this, c_prev, mode="up", enabled=switch_level[i - 1]),
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

    def gen_c_embeddings(
        self, clip_txt: torch.Tensor, clip_txt_pooled: torch.Tensor, clip_img: torch.Tensor
    ) -> torch.Tensor:
        # The reference never unsqueezes a 2-D pooled tensor (a typo there); we accept
        # (B, 1280) as well as (B, 1, 1280), which give the same tokens.
        if clip_txt_pooled.dim() == 2:
            clip_txt_pooled = clip_txt_pooled.unsqueeze(1)
        if clip_img.dim() == 2:
            clip_img = clip_img.unsqueeze(1)
        txt = self.clip_txt_mapper(clip_txt)
        pooled = self.clip_txt_pooled_mapper(clip_txt_pooled)
        pooled = pooled.view(clip_txt_pooled.size(0), clip_txt_pooled.size(1) * self.c_clip_seq, -1)
        img = self.clip_img_mapper(clip_img).view(clip_img.size(0), clip_img.size(1) * self.c_clip_seq, -1)
        return self.clip_norm(torch.cat([txt, pooled, img], dim=1))

    def forward(
        self,
        x: torch.Tensor,
        r: torch.Tensor,
        clip_text: torch.Tensor,
        clip_text_pooled: torch.Tensor,
        clip_img: torch.Tensor,
        cnet: Sequence[torch.Tensor | None] | None = None,
        **kwargs: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the noise ε. ``cnet`` is a ControlNet's feature list, one entry per ResBlock
        in execution order (``None`` entries add nothing); ``sca``/``crp`` default to zeros."""
        r_embed = self._r_embed(r, kwargs).to(x.dtype)
        conds = (clip_text, clip_text_pooled, clip_img)
        clip = reuse(self.condition_memo, "clip", conds, lambda: self.gen_c_embeddings(*conds))
        x = self.embedding(x)
        control = iter(cnet) if cnet is not None else None
        level_outputs = self._down_encode(x, r_embed, clip, control)
        x = self._up_decode(level_outputs, r_embed, clip, control)
        return self.clf(x)
