"""The import-layer contracts in pyproject.toml hold (checked by import-linter)."""

import logging
import os

from importlinter.cli import lint_imports

from tests.conftest import ROOT


def test_import_contracts_are_kept(monkeypatch):
    monkeypatch.chdir(ROOT)
    # import-linter configures logging with disable_existing_loggers, which would silence our modules' loggers
    # for every later test in this process: put each logger's flag back.
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    disabled = {logger: logger.disabled for logger in loggers if isinstance(logger, logging.Logger)}
    try:
        assert lint_imports(config_filename=os.fspath(ROOT / "pyproject.toml"), no_cache=True) == 0
    finally:
        for logger, flag in disabled.items():
            logger.disabled = flag


def test_cli_does_not_import_torch_to_start():
    """The command's start-up path stays free of torch (a window will follow the same rule)."""
    import subprocess
    import sys

    code = "import sys, cascade_studio.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
