"""Previewer: Stage C latent → low-resolution RGB, ×8 (reference ``modules/previewer.py``).

A 16×24×24 latent becomes a 3×192×192 image roughly in [0, 1] (no clamp). BatchNorm comes after
the (exact) GELU in every block; keys are ``blocks.<i>.*`` like the released checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn


def _act_norm(c: int) -> list[nn.Module]:
    return [nn.GELU(), nn.BatchNorm2d(c)]


class Previewer(nn.Module):
    def __init__(self, c_in: int = 16, c_hidden: int = 512, c_out: int = 3):
        super().__init__()
        c1, c2, c3 = c_hidden, c_hidden // 2, c_hidden // 4
        self.blocks = nn.Sequential(
            nn.Conv2d(c_in, c1, kernel_size=1),
            *_act_norm(c1),
            nn.Conv2d(c1, c1, kernel_size=3, padding=1),
            *_act_norm(c1),
            nn.ConvTranspose2d(c1, c2, kernel_size=2, stride=2),
            *_act_norm(c2),
            nn.Conv2d(c2, c2, kernel_size=3, padding=1),
            *_act_norm(c2),
            nn.ConvTranspose2d(c2, c3, kernel_size=2, stride=2),
            *_act_norm(c3),
            nn.Conv2d(c3, c3, kernel_size=3, padding=1),
            *_act_norm(c3),
            nn.ConvTranspose2d(c3, c3, kernel_size=2, stride=2),
            *_act_norm(c3),
            nn.Conv2d(c3, c3, kernel_size=3, padding=1),
            *_act_norm(c3),
            nn.Conv2d(c3, c_out, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
