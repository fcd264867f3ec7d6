"""Time one forward pass of our Stage C, Stage B and Stage A against diffusers' on identical weights.

Builds the ``medium`` benchmark networks (/work/shared/bench/configs.json) with the same deterministic
random weights, writes them once as safetensors (ours through ``save_network``, diffusers' naming through
the test-support converters), then runs every (network, implementation) pair in its own child process so
that the timings and peak RSS of one never include the other's::

    .venv/bin/python benchmarks/networks.py                 # 1024x1024, all three networks
    .venv/bin/python benchmarks/networks.py --size 512 --only c --runs 2

Each child sets 2 torch threads and float32, loads its weights from the file, builds fixed seeded inputs
(the classifier-free-guidance batch of 2 for Stage C/B, one image for Stage A), does a warm-up forward
pass and then ``--runs`` timed ones under ``torch.inference_mode()``. It reports the best time, its peak
RSS (``ru_maxrss``, which includes loading) and its RSS right before the first forward pass, and saves its
output so that the parent can check that both implementations agree.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_model, mib, proc_status_mib, table  # noqa: E402

CONFIG = "medium"
THREADS = 2
SEED = 0
NETWORKS = {"c": ("stage_c", "Stage C"), "b": ("stage_b", "Stage B"), "a": ("stage_a", "Stage A decode")}
IMPLS = ("ours", "diffusers")
#: Stage A scale factor used by both implementations (the configs' "about" asks for 0.43 in both).
STAGE_A_SCALE = 0.43
#: safetensors metadata key holding the diffusers constructor keywords in the diffusers-named files.
META_DIFFUSERS = "benchmark.diffusers_config"


def current_rss_mib() -> float:
    import psutil

    return mib(psutil.Process().memory_info().rss)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def latent_sizes(size: int) -> tuple[int, int]:
    """(Stage C latent side, Stage B / Stage A latent side) for a ``size`` x ``size`` image."""
    return math.ceil(size / 42.67), size // 4


# --------------------------------------------------------------------------------------------- parent


def write_weights(folder: Path, only: list[str]) -> None:
    """Build each network once with seeded random weights and write it in both namings."""
    from safetensors.torch import save_file

    from cascade_studio.pipeline.checkpoints import NETWORKS as KINDS
    from cascade_studio.pipeline.checkpoints import save_network
    from cascade_studio.pipeline.demo import randomize_
    from tests.support.configs import bench_config
    from tests.support.diffusers_unet import convert_state_dict, stage_b_config, stage_c_config
    from tests.support.diffusers_vqgan import paella_kwargs, to_diffusers_state_dict

    cfg = bench_config(CONFIG)
    for key in only:
        network = NETWORKS[key][0]
        kwargs = dict(cfg[network])
        if network == "stage_a":
            kwargs["scale_factor"] = STAGE_A_SCALE
        t0 = time.perf_counter()
        model = randomize_(KINDS[network].build_class()(**kwargs), SEED)
        ours = save_network(model, folder / f"{network}_ours.safetensors", network, kwargs)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if network == "stage_a":
            theirs_state, theirs_config = to_diffusers_state_dict(state), paella_kwargs(model)
        else:
            theirs_state = convert_state_dict(state)
            theirs_config = stage_c_config(kwargs) if network == "stage_c" else stage_b_config(kwargs)
        theirs = folder / f"{network}_diffusers.safetensors"
        save_file(theirs_state, str(theirs), metadata={META_DIFFUSERS: json.dumps(theirs_config)})
        params = sum(p.numel() for p in model.parameters())
        print(
            f"  wrote {NETWORKS[key][1]}: {params / 1e6:.1f}M parameters, "
            f"{mib(ours.stat().st_size):.0f} MiB per file ({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
        del model, state, theirs_state


def run_child(key: str, impl: str, weights: Path, folder: Path, args: argparse.Namespace) -> dict:
    result = folder / f"{NETWORKS[key][0]}_{impl}.json"
    output = folder / f"{NETWORKS[key][0]}_{impl}_out.safetensors"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        key,
        impl,
        "--weights",
        str(weights),
        "--result",
        str(result),
        "--output",
        str(output),
        "--size",
        str(args.size),
        "--runs",
        str(args.runs),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"child {key}/{impl} failed with exit status {proc.returncode}")
    info = json.loads(result.read_text())
    info["output"] = output
    info["wall_s"] = time.perf_counter() - t0
    print(
        f"  {NETWORKS[key][1]:<15} {impl:<9} best {info['best_s']:.3f}s of {info['times_s']} "
        f"(import {info['import_s']:.1f}s, load {info['load_s']:.1f}s, child wall {info['wall_s']:.1f}s)",
        flush=True,
    )
    return info


def compare(ours: Path, theirs: Path) -> tuple[float, float]:
    """(max |ours - diffusers|, max |diffusers|)."""
    from safetensors.torch import load_file

    a, b = load_file(str(ours))["out"], load_file(str(theirs))["out"]
    if a.shape != b.shape:
        raise SystemExit(f"output shapes differ: ours {tuple(a.shape)}, diffusers {tuple(b.shape)}")
    return (a - b).abs().max().item(), b.abs().max().item()


def parent(args: argparse.Namespace) -> None:
    only = args.only
    c_lat, b_lat = latent_sizes(args.size)
    print(f"Machine: {cpu_model()}, {THREADS} torch threads")
    print(
        f"Config {CONFIG!r} at {args.size}x{args.size}: Stage C x (2,16,{c_lat},{c_lat}), "
        f"Stage B x (2,4,{b_lat},{b_lat}), Stage A z (1,4,{b_lat},{b_lat}); float32, "
        f"1 warm-up + best of {args.runs} forward passes per child process"
    )
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cascade_bench_") as tmp:
        folder = Path(args.workdir) if args.workdir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"Writing weights to {folder}", flush=True)
        # In a child too: Linux carries a process's RSS high-water mark over fork and exec into
        # ru_maxrss, so the parent must stay small until every timing child has been started.
        cmd = [sys.executable, str(Path(__file__).resolve()), "--write-weights", str(folder), "--only", "".join(only)]
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            raise SystemExit("writing the weights failed")
        paths = {(k, i): folder / f"{NETWORKS[k][0]}_{i}.safetensors" for k in only for i in IMPLS}
        results: dict[tuple[str, str], dict] = {}
        print("Running children", flush=True)
        for key in only:
            for impl in IMPLS:
                results[(key, impl)] = run_child(key, impl, paths[(key, impl)], folder, args)

        rows, load_rows = [], []
        for key in only:
            ours, theirs = results[(key, "ours")], results[(key, "diffusers")]
            diff, scale = compare(ours["output"], theirs["output"])
            rows.append(
                [
                    NETWORKS[key][1],
                    f"{ours['best_s']:.3f}",
                    f"{theirs['best_s']:.3f}",
                    f"{ours['best_s'] / theirs['best_s']:.2f}",
                    f"{ours['peak_rss_mib']:.0f}",
                    f"{theirs['peak_rss_mib']:.0f}",
                    f"{diff:.2e} / {scale:.2e}",
                ]
            )
            for impl, info in (("ours", ours), ("diffusers", theirs)):
                load_rows.append(
                    [
                        f"{NETWORKS[key][1]} ({impl})",
                        f"{info['import_s']:.2f}",
                        f"{info['load_s']:.2f}",
                        f"{info['rss_after_import_mib']:.0f}",
                        f"{info['rss_before_forward_mib']:.0f}",
                        f"{info['peak_rss_mib']:.0f}",
                    ]
                )
    print()
    versions = results[(only[0], "diffusers")]
    print(
        f"Machine: {cpu_model()} | torch {versions['torch']} | diffusers {versions['diffusers']} | "
        f"{THREADS} threads | float32 | {args.size}x{args.size} | best of {args.runs} after 1 warm-up"
    )
    print(
        table(
            [
                "network",
                "ours s",
                "diffusers s",
                "ours/diffusers",
                "ours peak RSS MiB",
                "diffusers peak RSS MiB",
                "max|diff| / max|out|",
            ],
            rows,
        )
    )
    print()
    print(
        table(
            ["process", "import s", "load s", "RSS after import MiB", "RSS before 1st forward MiB", "peak RSS MiB"],
            load_rows,
        )
    )
    print(f"\nTotal wall time {time.perf_counter() - t_start:.1f}s")


# ---------------------------------------------------------------------------------------------- child


def make_inputs(key: str, size: int, kwargs: dict) -> dict:
    """Fixed seeded inputs, identical for both implementations (keyword names are ours)."""
    import torch

    g = torch.Generator().manual_seed(SEED)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    c_lat, b_lat = latent_sizes(size)
    if key == "c":
        return {
            "x": randn(2, 16, c_lat, c_lat),
            "r": torch.rand(2, generator=g),
            "clip_text": randn(2, 77, kwargs["c_clip_text"]),
            "clip_text_pooled": randn(2, 1, kwargs["c_clip_text_pooled"]),
            "clip_img": randn(2, 1, kwargs["c_clip_img"]),
        }
    if key == "b":
        return {
            "x": randn(2, 4, b_lat, b_lat),
            "r": torch.rand(2, generator=g),
            "effnet": randn(2, 16, c_lat, c_lat),
            "clip": randn(2, 1, kwargs["c_clip"]),
        }
    return {"z": randn(1, 4, b_lat, b_lat)}


def load_ours(key: str, weights: Path):
    from cascade_studio.pipeline.checkpoints import load_network

    loaded = load_network(weights, dtype=None, expect=NETWORKS[key][0])
    module, kwargs = loaded.module, loaded.identity.kwargs
    if key == "c":
        return module, kwargs, lambda i: module(i["x"], i["r"], i["clip_text"], i["clip_text_pooled"], i["clip_img"])
    if key == "b":
        return module, kwargs, lambda i: module(i["x"], i["r"], i["effnet"], i["clip"])
    return module, kwargs, lambda i: module.decode(i["z"])


def load_diffusers(key: str, weights: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(weights), framework="pt") as f:
        config = json.loads(f.metadata()[META_DIFFUSERS])
    if key == "a":
        from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel

        module = PaellaVQModel(**config)
    else:
        from diffusers import StableCascadeUNet

        module = StableCascadeUNet(**config)
    module.load_state_dict(load_file(str(weights)), strict=True)
    module.eval()
    # Our input keywords, in our naming (c_clip_text ... / c_clip).
    if key == "c":
        kwargs = {
            "c_clip_text": config["clip_text_in_channels"],
            "c_clip_text_pooled": config["clip_text_pooled_in_channels"],
            "c_clip_img": config["clip_image_in_channels"],
        }
        return (
            module,
            kwargs,
            lambda i: (
                module(
                    i["x"],
                    i["r"],
                    clip_text_pooled=i["clip_text_pooled"],
                    clip_text=i["clip_text"],
                    clip_img=i["clip_img"],
                ).sample
            ),
        )
    if key == "b":
        kwargs = {"c_clip": config["clip_text_pooled_in_channels"]}
        return module, kwargs, lambda i: module(i["x"], i["r"], clip_text_pooled=i["clip"], effnet=i["effnet"]).sample
    return module, {}, lambda i: module.decode(i["z"] * STAGE_A_SCALE, force_not_quantize=True).sample


def child(args: argparse.Namespace) -> None:
    key, impl = args.child
    t0 = time.perf_counter()
    import torch

    if impl == "diffusers":
        import diffusers  # noqa: F401 - counted as import time, not load time
    else:
        import cascade_studio.pipeline.checkpoints  # noqa: F401
    import_s = time.perf_counter() - t0
    torch.set_num_threads(THREADS)
    torch.set_default_dtype(torch.float32)
    rss_after_import = current_rss_mib()

    t0 = time.perf_counter()
    _, kwargs, forward = (load_ours if impl == "ours" else load_diffusers)(key, Path(args.weights))
    load_s = time.perf_counter() - t0
    inputs = make_inputs(key, args.size, kwargs)
    rss_before_forward = current_rss_mib()

    times = []
    with torch.inference_mode():
        out = forward(inputs)  # warm-up
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = forward(inputs)
            times.append(time.perf_counter() - t0)

    from safetensors.torch import save_file

    save_file({"out": out.contiguous()}, args.output)
    Path(args.result).write_text(
        json.dumps(
            {
                "best_s": min(times),
                "times_s": [round(t, 3) for t in times],
                "import_s": import_s,
                "load_s": load_s,
                "rss_after_import_mib": rss_after_import,
                "rss_before_forward_mib": rss_before_forward,
                "peak_rss_mib": peak_rss_mib(),
                "vm_hwm_mib": proc_status_mib("VmHWM"),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "diffusers": sys.modules["diffusers"].__version__ if impl == "diffusers" else None,
                "out_shape": list(out.shape),
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (a multiple of 128)")
    parser.add_argument("--runs", type=int, default=3, help="timed forward passes after the warm-up")
    parser.add_argument("--only", default="cba", help="networks to benchmark: c, b, a or several (default cba)")
    parser.add_argument("--workdir", help="keep weights and outputs in this folder instead of a temp folder")
    parser.add_argument("--write-weights", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("NET", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size <= 0 or args.size % 128:
        parser.error(f"--size must be a positive multiple of 128, not {args.size}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not args.only or set(args.only) - set(NETWORKS):
        parser.error(f"--only takes letters from {''.join(NETWORKS)!r}, not {args.only!r}")
    args.only = [k for k in NETWORKS if k in args.only]
    if args.write_weights:
        write_weights(Path(args.write_weights), args.only)
    elif args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
