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
    x_ptr, s_ptr, t_ptr, y_ptr, rows, cols, s_b, s_r, s_c, t_b, t_r, t_c,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # noqa: N803 (Triton's convention)
):  # fmt: skip
    # y = x * s + t in float32. x and y are (batch, rows, cols) contiguous; s and t are read through their own
    # strides, any of which may be 0 (broadcast).
    b = tl.program_id(2).to(tl.int64)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (r < rows)[:, None] & (c < cols)[None, :]
    r64, c64 = r.to(tl.int64)[:, None], c.to(tl.int64)[None, :]
    offsets = (b * rows + r64) * cols + c64
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    s = tl.load(s_ptr + b * s_b + r64 * s_r + c64 * s_c, mask=mask).to(tl.float32)
    t = tl.load(t_ptr + b * t_b + r64 * t_r + c64 * t_c, mask=mask).to(tl.float32)
    tl.store(y_ptr + offsets, (x * s + t).to(y_ptr.dtype.element_ty), mask=mask)


def scale_shift(x3: torch.Tensor, scale3: torch.Tensor, shift3: torch.Tensor) -> torch.Tensor:
    batch, rows, cols = x3.shape
    out = torch.empty_like(x3)
    grid = (triton.cdiv(rows, _BLOCK_ROWS), triton.cdiv(cols, _BLOCK_COLS), batch)
    # Triton launches on the current CUDA device: make it the tensors' (a pipeline on cuda:1, say).
    with torch.cuda.device(x3.device) if x3.is_cuda else contextlib.nullcontext():
        scale_shift_kernel[grid](
            x3, scale3, shift3, out, rows, cols, *scale3.stride(), *shift3.stride(),
            BLOCK_R=_BLOCK_ROWS, BLOCK_C=_BLOCK_COLS,
        )  # fmt: skip
    return out
