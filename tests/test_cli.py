"""`cascade-studio info` and `inspect` tell a user what their weight files hold."""

import subprocess
import sys

from cascade_studio.cli import main
from cascade_studio.pipeline.checkpoints import save_network
from tests.conftest import ROOT
from tests.support.tiny import TINY, build_tiny


def test_info_lists_each_file_with_what_it_holds(tmp_path, capsys):
    network, kwargs = TINY["previewer"]
    save_network(build_tiny("previewer"), tmp_path / "previewer.safetensors", network, kwargs)
    (tmp_path / "controlnet").mkdir()
    (tmp_path / "controlnet" / "canny.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert main(["--models-dir", str(tmp_path), "info"]) == 0
    out = capsys.readouterr().out
    assert f"Weights folder: {tmp_path}" in out
    assert "previewer.safetensors" in out and "Previewer (custom), F32" in out
    assert "controlnet/canny.safetensors" in out and "unusable:" in out


def test_inspect_fails_on_a_pickle_file(tmp_path, capsys):
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"\x80\x02")
    assert main(["inspect", str(bad)]) == 1
    assert "only .safetensors weights are loaded" in capsys.readouterr().out


def test_console_entry_point_runs_without_arguments(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "cascade_studio", "--models-dir", str(tmp_path / "none")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "(does not exist yet)" in out.stdout
