"""The import-layer contracts in pyproject.toml hold (checked by import-linter)."""

import os

from importlinter.cli import lint_imports

from tests.conftest import ROOT


def test_import_contracts_are_kept(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=os.fspath(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_cli_does_not_import_torch_to_start():
    """The command's start-up path stays free of torch (a window will follow the same rule)."""
    import subprocess
    import sys

    code = "import sys, cascade_studio.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
