"""Linear layers through oneDNN on the CPU.

PyTorch runs a float32 ``F.linear`` on the CPU through MKL's GEMM. oneDNN, which PyTorch also ships (and uses for
bf16), does the same float32 products faster on the CPUs measured: on two AMD EPYC (Zen 4) cores 205–226 GFLOP/s
against MKL's 105–203 at the shapes of Stage B and Stage C (``benchmarks/linear.py``), and it can apply the GELU
that follows a ResBlock's first layer while the product's output is still in cache (one pass fewer over the
block's widest activation). The weights stay ordinary tensors in their usual layout: no packed copies, so loading,
LoRA hooks and ``state_dict`` are unaffected.

The route is taken on x86-64 for CPU tensors of one dtype (float32 or bfloat16) outside autograd and outside
``torch.compile`` (which lowers linears itself), when PyTorch was built with oneDNN; everything else, GPUs
included, runs ``F.linear``. It computes the same float32 products in a different summation order, so results
differ from MKL's by float rounding only.
"""

from __future__ import annotations

import functools
import platform

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def _onednn_linear():
    """``torch.ops.mkldnn._linear_pointwise`` (the op Inductor lowers CPU linears to), or None where this PyTorch
    lacks oneDNN or the op, and on CPUs other than x86-64 (where it has not been measured against ``F.linear``)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX), where bf16 products run
    at about twice the float32 rate (two Zen 4 cores: 390 against 155-200 GFLOP/s). Elsewhere bf16 is emulated
    and slower than float32. Older PyTorch builds without the probes count as no."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:
            continue
    return False


def onednn_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether :func:`linear` takes the oneDNN route for these tensors."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and weight.dtype == x.dtype
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and weight.is_contiguous()
        and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous()))
        and x.numel() > 0
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.compiler.is_compiling()
        and _onednn_linear() is not None
    )


#: Whether :func:`linear` applies a GELU inside a half-precision GPU product (:func:`gelu_in_product`). A switch for
#: ``benchmarks/gpu.py`` and ``benchmarks/gpu_forward.py``, which time both ways.
GPU_GELU_IN_PRODUCT = True


def gelu_in_product_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :func:`linear` with ``gelu`` takes :func:`gelu_in_product`: CUDA, bf16 or fp16 (where the tanh form's
    error is far below the dtype's rounding), with a bias, outside autograd and ``torch.compile`` (which fuses the
    exact GELU itself)."""
    return (
        GPU_GELU_IN_PRODUCT
        and x.is_cuda
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.dtype == x.dtype
        and bias is not None
        and bias.dtype == x.dtype
        and x.numel() > 0
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.compiler.is_compiling()
    )


def gelu_in_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``GELU(x · weightᵀ + bias)`` with the GELU in the product's epilogue (cuBLASLt's bias + GELU epilogue on a
    GPU): the product's output is written once, already activated, instead of written, read and written again.
    cuBLASLt's GELU is the tanh form, which differs from the exact (erf) GELU by at most 4.7e-4, a sixteenth of
    bf16's rounding step at the values where the difference peaks."""
    flat = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)
    return flat.view(*x.shape[:-1], weight.shape[0])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False):
    """``F.linear(x, weight, bias)``, followed by the exact (erf) GELU when ``gelu`` is set; on the CPU through
    oneDNN with the GELU applied inside the product (:func:`onednn_applies`); in bf16 / fp16 on a GPU with the GELU
    in cuBLASLt's epilogue (:func:`gelu_in_product_applies`)."""
    if onednn_applies(x, weight, bias):
        return _onednn_linear()(x, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else "")
    if gelu and gelu_in_product_applies(x, weight, bias):
        return gelu_in_product(x, weight, bias)
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def linear_add_(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """``out += F.linear(x, weight, bias)`` for a contiguous ``out`` (a residual connection); returns ``out``. On
    oneDNN's route the addition happens inside the product (then one copy of the result into ``out``), elsewhere
    as an in-place ``addmm_``."""
    if onednn_applies(x, weight, bias) and out.dtype == x.dtype and out.is_contiguous():
        return out.copy_(torch.ops.mkldnn._linear_pointwise.binary(x, out, weight, bias, "add"))
    flat = out.view(-1, out.shape[-1])
    if bias is not None:
        flat.add_(bias)
    flat.addmm_(x.reshape(-1, x.shape[-1]), weight.t())
    return out


def add_low_rank_(out: torch.Tensor, x: torch.Tensor, terms, first_row: int = 0) -> torch.Tensor:
    """Add LoRA terms to ``out``, which holds output rows ``first_row …`` of a (packed) projection of ``x``: each term
    ``(down (r, in), up (rows, r), first)`` adds ``x · downᵀ · upᵀ`` to the rows ``first … first + rows`` that ``out``
    holds (two thin products instead of a rebuilt weight). Returns ``out``."""
    last_row = first_row + out.shape[-1]
    for down, up, first in terms:
        a, b = max(first_row, first), min(last_row, first + up.shape[0])
        if a < b:
            out[..., a - first_row : b - first_row] += linear(linear(x, down), up[a - first : b - first])
    return out


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys, forward hooks as usual) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def mlp(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a ``Linear, GELU, …`` sequence with the first two fused into one :func:`linear` call when the first
    layer is a plain :class:`Linear` (no hooks, e.g. a LoRA's, that must see its output before the GELU)."""
    first, act = layers[0], layers[1]
    if (
        type(first) is Linear
        and type(act) is nn.GELU
        and act.approximate == "none"
        and not (first._forward_hooks or first._forward_pre_hooks)
    ):
        x = linear(x, first.weight, first.bias, gelu=True)
        for layer in list(layers)[2:]:
            x = layer(x)
        return x
    return layers(x)
