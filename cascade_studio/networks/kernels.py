"""Hand-written Triton kernels for two memory-bound steps of every ResBlock on a GPU.

- GlobalResponseNorm's broadcast multiply-add, ``x * (1 + gamma * n) + beta`` where the factor is per sample and
  channel. PyTorch runs a multiply-add broadcast like that in its generic, unvectorised elementwise kernel: on an
  H200 at batch 4 it reached about a third of the memory bandwidth a plain multiply does (1.3 against 3.9 TB/s)
  and was most of the 12 % of a Stage C and 18 % of a Stage B forward spent in ``addcmul``. The kernel reads the
  activation in wide blocks, computes in float32 and writes once (2.5–3.3 TB/s at those sizes).
- The depthwise convolution's bias added inside the LayerNorm that follows it (:func:`bias_layer_norm_last`).
- The ResBlock's residual add and the following TimestepBlock's modulation in one pass
  (:func:`residual_scale_shift`).

They run for CUDA tensors when Triton is installed, outside ``torch.compile`` (which fuses these itself) and outside
autograd; everywhere else the same expressions run through PyTorch's ops. Triton is imported on the first CUDA
call only. (Each Triton launch costs the CPU more than an ATen op, so kernels pay off only where they save much GPU
time or replace more than one op: fusing GELU into GRN, and the TimestepBlock's multiply-add on its own, were
measured and left out; the multiply-add joined to the residual add before it replaces two ops and, on an H100, took
a Stage C forward from 66.4 to 64.4 ms and a Stage B forward from 131.2 to 124.8 ms, docs/benchmarks.md.)"""

from __future__ import annotations

import functools

import torch

#: Whether :func:`residual_scale_shift` runs its kernel on the fast path (a switch for benchmarks/gpu_forward.py).
RESIDUAL_MODULATION_FUSED = True


@functools.cache
def _kernels():
    """The Triton launchers' module, imported on demand; None without Triton."""
    try:
        from . import _triton_kernels
    except ImportError:
        return None
    return _triton_kernels


def _required():
    """:func:`_kernels`, or RuntimeError without Triton."""
    module = _kernels()
    if module is None:
        raise RuntimeError("Triton is not installed")
    return module


def scale_shift_3d(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * scale + shift`` by the Triton kernel, on whatever device Triton runs (a CUDA GPU; the CPU in Triton's
    interpreter, which the tests use). ``x`` is (batch, rows, cols) and contiguous; ``scale`` and ``shift``
    broadcast to it. Raises RuntimeError without Triton."""
    module = _required()
    if x.dim() != 3 or not x.is_contiguous():
        raise ValueError("x must be a contiguous (batch, rows, cols) tensor")
    return module.scale_shift(x, scale.expand_as(x), shift.expand_as(x))


def fast_path(x: torch.Tensor, *others: torch.Tensor, contiguous: bool = True) -> bool:
    """Whether the kernels apply: CUDA, contiguous (unless ``contiguous`` is False: the caller checks what it passes
    on), one dtype, not compiling, no autograd, Triton present."""
    return (
        x.is_cuda
        and (x.is_contiguous() or not contiguous)
        and all(t.dtype == x.dtype for t in others)
        and not torch.compiler.is_compiling()
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *others)))
        and _kernels() is not None
    )


def scale_shift_last(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``shift + x * scale`` for channels-last ``x`` (B, H, W, C) with ``scale`` (B, 1, 1, C) and ``shift``
    (1, 1, 1, C) or (B, 1, 1, C): GlobalResponseNorm's output."""
    if not fast_path(x, scale, shift):
        return torch.addcmul(shift, x, scale)
    b, h, w, c = x.shape
    return scale_shift_3d(x.view(b, h * w, c), scale.view(-1, 1, c), shift.view(-1, 1, c)).view(b, h, w, c)


def residual_scale_shift(h: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``(h + x) * scale + shift`` as NCHW: a ResBlock's channels-last output ``h`` (B, H, W, C) plus its input ``x``
    (B, C, H, W), then the following TimestepBlock's modulation with ``scale`` and ``shift`` (B, C, 1, 1). On a GPU,
    where ``x`` is channels-last in memory, one kernel reads ``h`` and ``x`` and writes the result once (the two
    PyTorch ops write and re-read the sum, and ``addcmul``'s broadcast runs at a third of the memory bandwidth);
    the sum is rounded to the dtype before it is scaled, as those ops round it. Elsewhere the two ops run."""
    x_last = x.permute(0, 2, 3, 1)
    if not (RESIDUAL_MODULATION_FUSED and fast_path(h, x, scale, shift) and x_last.is_contiguous()):
        return torch.addcmul(shift, h.permute(0, 3, 1, 2) + x, scale)
    b, hgt, wid, c = h.shape
    out = _required().scale_shift(
        h.view(b, hgt * wid, c), scale.view(-1, 1, c).expand(b, hgt * wid, c),
        shift.view(-1, 1, c).expand(b, hgt * wid, c), x_last.view(b, hgt * wid, c),
    )  # fmt: skip
    return out.view(b, hgt, wid, c).permute(0, 3, 1, 2)


def bias_layer_norm_last(h: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``layer_norm(h + bias)`` over the last axis (no affine) of a contiguous channels-last ``h`` (B, H, W, C) by one
    Triton kernel: the ResBlock's depthwise convolution without its bias, then the norm. cuDNN adds a convolution's
    bias in a pass of its own (a broadcast ``add_`` that took longer than the depthwise convolution itself, 4.6 % of
    a Stage B forward on an H100); here it is added to the values the norm reads anyway. Raises RuntimeError without
    Triton."""
    module = _required()
    if not h.is_contiguous():
        raise ValueError("h must be contiguous (B, H, W, C)")
    c = h.shape[-1]
    return module.bias_layer_norm(h.view(-1, c), bias, eps).view(h.shape)
