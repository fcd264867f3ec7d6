"""The U-Net body that Stage B and Stage C share (level blocks, repeat mappers, skips)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .common import AttnBlock, LayerNorm2d, ResBlock, TimestepBlock, make_block, r_embedding


def _per_level(value, levels: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


class CascadeUNet(nn.Module):
    """Down path, up path and output head of the reference Stage B/C networks.

    Subclasses create ``embedding`` and the conditioning mappers, then call :meth:`_build_levels`
    with factories for the resampling modules between levels.
    """

    c_r: int
    t_conds: list[str]
    #: While :meth:`reusing_condition` is active: what the condition tensors gave, reused while they are the same.
    condition_memo: dict | None = None

    @contextmanager
    def reusing_condition(self) -> Iterator[None]:
        """Within this, a forward pass given the very same condition tensors as the one before reuses their
        embedding and every attention block's keys and values of the condition tokens instead of recomputing
        them: the sampler passes one job's condition unchanged at every step. The same numbers either way; on
        the CPU it saves the condition tokens' projections, which at 1024² are about 8 % of Stage C's matrix
        products (25 % at 512², where there are fewer image tokens). A no-op for a network on CUDA, whose attention
        joins image and condition tokens before projecting them (the GPU path measured without the reuse)."""
        if any(p.is_cuda for p in self.parameters()):
            yield
            return
        holders = [self, *(m for m in self.modules() if isinstance(m, AttnBlock))]
        for holder in holders:
            holder.condition_memo = {}
        try:
            yield
        finally:
            for holder in holders:
                holder.condition_memo = None

    def _build_levels(
        self,
        *,
        c_hidden: Sequence[int],
        nhead: Sequence[int],
        blocks: Sequence[Sequence[int]],
        block_repeat: Sequence[Sequence[int]] | None,
        level_config: Sequence[str],
        c_cond: int,
        kernel_size: int,
        dropout,
        self_attn,
        downscaler,
        upscaler,
    ) -> None:
        if block_repeat is None:
            # The reference zips over the repeat-mapper lists; without them no level would run.
            raise ValueError("block_repeat=None is not supported (the reference would run no blocks)")
        levels = len(c_hidden)
        dropout = _per_level(dropout, levels)
        self_attn = _per_level(self_attn, levels)

        def block(kind: str, i: int, c_skip: int = 0) -> nn.Module:
            return make_block(
                kind,
                c_hidden[i],
                nhead[i],
                c_cond=c_cond,
                c_r=self.c_r,
                t_conds=self.t_conds,
                kernel_size=kernel_size,
                c_skip=c_skip,
                dropout=dropout[i],
                self_attn=self_attn[i],
            )

        self.down_blocks = nn.ModuleList()
        self.down_downscalers = nn.ModuleList()
        self.down_repeat_mappers = nn.ModuleList()
        for i in range(levels):
            self.down_downscalers.append(downscaler(c_hidden[i - 1], c_hidden[i], i) if i > 0 else nn.Identity())
            self.down_blocks.append(
                nn.ModuleList(block(kind, i) for _ in range(blocks[0][i]) for kind in level_config[i])
            )
            self.down_repeat_mappers.append(
                nn.ModuleList(nn.Conv2d(c_hidden[i], c_hidden[i], kernel_size=1) for _ in range(block_repeat[0][i] - 1))
            )

        self.up_blocks = nn.ModuleList()
        self.up_upscalers = nn.ModuleList()
        self.up_repeat_mappers = nn.ModuleList()
        for i in reversed(range(levels)):
            self.up_upscalers.append(upscaler(c_hidden[i], c_hidden[i - 1], i) if i > 0 else nn.Identity())
            up_block = nn.ModuleList()
            for j in range(blocks[1][::-1][i]):
                for k, kind in enumerate(level_config[i]):
                    c_skip = c_hidden[i] if i < levels - 1 and j == k == 0 else 0
                    up_block.append(block(kind, i, c_skip))
            self.up_blocks.append(up_block)
            self.up_repeat_mappers.append(
                nn.ModuleList(
                    nn.Conv2d(c_hidden[i], c_hidden[i], kernel_size=1) for _ in range(block_repeat[1][::-1][i] - 1)
                )
            )

    def _build_io(self, c_in: int, c_out: int, patch_size: int, c_first: int) -> None:
        """The patch embedding in front of the U-Net and the output head behind it."""
        self.embedding = nn.Sequential(
            nn.PixelUnshuffle(patch_size),
            nn.Conv2d(c_in * patch_size**2, c_first, kernel_size=1),
            LayerNorm2d(c_first, elementwise_affine=False, eps=1e-6),
        )
        self.clf = nn.Sequential(
            LayerNorm2d(c_first, elementwise_affine=False, eps=1e-6),
            nn.Conv2d(c_first, c_out * patch_size**2, kernel_size=1),
            nn.PixelShuffle(patch_size),
        )

    def _r_embed(self, r: torch.Tensor, conds: dict) -> torch.Tensor:
        parts = [r_embedding(r, self.c_r)]
        for name in self.t_conds:
            t_cond = conds.get(name)
            parts.append(r_embedding(torch.zeros_like(r) if t_cond is None else t_cond, self.c_r))
        return torch.cat(parts, dim=1)

    def _run_blocks(self, blocks: nn.ModuleList, x, r_embed, clip, cnet: Iterator | None, skip=None) -> torch.Tensor:
        """``blocks`` in order. The control feature is added before each ResBlock, and ``skip`` is joined to the first
        block's input (resized to it). A ResBlock followed by a TimestepBlock runs with the latter's modulation, so
        its residual add and the modulation take one pass (:meth:`ResBlock.forward`)."""
        i = 0
        while i < len(blocks):
            block = blocks[i]
            if isinstance(block, ResBlock):
                first_skip = skip if i == 0 else None
                if first_skip is not None and x.shape[-2:] != first_skip.shape[-2:]:
                    x = F.interpolate(x, first_skip.shape[-2:], mode="bilinear", align_corners=True)
                x = self._add_control(x, cnet)
                following = blocks[i + 1] if i + 1 < len(blocks) else None
                if isinstance(following, TimestepBlock):
                    x = block(x, first_skip, modulation=following.modulation(r_embed))
                    i += 2
                    continue
                x = block(x, first_skip)
            elif isinstance(block, AttnBlock):
                x = block(x, clip)
            elif isinstance(block, TimestepBlock):
                x = block(x, r_embed)
            else:
                x = block(x)
            i += 1
        return x

    @staticmethod
    def _add_control(x: torch.Tensor, cnet: Iterator | None) -> torch.Tensor:
        if cnet is None:
            return x
        feature = next(cnet, None)
        if feature is None:
            return x
        return x + F.interpolate(feature.to(x.dtype), size=x.shape[-2:], mode="bilinear", align_corners=True)

    def _down_encode(self, x, r_embed, clip, cnet: Iterator | None = None) -> list[torch.Tensor]:
        level_outputs = []
        for down_block, downscaler, repmap in zip(self.down_blocks, self.down_downscalers, self.down_repeat_mappers):
            x = downscaler(x)
            for i in range(len(repmap) + 1):
                x = self._run_blocks(down_block, x, r_embed, clip, cnet)
                if i < len(repmap):
                    x = repmap[i](x)
            level_outputs.insert(0, x)
        return level_outputs

    def _up_decode(self, level_outputs, r_embed, clip, cnet: Iterator | None = None) -> torch.Tensor:
        x = level_outputs[0]
        for i, (up_block, upscaler, repmap) in enumerate(
            zip(self.up_blocks, self.up_upscalers, self.up_repeat_mappers)
        ):
            for j in range(len(repmap) + 1):
                x = self._run_blocks(up_block, x, r_embed, clip, cnet, level_outputs[i] if i > 0 else None)
                if j < len(repmap):
                    x = repmap[j](x)
            x = upscaler(x)
        return x
