"""Deterministic random weights for tiny test networks (the demo model set's initialiser)."""

from cascade_studio.pipeline.demo import randomize_

__all__ = ["randomize_"]
