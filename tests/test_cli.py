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


def test_module_entry_point_runs_a_command(tmp_path):
    # Without a command the entry point opens the window (tests/test_window.py covers start-up).
    out = subprocess.run(
        [sys.executable, "-m", "cascade_studio", "--models-dir", str(tmp_path / "none"), "info"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "(does not exist yet)" in out.stdout


def _generate(tmp_path, monkeypatch, demo_cache, *extra):
    monkeypatch.setenv("XDG_CACHE_HOME", str(demo_cache))
    out = tmp_path / "out"
    argv = ["generate", "a cabin in the woods", "--demo", "--size", "256x256", "--steps-c", "3", "--steps-b", "2"]
    return main([*argv, "--out", str(out), *extra]), out


def test_generate_writes_pngs_whose_metadata_regenerates_them(tmp_path, monkeypatch, capsys, demo_cache, demo_models):
    import numpy as np
    import torch
    from PIL import Image

    from cascade_studio.core.metadata import read_metadata
    from cascade_studio.pipeline.device import choose_dtype, precision_name
    from cascade_studio.pipeline.generate import Pipeline
    from cascade_studio.pipeline.models import ModelSet

    status, out = _generate(tmp_path, monkeypatch, demo_cache, "--seed", "40", "--batch", "2", "--count", "2")
    assert status == 0
    captured = capsys.readouterr()
    paths = [line for line in captured.out.splitlines() if line]
    assert len(paths) == 4 and sorted(paths) == sorted(str(p) for p in out.glob("*.png"))
    assert "demo weights" in captured.err and "noise, not pictures" in captured.err

    meta = {p: read_metadata(p) for p in paths}
    assert sorted(m.request.seed for m in meta.values()) == [40, 41, 42, 43]
    assert all(m.model == "demo" for m in meta.values())
    path, first = next((p, m) for p, m in meta.items() if m.request.seed == 42)
    # Seed 42 opened the second run of two images: the recorded request, run in a batch of two again at the
    # precision `generate` chose (auto), gives exactly these pixels (alone it may differ by one level: see
    # test_pipeline).
    dtype = choose_dtype("auto", torch.device("cpu"))
    assert (first.extra["device"], first.extra["precision"]) == ("cpu", precision_name(dtype))
    again = Pipeline(ModelSet(demo_models, dtype=dtype)).run(first.request.with_(batch_size=2))[0]
    assert np.array_equal(np.asarray(Image.open(path)), again.pixels)


def test_generate_cancelled_during_stage_c_writes_no_file(tmp_path, monkeypatch, demo_cache):
    import cascade_studio.cli as cli

    def interrupt(event):
        if event.stage == "c" and event.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_progress", interrupt)
    status, out = _generate(tmp_path, monkeypatch, demo_cache)
    assert status == 130
    assert list(out.iterdir()) == []


def test_generate_compile_runs_the_networks_through_torch_compile(tmp_path, monkeypatch, capsys, demo_cache):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # a compilation earlier in this process must not stand in for this one
    quick = ("--steps-c", "1", "--steps-b", "1")
    graphs = counters["stats"]["unique_graphs"]
    assert _generate(tmp_path / "eager", monkeypatch, demo_cache, *quick)[0] == 0
    assert counters["stats"]["unique_graphs"] == graphs  # without the flag nothing is compiled
    assert "compiled" not in capsys.readouterr().err
    status, out = _generate(tmp_path / "compiled", monkeypatch, demo_cache, *quick, "--compile", "--count", "2")
    assert status == 0 and len(list(out.glob("*.png"))) == 2
    # Stage C and Stage B each compiled once: the second image reused them.
    assert counters["stats"]["unique_graphs"] - graphs == 2
    assert "compiled (torch.compile" in capsys.readouterr().err


def test_generate_without_weights_names_the_files_and_the_way_out(tmp_path, capsys):
    status = main(["--models-dir", str(tmp_path), "generate", "a cat", "--out", str(tmp_path / "o")])
    assert status == 2
    err = capsys.readouterr().err
    assert "stage_c_lite_bf16.safetensors" in err and "--demo" in err


def test_generate_rejects_bad_arguments(tmp_path, capsys):
    assert main(["generate", "x", "--size", "1024x1024", "--steps-c", "0", "--demo"]) == 2
    assert "stage_c.steps" in capsys.readouterr().err
    assert main(["generate", "x", "--image", "a.png", "--variation", "b.png"]) == 2
    assert main(["generate", "x", "--image", str(tmp_path / "missing.png"), "--demo"]) == 2
    assert "image file not found" in capsys.readouterr().err


def test_info_recognises_the_clip_encoders(demo_models, capsys):
    assert main(["--models-dir", str(demo_models), "info"]) == 0
    out = capsys.readouterr().out
    assert "text_encoder/model.safetensors (6.4 MB): CLIP text encoder (transformers format)" in out
    assert "ViT-L-14-openai.safetensors (551.6 KB): CLIP image encoder (open_clip format)" in out


def test_info_and_inspect_describe_lora_files(demo_models, tmp_path, capsys):
    import numpy as np
    from safetensors.numpy import save_file

    assert main(["--models-dir", str(demo_models), "info"]) == 0
    assert "lora/demo-style.safetensors" in (out := capsys.readouterr().out)
    assert "LoRA (reference layout, changes Stage C), F32" in out
    kohya = tmp_path / "ink-lite.safetensors"
    stem = "lora_prior_unet_down_blocks_1_5_attention_attn_to_q"
    save_file({f"{stem}.lora_down.weight": np.zeros((4, 1536), np.float32)}, str(kohya))
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": np.zeros((4, 640), np.float32)}, str(sdxl))
    assert main(["inspect", str(kohya)]) == 0
    assert "LoRA (kohya layout, made for Stage C lite, changes Stage C)" in capsys.readouterr().out
    assert main(["inspect", str(sdxl)]) == 1
    assert "unusable: LoRA" in (out := capsys.readouterr().out) and "not for Stable Cascade" in out
