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


#: the folder under the models dir that holds Stage C LoRA files (``<models dir>/lora/<name>.safetensors``)
LORA_FOLDER = "lora"
LORA_SUFFIX = ".safetensors"


def lora_folder(models_dir: str | Path) -> Path:
    return Path(models_dir).expanduser() / LORA_FOLDER


def list_loras(models_dir: str | Path) -> list[str]:
    """The names (file stems) of the LoRA files in ``<models_dir>/lora/``, sorted; [] when there is no folder."""
    folder = lora_folder(models_dir)
    return sorted(p.stem for p in folder.glob(f"*{LORA_SUFFIX}") if p.is_file()) if folder.is_dir() else []


def lora_candidates(name: str, models_dir: str | Path) -> list[Path]:
    """Where the LoRA ``name`` may be, in order: an absolute path is itself; a name is
    ``<models_dir>/lora/<name>.safetensors`` (unless it already ends so: a stem may hold dots, "style.v2"); a
    name with a suffix is also tried as given under the LoRA folder, then relative to the working folder."""
    given = Path(name).expanduser()
    if given.is_absolute():
        return [given]
    folder = lora_folder(models_dir)
    candidates = [] if given.suffix.lower() == LORA_SUFFIX else [folder / f"{name}{LORA_SUFFIX}"]
    if given.suffix:
        candidates += [folder / given, given]
    return candidates


def find_lora_file(name: str, models_dir: str | Path) -> Path | None:
    """The first of :func:`lora_candidates` that is a file, or None."""
    return next((path for path in lora_candidates(name, models_dir) if path.is_file()), None)
