"""Deterministic random weights for tiny test networks.

Every floating parameter gets a non-zero value (the reference zero-initialises GRN, TimestepBlock
and output layers, which would hide wiring mistakes), scaled by fan-in so deep tiny networks keep
their activations in a sane range. BatchNorm statistics get plausible values.
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        fan_in = p[0].numel() if p.dim() > 1 else 1
        std = 1.0 / math.sqrt(fan_in) if p.dim() > 1 else 0.1
        p.copy_(torch.randn(p.shape, generator=gen) * std)
    for name, b in module.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
        elif b.is_floating_point():
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return module.eval()
