"""A hand-written Triton kernel for GlobalResponseNorm's broadcast multiply-add on a GPU.

Every ResBlock of Stage B and Stage C ends its MLP with GRN, ``x * (1 + gamma * n) + beta`` where the factor is
per sample and channel. PyTorch runs a multiply-add broadcast like that in its generic, unvectorised elementwise
kernel: on an H200 at batch 4 it reached about a third of the memory bandwidth a plain multiply does (1.3 against
3.9 TB/s) and was most of the 12 % of a Stage C and 18 % of a Stage B forward spent in ``addcmul``. The kernel
reads the activation in wide blocks, computes in float32 and writes once (2.5–3.3 TB/s at those sizes).

It runs for CUDA tensors when Triton is installed, outside ``torch.compile`` (which fuses GRN itself) and outside
autograd; everywhere else the same expression runs through ``torch.addcmul``. Triton is imported on the first
CUDA call only. (Each Triton launch costs the CPU more than an ATen op, so kernels pay off only where they save
much GPU time: fusing GELU into GRN and the TimestepBlock's smaller multiply-add were measured and left out,
docs/benchmarks.md.)
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _launcher():
    """The Triton launcher, compiled on demand; None without Triton."""
    try:
        from . import _triton_kernels
    except ImportError:
        return None
    return _triton_kernels.scale_shift


def scale_shift_3d(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * scale + shift`` by the Triton kernel, on whatever device Triton runs (a CUDA GPU; the CPU in Triton's
    interpreter, which the tests use). ``x`` is (batch, rows, cols) and contiguous; ``scale`` and ``shift``
    broadcast to it. Raises RuntimeError without Triton."""
    launch = _launcher()
    if launch is None:
        raise RuntimeError("Triton is not installed")
    if x.dim() != 3 or not x.is_contiguous():
        raise ValueError("x must be a contiguous (batch, rows, cols) tensor")
    return launch(x, scale.expand_as(x), shift.expand_as(x))


def fast_path(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether the kernel applies: CUDA, contiguous, one dtype, not compiling, no autograd, Triton present."""
    return (
        x.is_cuda
        and x.is_contiguous()
        and all(t.dtype == x.dtype for t in others)
        and not torch.compiler.is_compiling()
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *others)))
        and _launcher() is not None
    )


def scale_shift_last(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``shift + x * scale`` for channels-last ``x`` (B, H, W, C) with ``scale`` (B, 1, 1, C) and ``shift``
    (1, 1, 1, C) or (B, 1, 1, C): GlobalResponseNorm's output."""
    if not fast_path(x, scale, shift):
        return torch.addcmul(shift, x, scale)
    b, h, w, c = x.shape
    return scale_shift_3d(x.view(b, h * w, c), scale.view(-1, 1, c), shift.view(-1, 1, c)).view(b, h, w, c)
