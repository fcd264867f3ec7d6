"""Building blocks shared by Stage B and Stage C (reference: ``modules/common.py``).

Parameter names match the official checkpoints exactly; the computation matches the reference,
with attention routed through ``scaled_dot_product_attention`` (or, in bf16 on the CPU, :mod:`.attention`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .attention import attention
from .linear import Linear, add_low_rank_, linear, mlp


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2 GRN on channels-last input (B, H, W, C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The L2 norm over H and W. On the CPU square-sum-sqrt is ~5x faster than vector_norm at Stage C sizes
        # (benchmarks/networks.py) and as fast at Stage B sizes; on a GPU vector_norm is one fused pass where
        # square-sum writes and reads a temporary as large as x.
        if x.is_cuda:
            g = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
        else:
            g = (x * x).sum(dim=(1, 2), keepdim=True).sqrt()  # x * x: pow's kernel took 1.5x as long here
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        # gamma·(x·n) + beta + x, regrouped as beta + x·(1 + gamma·n): one pass over the big tensor.
        return kernels.scale_shift_last(x, 1 + self.gamma * n, self.beta)


class ResBlock(nn.Module):
    def __init__(self, c: int, c_skip: int = 0, kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        self.depthwise = nn.Conv2d(c, c, kernel_size=kernel_size, padding=kernel_size // 2, groups=c)
        self.norm = LayerNorm2d(c, elementwise_affine=False, eps=1e-6)
        self.channelwise = nn.Sequential(
            Linear(c + c_skip, c * 4),
            nn.GELU(),
            GlobalResponseNorm(c * 4),
            nn.Dropout(dropout),
            Linear(c * 4, c),
        )

    def normed_depthwise(self, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm over the channels of the depthwise convolution of ``x``, channels-last (B, H, W, C). On a GPU,
        where the residual stream is channels-last and so is the convolution's output, the convolution's bias is
        added inside the norm's kernel (:func:`kernels.bias_layer_norm_last`) instead of in a pass of its own."""
        dw = self.depthwise
        if kernels.fast_path(x, dw.weight, dw.bias, contiguous=False):
            h = F.conv2d(x, dw.weight, None, dw.stride, dw.padding, dw.dilation, dw.groups).permute(0, 2, 3, 1)
            if h.is_contiguous():
                return kernels.bias_layer_norm_last(h, dw.bias, self.norm.eps)
            h = h + dw.bias
        else:
            h = dw(x).permute(0, 2, 3, 1)
        return F.layer_norm(h, h.shape[-1:], eps=self.norm.eps)

    def forward(
        self,
        x: torch.Tensor,
        x_skip: torch.Tensor | None = None,
        modulation: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``modulation``: the following TimestepBlock's ``(scale, shift)`` (:meth:`TimestepBlock.modulation`), applied
        to the block's output with its residual add in one pass (:func:`kernels.residual_scale_shift`)."""
        h = self.normed_depthwise(x)
        if x_skip is not None:
            h = torch.cat([h, x_skip.permute(0, 2, 3, 1)], dim=-1)
        h = mlp(self.channelwise, h)
        if modulation is not None:
            return kernels.residual_scale_shift(h, x, *modulation)
        return h.permute(0, 3, 1, 2) + x


class MultiheadAttention(nn.Module):
    """Packed-projection attention with ``nn.MultiheadAttention``'s parameter names.

    Queries come from ``x``; keys and values from ``x`` followed by ``cond`` when ``self_attn``
    is set (the reference concatenates the image tokens in front of the condition tokens).
    """

    def __init__(self, c: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        if c % nhead:
            raise ValueError(f"attention width {c} is not divisible by nhead={nhead}")
        self.nhead = nhead
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * c, c))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * c))
        self.out_proj = Linear(c, c)
        nn.init.xavier_uniform_(self.in_proj_weight)
        # Set by networks/lora.py while a LoRA is applied: low-rank terms (down (r, c), up (rows, r) with the LoRA's
        # scale and weight folded in, first row) whose products are added to the packed projection's output rows
        # ``first … first + rows``; the stored weight is never changed. Empty (the default) leaves the plain path.
        self.in_proj_lora: tuple[tuple[torch.Tensor, torch.Tensor, int], ...] = ()

    def project(self, tokens: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """``tokens`` through rows ``lo … hi`` of the packed projection (0–c queries, c–2c keys, 2c–3c values),
        plus the low-rank terms of any LoRA that cover those rows: two thin products on the tokens instead of a
        (3c, c) weight rebuilt at every forward pass (which cost a reference LoRA 5 % of a CPU Stage C forward)."""
        out = linear(tokens, self.in_proj_weight[lo:hi], self.in_proj_bias[lo:hi])
        return add_low_rank_(out, tokens, self.in_proj_lora, lo)

    def project_condition(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of the condition tokens."""
        c = self.in_proj_weight.shape[1]
        k, v = self.project(cond, c, 3 * c).chunk(2, dim=-1)
        return k, v

    def qkv(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None,
        self_attn: bool,
        cond_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        joined: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries of ``x``; keys and values of ``x`` followed by the condition tokens (self-attention) or of the
        condition tokens alone, given as ``cond`` or already projected as ``cond_kv`` (:meth:`project_condition`).

        Self-attention has two equal routes. ``joined`` (a GPU's): keys and values from one product over the image
        tokens joined to the condition tokens, one contiguous copy of the narrow input instead of copying k and v
        out of strided views (on an H200 those copies cost 8 % of a Stage C forward). Otherwise (the CPU's): the
        image tokens' q, k and v from one packed product, the condition tokens' keys and values joined on after:
        the CPU's matrix products run closer to peak the wider they are (two Zen 4 cores: a Stage C forward about
        15 % faster), and the condition's projection can be reused across steps (:func:`reuse`)."""
        c = x.shape[-1]
        if self_attn and joined and cond_kv is None:
            k, v = self.project(torch.cat([x, cond], dim=1), c, 3 * c).chunk(2, dim=-1)
            return self.project(x, 0, c), k, v
        kc, vc = cond_kv if cond_kv is not None else self.project_condition(cond)
        if not self_attn:
            return self.project(x, 0, c), kc, vc
        q, k, v = self.project(x, 0, 3 * c).chunk(3, dim=-1)
        return q, torch.cat([k, kc], dim=1), torch.cat([v, vc], dim=1)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None,
        self_attn: bool,
        cond_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``cond_kv``: the condition tokens' keys and values already projected (:meth:`project_condition`), in
        place of ``cond``."""
        b, n, c = x.shape
        q, k, v = self.qkv(x, cond, self_attn, cond_kv, joined=x.is_cuda)
        h = self.nhead
        q = q.view(b, n, h, c // h).transpose(1, 2)
        k = k.view(b, k.shape[1], h, c // h).transpose(1, 2)
        v = v.view(b, v.shape[1], h, c // h).transpose(1, 2)
        out = attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


def reuse(memo: dict | None, name: str, inputs: tuple[torch.Tensor, ...], compute: Callable[[], object]):
    """``compute()``, or what it returned before for the very same ``inputs`` tensors (compared by identity: the
    sampler passes one job's condition tensors unchanged at every step). ``memo`` None turns this off (outside
    ``CascadeUNet.reusing_condition``, and on CUDA), as does tracing by ``torch.compile``."""
    if memo is None or torch.compiler.is_compiling():
        return compute()
    hit = memo.get(name)
    if hit is not None and len(hit[0]) == len(inputs) and all(a is b for a, b in zip(hit[0], inputs)):
        return hit[1]
    value = compute()
    memo[name] = (inputs, value)  # holding the inputs keeps their ids from being reused
    return value


class Attention2D(nn.Module):
    def __init__(self, c: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.attn = MultiheadAttention(c, nhead, dropout=dropout)

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor | None,
        self_attn: bool = False,
        cond_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        out = self.attn(tokens, kv, self_attn, cond_kv)
        return out.transpose(1, 2).reshape(b, c, hgt, wid)


class AttnBlock(nn.Module):
    def __init__(self, c: int, c_cond: int, nhead: int, self_attn: bool = True, dropout: float = 0.0):
        super().__init__()
        self.self_attn = self_attn
        self.norm = LayerNorm2d(c, elementwise_affine=False, eps=1e-6)
        self.attention = Attention2D(c, nhead, dropout)
        self.kv_mapper = nn.Sequential(nn.SiLU(), Linear(c_cond, c))
        # Set by CascadeUNet.reusing_condition: the condition's keys and values are then computed once per job.
        self.condition_memo: dict | None = None

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        memo = self.condition_memo
        if memo is not None:
            attn = self.attention.attn
            cond_kv = reuse(memo, "kv", (kv,), lambda: attn.project_condition(self.kv_mapper(kv)))
            return x + self.attention(self.norm(x), None, self_attn=self.self_attn, cond_kv=cond_kv)
        return x + self.attention(self.norm(x), self.kv_mapper(kv), self_attn=self.self_attn)


class FeedForwardBlock(nn.Module):
    def __init__(self, c: int, dropout: float = 0.0):
        super().__init__()
        self.norm = LayerNorm2d(c, elementwise_affine=False, eps=1e-6)
        self.channelwise = nn.Sequential(
            Linear(c, c * 4),
            nn.GELU(),
            GlobalResponseNorm(c * 4),
            nn.Dropout(dropout),
            Linear(c * 4, c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + mlp(self.channelwise, self.norm(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TimestepBlock(nn.Module):
    def __init__(self, c: int, c_timestep: int, conds: list[str] | tuple[str, ...] = ("sca",)):
        super().__init__()
        self.mapper = Linear(c_timestep, c * 2)
        self.conds = list(conds)
        for name in self.conds:
            setattr(self, f"mapper_{name}", Linear(c_timestep, c * 2))

    def modulation(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 + a, b)``, each (B, C, 1, 1), from the embedding ``t``: the block computes ``x * (1 + a) + b``."""
        chunks = t.chunk(len(self.conds) + 1, dim=1)
        ab = self.mapper(chunks[0])
        for i, name in enumerate(self.conds):
            ab = ab + getattr(self, f"mapper_{name}")(chunks[i + 1])
        a, b = ab[:, :, None, None].chunk(2, dim=1)
        return 1 + a, b

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(t)
        return torch.addcmul(shift, x, scale)


def r_embedding(r: torch.Tensor, c_r: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of the noise level ``r`` (reference ``gen_r_embedding``)."""
    r = r * max_positions
    half = c_r // 2
    freqs = torch.arange(half, device=r.device).float().mul(-math.log(max_positions) / (half - 1)).exp()
    emb = r.float()[:, None] * freqs[None, :]
    emb = torch.cat([emb.sin(), emb.cos()], dim=1)
    if c_r % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def make_block(
    block_type: str,
    c_hidden: int,
    nhead: int,
    *,
    c_cond: int,
    c_r: int,
    t_conds: list[str],
    kernel_size: int,
    c_skip: int = 0,
    dropout: float = 0.0,
    self_attn: bool = True,
) -> nn.Module:
    if block_type == "C":
        return ResBlock(c_hidden, c_skip, kernel_size=kernel_size, dropout=dropout)
    if block_type == "A":
        return AttnBlock(c_hidden, c_cond, nhead, self_attn=self_attn, dropout=dropout)
    if block_type == "F":
        return FeedForwardBlock(c_hidden, dropout=dropout)
    if block_type == "T":
        return TimestepBlock(c_hidden, c_r, conds=t_conds)
    raise ValueError(f"block type {block_type!r} is not one of C, T, A, F")
