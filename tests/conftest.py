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


@pytest.fixture(autouse=True)
def _no_dangling_qthreads(request):
    """Fail any test that leaves a QThread running (napari's rule): a leaked GPU or I/O thread would
    keep working after its window is gone."""
    from PySide6.QtCore import QThreadPool

    before = {id(t) for t in _live_qthreads()}
    yield
    QThreadPool.globalInstance().waitForDone(5000)
    leaked = [t for t in _live_qthreads() if id(t) not in before]
    if leaked:
        names = ", ".join(t.objectName() or type(t).__name__ for t in leaked)
        pytest.fail(f"test left {len(leaked)} QThread(s) running: {names}")


def _live_qthreads():
    import gc

    from PySide6.QtCore import QThread

    # type() rather than isinstance(): isinstance reads __class__, which some lazy module proxies warn about
    return [obj for obj in gc.get_objects() if issubclass(type(obj), QThread) and _running(obj)]


def _running(thread) -> bool:
    try:
        return thread.isRunning()
    except RuntimeError:  # the C++ object is already deleted
        return False
