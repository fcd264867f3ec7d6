"""EfficientNetV2 features and the Stage C image encoder (reference ``modules/effnet.py``).

The reference takes ``torchvision.models.efficientnet_v2_s().features`` as its backbone. This is a
plain-torch rebuild of that network whose ``state_dict`` keys, shapes and computation match
torchvision's (stem ``0.*``, stages ``1.*`` … ``6.*`` of blocks with an inner ``block``
Sequential, squeeze-excitation ``fc1``/``fc2``, final 1×1 conv ``7.*``), so the released
checkpoints load strictly. The stage table is a parameter so tests can build tiny variants.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

# (block type 'fused' | 'mb', expand ratio, kernel, stride, c_in, c_out, number of layers)
StageSpec = tuple[str, float, int, int, int, int, int]

EFFNET_V2_S_STAGES: tuple[StageSpec, ...] = (
    ("fused", 1, 3, 1, 24, 24, 2),
    ("fused", 4, 3, 2, 24, 48, 4),
    ("fused", 4, 3, 2, 48, 64, 4),
    ("mb", 4, 3, 2, 64, 128, 6),
    ("mb", 6, 3, 1, 128, 160, 9),
    ("mb", 6, 3, 2, 160, 256, 15),
)
EFFNET_V2_S_STEM_CHANNELS = 24
EFFNET_V2_S_LAST_CHANNELS = 1280
BATCHNORM_EPS = 1e-3  # torchvision's EfficientNetV2 convention

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """``effnet_preprocess``: ImageNet mean/std normalisation of a [0, 1] RGB batch (B, 3, H, W)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Channel rounding used by torchvision's ``_MBConvConfig.adjust_channels`` (width_mult 1)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvNormAct(nn.Sequential):
    """Conv (no bias) → BatchNorm(eps 1e-3) [→ SiLU]; keys ``0.weight``, ``1.*`` like torchvision."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
        padding: int | None = None,
    ):
        if padding is None:
            padding = (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=BATCHNORM_EPS),
        ]
        if activation:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, c: int, c_squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c_squeeze, kernel_size=1)
        self.fc2 = nn.Conv2d(c_squeeze, c, kernel_size=1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * s


class FusedMBConv(nn.Module):
    def __init__(self, expand_ratio: float, kernel: int, stride: int, c_in: int, c_out: int):
        super().__init__()
        if not 1 <= stride <= 2:
            raise ValueError(f"illegal stride {stride}")
        self.use_residual = stride == 1 and c_in == c_out
        c_mid = _make_divisible(c_in * expand_ratio)
        if c_mid != c_in:
            layers = [
                ConvNormAct(c_in, c_mid, kernel, stride=stride),
                ConvNormAct(c_mid, c_out, 1, activation=False),
            ]
        else:
            layers = [ConvNormAct(c_in, c_out, kernel, stride=stride)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class MBConv(nn.Module):
    def __init__(self, expand_ratio: float, kernel: int, stride: int, c_in: int, c_out: int):
        super().__init__()
        if not 1 <= stride <= 2:
            raise ValueError(f"illegal stride {stride}")
        self.use_residual = stride == 1 and c_in == c_out
        c_mid = _make_divisible(c_in * expand_ratio)
        layers: list[nn.Module] = []
        if c_mid != c_in:
            layers.append(ConvNormAct(c_in, c_mid, 1))
        layers += [
            ConvNormAct(c_mid, c_mid, kernel, stride=stride, groups=c_mid),
            SqueezeExcitation(c_mid, max(1, c_in // 4)),
            ConvNormAct(c_mid, c_out, 1, activation=False),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


_BLOCKS = {"fused": FusedMBConv, "mb": MBConv}


class EfficientNetV2Features(nn.Sequential):
    """``efficientnet_v2_s().features`` with a configurable stage table.

    ``in_channels``/``stem_padding`` configure the stem conv; the ControlNets with c_in != 3 use
    an unpadded stem (``Conv2d(c_in, 24, 3, stride=2, bias=False)``). Stochastic depth is omitted:
    it has no parameters and is the identity at inference.
    """

    def __init__(
        self,
        stages: Sequence[StageSpec] = EFFNET_V2_S_STAGES,
        stem_channels: int | None = None,
        last_channels: int = EFFNET_V2_S_LAST_CHANNELS,
        in_channels: int = 3,
        stem_padding: bool = True,
    ):
        stages = [tuple(s) for s in stages]
        if not stages:
            raise ValueError("the stage table must not be empty")
        if stem_channels is None:
            stem_channels = stages[0][4]
        layers: list[nn.Module] = [
            ConvNormAct(in_channels, stem_channels, 3, stride=2, padding=1 if stem_padding else 0)
        ]
        c_prev = stem_channels
        for kind, expand, kernel, stride, c_in, c_out, num_layers in stages:
            if kind not in _BLOCKS:
                raise ValueError(f"unknown block type {kind!r} (expected 'fused' or 'mb')")
            if c_in != c_prev:
                raise ValueError(f"stage input width {c_in} does not follow the previous width {c_prev}")
            blocks = [
                _BLOCKS[kind](expand, kernel, stride if i == 0 else 1, c_in if i == 0 else c_out, c_out)
                for i in range(num_layers)
            ]
            layers.append(nn.Sequential(*blocks))
            c_prev = c_out
        layers.append(ConvNormAct(c_prev, last_channels, 1))
        super().__init__(*layers)
        self.out_channels = last_channels
        self._init_weights()

    def __getitem__(self, idx):
        # nn.Sequential slices via ``self.__class__(OrderedDict)``, which this constructor can't take.
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class EfficientNetEncoder(nn.Module):
    """Image (ImageNet-normalised, B×3×H×W) → Stage C latent (B×c_latent×H/32×W/32).

    ``forward`` does not normalise; use :func:`imagenet_normalize` on [0, 1] images first.
    """

    def __init__(
        self,
        c_latent: int = 16,
        *,
        stages: Sequence[StageSpec] = EFFNET_V2_S_STAGES,
        stem_channels: int | None = None,
        last_channels: int = EFFNET_V2_S_LAST_CHANNELS,
    ):
        super().__init__()
        self.backbone = EfficientNetV2Features(stages, stem_channels, last_channels)
        self.mapper = nn.Sequential(
            nn.Conv2d(last_channels, c_latent, kernel_size=1, bias=False),
            nn.BatchNorm2d(c_latent, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mapper(self.backbone(x))
