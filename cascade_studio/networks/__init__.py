"""Stable Cascade networks as plain PyTorch modules (no I/O, no device logic)."""

from .controlnet import ControlNet
from .effnet import EfficientNetEncoder
from .previewer import Previewer
from .stage_a import StageA
from .stage_b import StageB
from .stage_c import StageC

__all__ = ["ControlNet", "EfficientNetEncoder", "Previewer", "StageA", "StageB", "StageC"]
