"""The bf16 CPU attention route (networks/attention.py) against PyTorch's fused kernel and exact arithmetic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cascade_studio.networks import attention as attention_mod
from cascade_studio.networks import linear as linear_mod
from cascade_studio.networks.attention import attention, bf16_attention, bf16_route_applies
from cascade_studio.networks.stage_c import StageC
from cascade_studio.pipeline.demo import randomize_
from tests.support.configs import bench_config

needs_onednn = pytest.mark.skipif(linear_mod._onednn_linear() is None, reason="no oneDNN route on this platform")


def qkv(b, h, n, m, d=32, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, t, d, generator=g).to(dtype) for t in (n, m, m))


@pytest.fixture
def native_bf16(monkeypatch):
    """Route decisions as on a CPU with native bf16, whatever this one has (the route itself runs anywhere oneDNN
    does; without native bf16 oneDNN emulates it)."""
    monkeypatch.setattr(attention_mod, "cpu_has_native_bf16", lambda: True)


@needs_onednn
@pytest.mark.parametrize(
    ("shape", "block_scores"),
    [((2, 3, 40, 52), 1 << 20), ((1, 2, 300, 310), 128 * 310), ((2, 2, 301, 333), 150 * 333)],
    ids=["one-block", "three-blocks", "uneven-blocks"],
)
def test_bf16_attention_is_as_accurate_as_the_fused_kernel(monkeypatch, shape, block_scores):
    monkeypatch.setattr(attention_mod, "BLOCK_SCORES", block_scores)
    q, k, v = qkv(*shape)
    with torch.inference_mode():
        exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        fused = F.scaled_dot_product_attention(q, k, v)
        ours = bf16_attention(q, k, v)
    assert ours.shape == fused.shape and ours.dtype == torch.bfloat16
    fused_err = (fused.double() - exact).abs()
    ours_err = (ours.double() - exact).abs()
    # Both round the output (and the probabilities) to bf16: the same error within rounding noise.
    assert ours_err.max() <= 2 * fused_err.max()
    assert ours_err.mean() <= 1.5 * fused_err.mean()
    # Joining the heads afterwards, as the attention blocks do, is a view.
    assert ours.transpose(1, 2).is_contiguous()


@needs_onednn
def test_bf16_attention_reads_strided_query_key_and_value_views():
    """The blocks pass views of the packed projection (every head's q, k and v interleaved in one row)."""
    g = torch.Generator().manual_seed(1)
    b, n, h, d = 2, 30, 3, 16
    packed = torch.randn(b, n, 3 * h * d, generator=g).bfloat16()
    q, k, v = (t.view(b, n, h, d).transpose(1, 2) for t in packed.chunk(3, dim=-1))
    with torch.inference_mode():
        ours = bf16_attention(q, k, v)
        dense = bf16_attention(q.contiguous(), k.contiguous(), v.contiguous())
    assert torch.equal(ours, dense)


def test_the_route_is_taken_only_for_large_bf16_inference_on_native_bf16(monkeypatch, native_bf16):
    least = attention_mod.MIN_TOKENS
    big = qkv(1, 2, least, least + 8)
    assert bf16_route_applies(*big) is (linear_mod._onednn_linear() is not None)
    assert not bf16_route_applies(*qkv(1, 2, least - 1, least + 8))  # too few queries: the fused kernel is faster
    assert not bf16_route_applies(*qkv(1, 2, least, least - 1))  # too few keys
    assert not bf16_route_applies(*qkv(1, 2, least, least + 8, dtype=torch.float32))
    assert not bf16_route_applies(*big, dropout_p=0.1)
    monkeypatch.setattr(attention_mod, "MAX_THREADS", torch.get_num_threads() - 1)
    assert not bf16_route_applies(*big)  # more threads: the fused kernel spreads its work better
    monkeypatch.setattr(attention_mod, "MAX_THREADS", torch.get_num_threads())
    assert bf16_route_applies(*big) is (linear_mod._onednn_linear() is not None)
    q, k, v = big
    assert not bf16_route_applies(q.requires_grad_(), k, v)


def test_no_route_without_native_bf16(monkeypatch):
    monkeypatch.setattr(attention_mod, "cpu_has_native_bf16", lambda: False)
    assert not bf16_route_applies(*qkv(1, 2, attention_mod.MIN_TOKENS, attention_mod.MIN_TOKENS))


def test_attention_falls_back_to_the_fused_kernel_exactly(native_bf16):
    q, k, v = qkv(2, 2, 20, 24, dtype=torch.float32)
    with torch.inference_mode():
        assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


@needs_onednn
def test_a_bf16_stage_c_through_the_route_matches_the_fused_kernel(monkeypatch, native_bf16):
    """A tiny Stage C in bf16 with the route taken for every attention block gives the output of the fused kernel
    within bf16 noise, and the route really ran."""
    model = randomize_(StageC(**bench_config("tiny")["stage_c"]), 1).to(torch.bfloat16)
    cfg = bench_config("tiny")["stage_c"]
    g = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(2, 16, 8, 8, generator=g).bfloat16(),
        torch.rand(2, generator=g),
        torch.randn(2, 77, cfg["c_clip_text"], generator=g).bfloat16(),
        torch.randn(2, 1, cfg["c_clip_text_pooled"], generator=g).bfloat16(),
        torch.randn(2, 1, cfg["c_clip_img"], generator=g).bfloat16(),
    )
    with torch.inference_mode():
        fused = model(*inputs).float()
        ran = []
        real = attention_mod.bf16_attention
        monkeypatch.setattr(attention_mod, "MIN_TOKENS", 16)
        monkeypatch.setattr(attention_mod, "bf16_attention", lambda *a: ran.append(1) or real(*a))
        routed = model(*inputs).float()
    assert len(ran) == 4  # the tiny Stage C's attention blocks
    scale = fused.abs().max().item()
    assert (routed - fused).abs().max().item() <= 0.02 * scale
    assert not torch.equal(routed, fused)
