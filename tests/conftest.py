import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """An XDG cache folder holding the demo model set (built once per test session)."""
    from cascade_studio.pipeline.demo import write_demo_models

    cache = tmp_path_factory.mktemp("cache")
    write_demo_models(cache / "cascade-studio" / "demo-models")
    return cache


@pytest.fixture(scope="session")
def demo_models(demo_cache):
    return demo_cache / "cascade-studio" / "demo-models"
