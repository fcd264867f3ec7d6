"""EfficientNet encoder, Previewer and ControlNet: torchvision oracle, shapes, checkpoint layouts."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cascade_studio.networks.controlnet import RELEASED_PROJ_BLOCKS, CNetResBlock, ControlNet
from cascade_studio.networks.effnet import (
    EFFNET_V2_S_STAGES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetEncoder,
    EfficientNetV2Features,
    imagenet_normalize,
)
from cascade_studio.networks.previewer import Previewer
from cascade_studio.pipeline.demo import randomize_

# Five stride-2 convs in total (stem + four stages) → stride 32, like the released table.
TINY_STAGES = (
    ("fused", 1, 3, 1, 8, 8, 2),
    ("fused", 2, 3, 2, 8, 12, 1),
    ("fused", 1, 3, 2, 12, 16, 1),  # expand 1, but 12 rounds up to 16: takes the expand/project branch
    ("mb", 2, 3, 2, 16, 24, 2),
    ("mb", 3, 3, 1, 24, 24, 2),
    ("mb", 2, 3, 2, 24, 32, 1),
)
TINY_LAST = 40


def _torchvision_features(stages, last_channel):
    from torchvision.models import efficientnet as tv

    cfgs = [
        (tv.FusedMBConvConfig if kind == "fused" else tv.MBConvConfig)(expand, kernel, stride, c_in, c_out, n)
        for kind, expand, kernel, stride, c_in, c_out, n in stages
    ]
    net = tv.EfficientNet(cfgs, dropout=0.0, norm_layer=partial(nn.BatchNorm2d, eps=1e-3), last_channel=last_channel)
    return net.features


def _assert_close(a, b, rtol=1e-4):
    scale = b.abs().max().item()
    assert scale > 1e-3, "degenerate oracle output"
    assert (a - b).abs().max().item() <= rtol * scale + 1e-6


def _compare_stagewise(ours, ref, x):
    """Compare after every stage: random tiny stacks damp differences, so checking only the end is weak."""
    a = b = x
    for i, (m_ours, m_ref) in enumerate(zip(ours, ref)):
        a, b = m_ours(a), m_ref(b)
        assert a.shape == b.shape, i
        _assert_close(a, b)
    return a


@torch.no_grad()
def test_released_backbone_matches_torchvision():
    from torchvision import models as tvm

    ref = tvm.efficientnet_v2_s(weights=None).features.eval()
    ours = randomize_(EfficientNetV2Features(), seed=1)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = _compare_stagewise(ours, ref, x)
    assert out.shape == (1, 1280, 2, 2)
    torch.testing.assert_close(ours(x), out)


@torch.no_grad()
def test_custom_stage_table_matches_torchvision():
    ref = _torchvision_features(TINY_STAGES, TINY_LAST).eval()
    ours = randomize_(EfficientNetV2Features(TINY_STAGES, last_channels=TINY_LAST), seed=2)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 70, 96, generator=torch.Generator().manual_seed(0))
    out = _compare_stagewise(ours, ref, x)
    assert out.shape == (2, TINY_LAST, 3, 3)
    torch.testing.assert_close(ours(x), out)


def test_backbone_structure_details():
    net = EfficientNetV2Features()
    assert all(m.eps == 1e-3 for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert net[4][0].block[2].fc1.weight.shape == (16, 256, 1, 1)  # SE squeeze = block input // 4
    assert net[0][0].padding == (1, 1)
    unpadded = EfficientNetV2Features(in_channels=4, stem_padding=False)
    assert unpadded[0][0].padding == (0, 0) and unpadded[0][0].weight.shape == (24, 4, 3, 3)
    with pytest.raises(ValueError):
        EfficientNetV2Features((("fused", 1, 3, 1, 8, 8, 1), ("mb", 2, 3, 2, 16, 16, 1)))
    with pytest.raises(ValueError):
        EfficientNetV2Features((("conv", 1, 3, 1, 8, 8, 1),))
    head = net[:2]
    assert type(head) is nn.Sequential and len(head) == 2 and head[1] is net[1]


def test_imagenet_normalize():
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    y = imagenet_normalize(x)
    assert y.dtype == torch.float64
    for c in range(3):
        torch.testing.assert_close(y[:, c], (x[:, c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c])


@torch.no_grad()
def test_encoder_tiny_forward():
    enc = randomize_(EfficientNetEncoder(c_latent=6, stages=TINY_STAGES, last_channels=TINY_LAST), seed=3)
    assert isinstance(enc.backbone, EfficientNetV2Features)
    assert enc.mapper[1].weight is None and enc.mapper[1].eps == 1e-5
    x = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    out = enc(x)
    assert out.shape == (2, 6, 3, 2)
    expected = F.batch_norm(
        F.conv2d(enc.backbone(x), enc.mapper[0].weight),
        enc.mapper[1].running_mean,
        enc.mapper[1].running_var,
        eps=1e-5,
    )
    torch.testing.assert_close(out, expected)


@torch.no_grad()
def test_previewer_tiny_matches_spec_layout():
    prev = randomize_(Previewer(c_in=5, c_hidden=32, c_out=3), seed=4)
    x = torch.randn(1, 5, 3, 4, generator=torch.Generator().manual_seed(2))
    out = prev(x)
    assert out.shape == (1, 3, 24, 32)

    # Spec-written oracle: every block is conv → GELU → BN (BN after the activation).
    def cna(conv, c):
        return [conv, nn.GELU(), nn.BatchNorm2d(c)]

    oracle = nn.Sequential(
        *cna(nn.Conv2d(5, 32, 1), 32),
        *cna(nn.Conv2d(32, 32, 3, padding=1), 32),
        *cna(nn.ConvTranspose2d(32, 16, 2, stride=2), 16),
        *cna(nn.Conv2d(16, 16, 3, padding=1), 16),
        *cna(nn.ConvTranspose2d(16, 8, 2, stride=2), 8),
        *cna(nn.Conv2d(8, 8, 3, padding=1), 8),
        *cna(nn.ConvTranspose2d(8, 8, 2, stride=2), 8),
        *cna(nn.Conv2d(8, 8, 3, padding=1), 8),
        nn.Conv2d(8, 3, 1),
    ).eval()
    oracle.load_state_dict({k.removeprefix("blocks."): v for k, v in prev.state_dict().items()}, strict=True)
    torch.testing.assert_close(out, oracle(x))
    assert all(m.approximate == "none" for m in prev.modules() if isinstance(m, nn.GELU))


def _check_outputs(outs, proj_blocks, shape):
    assert len(outs) == max(proj_blocks) + 1
    for i, o in enumerate(outs):
        if i in proj_blocks:
            assert o is not None and o.shape == shape
            assert o.abs().max() > 0
        else:
            assert o is None


@torch.no_grad()
@pytest.mark.parametrize("c_in", [1, 3, 4, 16])
def test_controlnet_effnet_tiny(c_in):
    proj_blocks = (0, 2, 5)
    cnet = randomize_(
        ControlNet(c_in, c_proj=7, proj_blocks=proj_blocks, backbone_stages=TINY_STAGES, c_embd=TINY_LAST),
        seed=5,
    )
    stem = cnet.backbone[0][0]
    assert stem.weight.shape == (8, c_in, 3, 3) and stem.bias is None and stem.stride == (2, 2)
    assert stem.padding == ((1, 1) if c_in == 3 else (0, 0))
    x = torch.randn(2, c_in, 66, 64, generator=torch.Generator().manual_seed(3))
    feats = cnet.backbone(x)
    # 66 × 64: the padded stem keeps ceil(n / 2) at every stride-2 conv (66 → 3, 64 → 2); the unpadded
    # stem gives 32 × 31 after the stem, hence a smaller map (66 → 2) and a shifted grid.
    expected_hw = (3, 2) if c_in == 3 else (2, 2)
    assert feats.shape == (2, TINY_LAST, *expected_hw)
    assert cnet.backbone[0](x).shape[-2:] == ((33, 32) if c_in == 3 else (32, 31))
    outs = cnet(x)
    _check_outputs(outs, proj_blocks, (2, 7, *expected_hw))
    for i, idx in enumerate(proj_blocks):
        proj = cnet.projections[i]
        expected = F.conv2d(F.leaky_relu(F.conv2d(feats, proj[0].weight), 0.2), proj[2].weight)
        torch.testing.assert_close(outs[idx], expected)


def test_controlnet_fresh_projections_are_zero():
    cnet = ControlNet(3, c_proj=4, proj_blocks=[1], backbone_stages=TINY_STAGES, c_embd=TINY_LAST).eval()
    out = cnet(torch.randn(1, 3, 32, 32))
    assert out[0] is None and out[1].shape == (1, 4, 1, 1) and not out[1].any()


@torch.no_grad()
def test_controlnet_large_tiny():
    proj_blocks = (1, 3)
    cnet = randomize_(
        ControlNet(
            6,
            c_proj=5,
            proj_blocks=proj_blocks,
            bottleneck_mode="large",
            c_embd=12,
            large_c_wide=32,
            large_c_hidden=8,
            large_depth=2,
        ),
        seed=6,
    )
    assert len(cnet.backbone) == 3 + 2 + 1
    res = cnet.backbone[3]
    assert isinstance(res, CNetResBlock)
    x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(4))
    outs = cnet(x)
    _check_outputs(outs, proj_blocks, (2, 5, 5, 7))

    # CNetResBlock against a functional rewrite (LayerNorm over channels, affine, eps 1e-5; exact GELU).
    h = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(5))
    ln1, conv1, ln2, conv2 = res.blocks[0], res.blocks[2], res.blocks[3], res.blocks[5]
    assert ln1.eps == 1e-5 and ln1.weight is not None and ln1.bias is not None

    def ln(t, m):
        return F.layer_norm(t.permute(0, 2, 3, 1), (8,), m.weight, m.bias, 1e-5).permute(0, 3, 1, 2)

    y = conv1(F.gelu(ln(h, ln1)))
    y = conv2(F.gelu(ln(y, ln2)))
    torch.testing.assert_close(res(h), h + y)

    # Whole bottleneck against a functional rewrite.
    b = cnet.backbone
    z = F.leaky_relu(b[0](x), 0.2)
    z = b[4](b[3](b[2](z)))
    torch.testing.assert_close(b(x), b[5](z))


@torch.no_grad()
def test_controlnet_simple_and_defaults():
    cnet = randomize_(ControlNet(4, c_proj=3, proj_blocks=[2], bottleneck_mode="simple"), seed=7)
    outs = cnet(torch.randn(1, 4, 6, 6))
    _check_outputs(outs, (2,), (1, 3, 6, 6))
    assert cnet.projections[0][0].weight.shape == (4, 4, 1, 1)
    with pytest.raises(ValueError):
        ControlNet(3, proj_blocks=[0], bottleneck_mode="huge")
    with torch.device("meta"):
        default = ControlNet()
    assert default.proj_blocks == RELEASED_PROJ_BLOCKS
    assert len(default.projections) == len(RELEASED_PROJ_BLOCKS)
    assert default.backbone[0][0].padding == (1, 1)
    assert len(default.backbone) == 2 + len(EFFNET_V2_S_STAGES)
