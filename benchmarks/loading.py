"""Peak memory and time of loading a checkpoint: our loader against the usual safetensors route.

Writes the `medium` Stage C of shared/bench/configs.json (random weights, ~520 MB fp32) once,
then loads it in fresh child processes and prints how much the peak RSS (VmHWM) grew.

    .venv/bin/python benchmarks/loading.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import proc_status_mib  # noqa: E402


def child(method: str, path: str) -> None:
    import torch

    from cascade_studio.pipeline.checkpoints import load_network

    torch.set_num_threads(2)
    if method == "write":
        from cascade_studio.networks import StageC
        from cascade_studio.pipeline.checkpoints import save_network
        from tests.support.configs import bench_config

        kwargs = bench_config("medium")["stage_c"]
        save_network(StageC(**kwargs), path, "stage_c", kwargs)
        return
    base = proc_status_mib("VmHWM")
    start = time.perf_counter()
    if method == "ours":
        module = load_network(path).module
    else:  # the common route: build the module normally, load_file (memory-mapped), load_state_dict
        from safetensors.torch import load_file

        from cascade_studio.networks import StageC
        from tests.support.configs import bench_config

        module = StageC(**bench_config("medium")["stage_c"])
        module.load_state_dict(load_file(path))
    seconds = time.perf_counter() - start
    size = sum(t.numel() * t.element_size() for t in module.state_dict().values()) / 2**20
    print(f"{method}\t{seconds:.2f}\t{proc_status_mib('VmHWM') - base:.0f}\t{size:.0f}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stage_c_medium.safetensors"
        subprocess.run([sys.executable, __file__, "--child", "write", str(path)], check=True)
        print(f"file: {path.name}, {path.stat().st_size / 2**20:.0f} MiB")
        print(f"{'loader':<28} {'seconds':>8} {'peak RSS growth MiB':>20} {'weights MiB':>12}")
        for method, label in (("ours", "ours (load_network)"), ("library", "StageC() + load_file")):
            out = subprocess.run(
                [sys.executable, __file__, "--child", method, str(path)], check=True, capture_output=True, text=True
            ).stdout.split()
            print(f"{label:<28} {out[1]:>8} {out[2]:>20} {out[3]:>12}")


if __name__ == "__main__":
    main()
