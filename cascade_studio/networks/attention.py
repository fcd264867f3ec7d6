"""Attention for Stage B and Stage C, with a faster route for bf16 on CPUs that multiply bf16 in hardware.

PyTorch's fused CPU attention kernel runs no faster in bf16 than in float32 (it works through small blocks: about
120–160 GFLOP/s on two Zen 4 or Zen 5 cores either way), while oneDNN's bf16 matrix products run at two to four times
that. With the networks in bf16 (the default on such CPUs) that kernel took 40 % of a Stage C and 43 % of a Stage B
forward at 1024² on two Zen 5 cores. :func:`bf16_attention` computes the same attention head by head with oneDNN's
products (the linear op :mod:`.linear` uses), a block of queries at a time so that their scores stay in cache:
scores in float32 from float32 copies of the queries and keys, softmax in float32, the probabilities rounded to
bf16 times the values (as the fused kernel does). Against exact arithmetic its mean error is the fused kernel's
(within 6 %) and its largest up to twice that, both within a bf16 rounding step of the output; the probabilities
times float32 values would be more exact than either but 6 % slower here, and more on CPUs whose bf16 products
outrun their float32 ones by more (docs/benchmarks.md). It is taken for bf16 on CPUs with native bf16, outside
autograd and ``torch.compile``, without dropout, only with enough tokens on both sides (:data:`MIN_TOKENS`; with
few, the fused kernel's single call wins) and on up to :data:`MAX_THREADS` threads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .linear import _onednn_linear, cpu_has_native_bf16

#: Fewest query and key tokens for the route. Two Zen 5 cores against the fused kernel (``benchmarks/attention.py``
#: and medians of 30): 0.67–0.78× its time at 324 queries (Stage C at 768²), 0.66× at 441, 0.51–0.66× from 576 up;
#: 0.84–1.46× at 256 (Stage B's deepest level at 1024²), 1.0–1.6× at 144.
MIN_TOKENS = 300
#: Scores per block (float32, 4 MiB): queries are taken in blocks of about this many scores divided by the key count
#: (at least 128, split evenly). Two Zen 5 cores, against whole blocks of 256–2048 queries: best or within 2 % of
#: best from 260 to 4100 keys.
BLOCK_SCORES = 1 << 20
#: Most intra-op threads for the route. The fused kernel spreads heads and query blocks over the threads; the route
#: spreads each small product, softmax and copy, so it gains less the more threads there are: on Zen 5, 0.49–0.62×
#: the fused kernel's time with one thread, 0.51–0.70× with two (``benchmarks/attention.py``). Extrapolated, the gain
#: lasts to about eight; more threads keep the fused kernel until the route is measured there.
MAX_THREADS = 8


def bf16_route_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> bool:
    """Whether :func:`attention` takes :func:`bf16_attention` for these (batch, heads, tokens, head width) tensors."""
    return (
        dropout_p == 0.0
        and q.device.type == "cpu"
        and q.dtype == k.dtype == v.dtype == torch.bfloat16
        and q.dim() == 4
        and q.shape[-2] >= MIN_TOKENS
        and k.shape[-2] >= MIN_TOKENS
        and torch.get_num_threads() <= MAX_THREADS
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
        and not torch.compiler.is_compiling()
        and _onednn_linear() is not None
        and cpu_has_native_bf16()
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)`` (no mask), through :func:`bf16_attention`
    where that is faster (:func:`bf16_route_applies`)."""
    if bf16_route_applies(q, k, v, dropout_p):
        return bf16_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


def bf16_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of bf16 ``q`` (B, H, N, D) over ``k`` and ``v`` (B, H, M, D) on the CPU through oneDNN's
    matrix products, as described in the module's docstring. Returns (B, H, N, D) in bf16, laid out as (B, N, H, D)
    so that joining the heads afterwards is free."""
    product = _onednn_linear()
    if product is None:
        raise RuntimeError("this PyTorch has no oneDNN linear op")
    b, h, n, d = q.shape
    scale = d**-0.5
    q32 = q.float().contiguous().mul_(scale)
    k32 = k.float().contiguous()
    v_t = v.transpose(-1, -2).contiguous()  # (B, H, D, M): each head's values as a linear layer's weight
    out = torch.empty(b, n, h, d, dtype=q.dtype, device=q.device)
    blocks = -(-n // max(128, BLOCK_SCORES // k.shape[-2]))
    rows = -(-n // blocks)
    for i in range(b):
        for j in range(h):
            keys, values = k32[i, j], v_t[i, j]
            for r in range(0, n, rows):
                scores = product(q32[i, j, r : r + rows], keys, None, "none", [], "")
                probs = torch.softmax(scores, dim=-1).to(q.dtype)
                out[i, r : r + rows, j] = product(probs, values, None, "none", [], "")
    return out.transpose(1, 2)
