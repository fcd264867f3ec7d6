"""The Triton scale-shift kernel (networks/kernels.py), run on the CPU in Triton's interpreter.

The interpreter is chosen when a kernel is defined, so each check runs in a child process with
TRITON_INTERPRET=1; the child forces the kernel path (``kernels.fast_path``) that the networks take for CUDA tensors.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Triton exists for Linux only (the test extras install it there, so CI always runs these); elsewhere the kernel
# is never used, which test_without_triton_the_plain_ops_run checks on every platform.
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not available on this platform"
)


def run_interpreted(code: str, interpret: bool = True) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@needs_triton
def test_kernel_equals_addcmul_for_both_broadcast_patterns():
    out = run_interpreted(
        """
        import torch
        from cascade_studio.networks.kernels import scale_shift_3d

        gen = torch.Generator().manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16):
            # GlobalResponseNorm: (B, HW, C), scale per sample and channel, shift per channel. Odd sizes leave
            # partial blocks on both axes.
            x = torch.randn(3, 37, 300, generator=gen).to(dtype)
            scale = torch.randn(3, 1, 300, generator=gen).to(dtype)
            shift = torch.randn(1, 1, 300, generator=gen).to(dtype)
            got = scale_shift_3d(x, scale, shift)
            want = torch.addcmul(shift, x, scale)
            assert got.dtype == dtype and got.shape == x.shape
            # float32: the kernel may fuse the multiply-add; bf16: at most one rounding step apart.
            tol = 1e-5 if dtype == torch.float32 else 2 ** -7 * want.abs().max().item()
            assert (got.float() - want.float()).abs().max().item() <= tol, dtype
            # TimestepBlock: (B, C, HW), scale and shift per sample and channel.
            x = torch.randn(2, 19, 513, generator=gen).to(dtype)
            scale = torch.randn(2, 19, 1, generator=gen).to(dtype)
            shift = torch.randn(2, 19, 1, generator=gen).to(dtype)
            got = scale_shift_3d(x, scale, shift)
            want = torch.addcmul(shift, x, scale)
            tol = 1e-5 if dtype == torch.float32 else 2 ** -7 * want.abs().max().item()
            assert (got.float() - want.float()).abs().max().item() <= tol, dtype
        print("ok")
        """
    )
    assert out.strip() == "ok"


@needs_triton
def test_network_blocks_through_the_kernel_equal_the_plain_path():
    """GlobalResponseNorm, ResBlock and FeedForwardBlock give the same output through the kernel (forced) as
    through ``torch.addcmul``: the views and strides handed to the kernel are right."""
    out = run_interpreted(
        """
        import torch
        from cascade_studio.networks import kernels
        from cascade_studio.networks.common import FeedForwardBlock, GlobalResponseNorm, ResBlock

        torch.manual_seed(0)
        grn = GlobalResponseNorm(48)
        res = ResBlock(8, c_skip=4)
        ffn = FeedForwardBlock(8)
        with torch.no_grad():
            for norm in (grn, res.channelwise[2], ffn.channelwise[2]):
                norm.gamma.normal_()
                norm.beta.normal_()
        x_last = torch.randn(2, 5, 7, 48)
        x, skip = torch.randn(2, 8, 20, 15), torch.randn(2, 4, 20, 15)

        def outputs():
            return grn(x_last), res(x, skip), ffn(x)

        with torch.inference_mode():
            plain = outputs()
            kernels.fast_path = lambda x, *others, contiguous=True: True
            fused = outputs()
        for a, b in zip(plain, fused):
            assert a.shape == b.shape and a.stride() == b.stride()
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
        print("ok")
        """
    )
    assert out.strip() == "ok"


@needs_triton
def test_bias_layer_norm_kernel_equals_the_convolution_bias_then_layer_norm():
    """The ResBlock's depthwise bias + LayerNorm kernel against the plain ops, and a ResBlock given channels-last input
    (as the GPU's residual stream is; then the kernel runs) and contiguous input (then it cannot) through the forced
    kernel path against the plain path."""
    out = run_interpreted(
        """
        import torch
        import torch.nn.functional as F
        from cascade_studio.networks import kernels
        from cascade_studio.networks.common import ResBlock

        gen = torch.Generator().manual_seed(0)
        for dtype, cols in ((torch.float32, 300), (torch.float32, 2048), (torch.bfloat16, 320)):
            h = (torch.randn(2, 5, 7, cols, generator=gen) * 3 + 1).to(dtype)
            bias = torch.randn(cols, generator=gen).to(dtype)
            got = kernels.bias_layer_norm_last(h, bias, 1e-6)
            want = F.layer_norm(h.float() + bias.float(), (cols,), eps=1e-6)
            assert got.dtype == dtype and got.shape == h.shape
            tol = 1e-5 if dtype == torch.float32 else 2 ** -7 * want.abs().max().item()
            assert (got.float() - want).abs().max().item() <= tol, (dtype, cols)

        torch.manual_seed(0)
        res = ResBlock(16, c_skip=4)
        x, skip = torch.randn(2, 16, 9, 11), torch.randn(2, 4, 9, 11)
        last = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            plain = res(x, skip)
            kernels.fast_path = lambda x, *others, contiguous=True: True
            conv = res.depthwise(last).permute(0, 2, 3, 1)
            assert conv.is_contiguous()  # the kernel's precondition holds for channels-last input
            for given in (last, x):
                fused = res(given, skip)
                assert torch.allclose(plain, fused, atol=1e-5, rtol=1e-5), (plain - fused).abs().max()
        print("ok")
        """
    )
    assert out.strip() == "ok"


@needs_triton
def test_residual_modulation_kernel_equals_the_residual_add_then_the_timestep_block():
    """A ResBlock given its TimestepBlock's modulation (one kernel: residual add, then scale and shift) against the
    ResBlock then the TimestepBlock as separate modules, for channels-last input (the GPU's residual stream: then the
    kernel runs) and contiguous input (then the two ops run); and the kernel alone in bf16, whose sum is rounded as
    PyTorch's add rounds it."""
    out = run_interpreted(
        """
        import torch
        from cascade_studio.networks import kernels
        from cascade_studio.networks.common import ResBlock, TimestepBlock

        torch.manual_seed(0)
        res, ts = ResBlock(24, c_skip=4), TimestepBlock(24, 8, conds=("sca",))
        with torch.no_grad():
            res.channelwise[2].gamma.normal_()
            ts.mapper.weight.normal_()
        x, skip, t = torch.randn(3, 24, 9, 11), torch.randn(3, 4, 9, 11), torch.randn(3, 16)
        last = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            plain = ts(res(x, skip), t)
            kernels.fast_path = lambda x, *others, contiguous=True: True
            for given in (last, x):
                fused = res(given, skip, modulation=ts.modulation(t))
                assert fused.shape == plain.shape
                assert torch.allclose(plain, fused, atol=1e-5, rtol=1e-5), (plain - fused).abs().max()
            assert fused.stride() == plain.stride()  # the fallback: the very ops of the separate blocks

            gen = torch.Generator().manual_seed(1)
            h = torch.randn(2, 5, 7, 40, generator=gen).bfloat16()
            x = torch.randn(2, 40, 5, 7, generator=gen).bfloat16().contiguous(memory_format=torch.channels_last)
            scale, shift = (torch.randn(2, 80, 1, 1, generator=gen).bfloat16().chunk(2, dim=1))
            got = kernels.residual_scale_shift(h, x, scale, shift)
            want = torch.addcmul(shift, h.permute(0, 3, 1, 2) + x, scale)
            assert got.dtype == torch.bfloat16 and got.shape == want.shape
            assert got.permute(0, 2, 3, 1).is_contiguous()  # written channels-last, as the stream it continues
            assert (got.float() - want.float()).abs().max().item() <= 2 ** -7 * want.abs().max().item()
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_without_triton_the_plain_ops_run():
    """No Triton (macOS, Windows, a trimmed install): the kernel is reported missing with a clear error and the
    networks take PyTorch's path."""
    out = run_interpreted(
        """
        import sys
        sys.modules["triton"] = None  # import triton now raises ImportError
        import torch
        from cascade_studio.networks import kernels
        from cascade_studio.networks.common import GlobalResponseNorm

        x = torch.randn(2, 3, 4, 8)
        try:
            kernels.scale_shift_3d(x.view(2, 12, 8), torch.ones(2, 1, 8), torch.zeros(1, 1, 8))
        except RuntimeError as exc:
            assert "Triton is not installed" in str(exc)
        else:
            raise AssertionError("no error without Triton")
        assert kernels._kernels() is None
        grn = GlobalResponseNorm(8)
        with torch.inference_mode():
            assert torch.equal(grn(x), x)  # gamma = beta = 0: GRN is the identity
        print("ok")
        """,
        interpret=False,
    )
    assert out.strip() == "ok"
