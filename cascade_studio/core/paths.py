"""Where Cascade Studio keeps things on disk by default (no Qt, no torch: every layer may ask)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def default_models_dir() -> Path:
    """$CASCADE_STUDIO_MODELS, else the repository's models/ folder."""
    env = os.environ.get("CASCADE_STUDIO_MODELS")
    if env:
        return Path(env).expanduser()
    return REPO_MODELS


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cascade-studio"


def demo_folder() -> Path:
    """Where `--demo` (command line and window) builds the tiny demo model set."""
    return cache_dir() / "demo-models"
