"""Tiny and medium network configurations from the shared benchmark file."""

from __future__ import annotations

import json
from pathlib import Path

BENCH_CONFIGS = Path(__file__).resolve().parents[2].parent / "shared" / "bench" / "configs.json"


def bench_config(name: str) -> dict:
    return json.loads(BENCH_CONFIGS.read_text())["configs"][name]
