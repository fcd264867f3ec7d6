"""The Triton kernel behind :mod:`cascade_studio.networks.kernels` (imported only when a CUDA tensor first needs it:
Triton's import is slow, and it is absent from some PyTorch builds)."""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

_BLOCK_ROWS = 8
_BLOCK_COLS = 256


@triton.jit
def scale_shift_kernel(
    x_ptr, r_ptr, s_ptr, t_ptr, y_ptr, rows, cols, s_b, s_r, s_c, t_b, t_r, t_c,
    HAS_RESIDUAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # noqa: N803 (Triton's convention)
):  # fmt: skip
    # y = (x [+ r]) * s + t in float32. x, r and y are (batch, rows, cols) contiguous; s and t are read through their
    # own strides, any of which may be 0 (broadcast). The sum x + r is rounded to y's dtype before it is scaled, as
    # the two PyTorch ops this replaces round it.
    b = tl.program_id(2).to(tl.int64)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (r < rows)[:, None] & (c < cols)[None, :]
    r64, c64 = r.to(tl.int64)[:, None], c.to(tl.int64)[None, :]
    offsets = (b * rows + r64) * cols + c64
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    if HAS_RESIDUAL:
        x = (x + tl.load(r_ptr + offsets, mask=mask).to(tl.float32)).to(y_ptr.dtype.element_ty).to(tl.float32)
    s = tl.load(s_ptr + b * s_b + r64 * s_r + c64 * s_c, mask=mask).to(tl.float32)
    t = tl.load(t_ptr + b * t_b + r64 * t_r + c64 * t_c, mask=mask).to(tl.float32)
    tl.store(y_ptr + offsets, (x * s + t).to(y_ptr.dtype.element_ty), mask=mask)


def scale_shift(
    x3: torch.Tensor, scale3: torch.Tensor, shift3: torch.Tensor, residual3: torch.Tensor | None = None
) -> torch.Tensor:
    batch, rows, cols = x3.shape
    out = torch.empty_like(x3)
    grid = (triton.cdiv(rows, _BLOCK_ROWS), triton.cdiv(cols, _BLOCK_COLS), batch)
    # Triton launches on the current CUDA device: make it the tensors' (a pipeline on cuda:1, say).
    with torch.cuda.device(x3.device) if x3.is_cuda else contextlib.nullcontext():
        scale_shift_kernel[grid](
            x3, x3 if residual3 is None else residual3, scale3, shift3, out, rows, cols,
            *scale3.stride(), *shift3.stride(),
            HAS_RESIDUAL=residual3 is not None, BLOCK_R=_BLOCK_ROWS, BLOCK_C=_BLOCK_COLS,
        )  # fmt: skip
    return out


@triton.jit
def bias_layer_norm_kernel(
    x_ptr, b_ptr, y_ptr, rows, cols, eps,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # noqa: N803 (Triton's convention)
):  # fmt: skip
    # y = LayerNorm(x + b) over each row, no affine, in float32. x and y are (rows, cols) contiguous; b is (cols,).
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_C)
    mask = (r < rows)[:, None] & (c < cols)[None, :]
    offsets = r.to(tl.int64)[:, None] * cols + c[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=c < cols, other=0.0).to(tl.float32)
    x = tl.where(mask, x + b[None, :], 0.0)
    mean = tl.sum(x, axis=1) / cols
    d = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / cols
    y = d * tl.rsqrt(var + eps)[:, None]
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


def bias_layer_norm(x2: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    rows, cols = x2.shape
    out = torch.empty_like(x2)
    block_c = triton.next_power_of_2(cols)
    block_r = max(1, 4096 // block_c)
    with torch.cuda.device(x2.device) if x2.is_cuda else contextlib.nullcontext():
        bias_layer_norm_kernel[(triton.cdiv(rows, block_r),)](
            x2, bias, out, rows, cols, eps, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4 if block_c <= 1024 else 8
        )
    return out
