"""The CPU linear route through oneDNN (networks/linear.py) against the plain PyTorch ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cascade_studio.networks import linear as linear_mod
from cascade_studio.networks.common import FeedForwardBlock, ResBlock
from cascade_studio.networks.linear import Linear, linear, linear_add_, mlp, onednn_applies

# The route is taken on x86-64 PyTorch builds with oneDNN (Linux and Windows; CI runs these); the fallback tests
# below run everywhere.
needs_onednn = pytest.mark.skipif(linear_mod._onednn_linear() is None, reason="no oneDNN route on this platform")


@pytest.fixture
def no_onednn(monkeypatch):
    monkeypatch.setattr(linear_mod, "_onednn_linear", lambda: None)


def tensors(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


@needs_onednn
@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize(
    "x",
    [
        tensors(37, 48),
        tensors(2, 37, 48),
        tensors(2, 5, 7, 48),
        tensors(2, 48, 5, 7).permute(0, 2, 3, 1),  # a channels-last view, as the ResBlocks pass it
    ],
    ids=["2d", "3d", "4d", "permuted"],
)
def test_onednn_route_equals_linear_then_gelu(x, gelu):
    w, b = tensors(96, 48, seed=1), tensors(96, seed=2)
    with torch.inference_mode():
        assert onednn_applies(x, w, b)
        got = linear(x, w, b, gelu=gelu)
        want = F.linear(x, w, b)
        want = F.gelu(want) if gelu else want
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_route_in_bfloat16_and_on_weight_row_slices():
    x, w, b = tensors(3, 20, 64, dtype=torch.bfloat16), tensors(192, 64, dtype=torch.bfloat16), tensors(192)
    b = b.bfloat16()
    with torch.inference_mode():
        assert onednn_applies(x, w[64:], b[64:])
        torch.testing.assert_close(linear(x, w[64:], b[64:]), F.linear(x, w[64:], b[64:]))
        torch.testing.assert_close(linear(x, w, None), F.linear(x, w))


@needs_onednn
def test_linear_add_adds_the_product_into_out():
    x, w, b, out = tensors(6, 9, 32), tensors(16, 32, seed=1), tensors(16, seed=2), tensors(6, 9, 16, seed=3)
    want = out + F.linear(x, w, b)
    with torch.inference_mode():
        assert linear_add_(x, w, b, out) is out
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_route_is_left_for_autograd_and_other_dtypes():
    w = nn.Parameter(tensors(8, 4))
    x = tensors(3, 4)
    assert not onednn_applies(x, w)  # gradients wanted: the plain op, which has a backward
    layer = Linear(4, 8)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    with torch.inference_mode():
        assert not onednn_applies(x.double(), w.double())
        assert not onednn_applies(x, w.bfloat16())


def test_without_onednn_the_plain_ops_run(no_onednn):
    x, w, b = tensors(5, 12), tensors(7, 12), tensors(7)
    with torch.inference_mode():
        assert not onednn_applies(x, w, b)
        assert torch.equal(linear(x, w, b, gelu=True), F.gelu(F.linear(x, w, b)))
        out = tensors(5, 7, seed=3)
        want = out + F.linear(x, w, b)
        torch.testing.assert_close(linear_add_(x, w, b, out), want)


@pytest.mark.parametrize("block", ["res", "feedforward"])
def test_blocks_equal_with_and_without_onednn(block, monkeypatch):
    torch.manual_seed(0)
    net = ResBlock(32, c_skip=8) if block == "res" else FeedForwardBlock(32)
    for p in net.parameters():
        p.data.normal_(0, 0.2)
    x, skip = tensors(2, 32, 6, 5), tensors(2, 8, 6, 5, seed=1)
    args = (x, skip) if block == "res" else (x,)
    with torch.inference_mode():
        fast = net(*args)
        monkeypatch.setattr(linear_mod, "_onednn_linear", lambda: None)
        plain = net(*args)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_mlp_keeps_the_gelu_apart_when_the_first_layer_has_a_hook():
    """A LoRA hooks the first layer and adds to its output before the GELU; fusing would skip that."""
    torch.manual_seed(0)
    layers = nn.Sequential(Linear(6, 24), nn.GELU(), Linear(24, 6))
    x = tensors(4, 6)
    seen = []
    layers[0].register_forward_hook(lambda module, args, out: seen.append(out) or out + 1.0)
    with torch.inference_mode():
        got = mlp(layers, x)
        want = layers[2](F.gelu(F.linear(x, layers[0].weight, layers[0].bias) + 1.0))
    assert len(seen) == 1 and (seen[0] < 0).any()  # the hook saw the product before the GELU
    torch.testing.assert_close(got, want)


def test_no_onednn_route_off_x86(monkeypatch):
    monkeypatch.setattr(linear_mod.platform, "machine", lambda: "arm64")
    linear_mod._onednn_linear.cache_clear()
    try:
        with torch.inference_mode():
            assert not onednn_applies(tensors(3, 4), tensors(5, 4))
    finally:
        monkeypatch.undo()
        linear_mod._onednn_linear.cache_clear()


@pytest.mark.parametrize(
    "x",
    [tensors(2, 5, 7, 48, dtype=torch.bfloat16), tensors(2, 48, 5, 7, dtype=torch.bfloat16).permute(0, 2, 3, 1)],
    ids=["4d", "permuted"],
)
def test_gelu_in_product_equals_the_exact_gelu_within_bf16_rounding(x):
    # The GPU route's computation (cuBLASLt's bias + tanh-GELU epilogue; PyTorch runs the same op on the CPU):
    # against the exact GELU of the product in float64, it must be as close as bf16 rounding allows.
    w, b = tensors(96, 48, dtype=torch.bfloat16, seed=1) * 0.2, tensors(96, dtype=torch.bfloat16, seed=2)
    with torch.inference_mode():
        got = linear_mod.gelu_in_product(x, w, b)
        exact = F.gelu(F.linear(x.double(), w.double(), b.double()))
        split = F.gelu(F.linear(x, w, b))  # the product rounded to bf16, then the exact GELU
    assert got.shape == exact.shape == (2, 5, 7, 96) and got.dtype == torch.bfloat16
    err, split_err = (got.double() - exact).abs().max(), (split.double() - exact).abs().max()
    assert err <= exact.abs().max() * 2**-7  # one bf16 rounding step at the output's scale
    assert err <= split_err  # no worse than the exact GELU applied to the bf16 product
