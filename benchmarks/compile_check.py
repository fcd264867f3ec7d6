"""How much precision the ``torch.compile`` path gives away: one Stage C and one Stage B forward, eager and
compiled (as ``Pipeline(compile=True)`` compiles them), each compared with a float32 eager forward of the same
weights on the same inputs.

Seeded random networks (by default the released lite layouts); in ``--dtype bf16`` the
weights are rounded to bf16 first, so the float32 reference differs from the others only in arithmetic. Prints
the largest absolute error of eager and of compiled, per network, and the compilation time::

    python benchmarks/compile_check.py                       # GPU, bf16
    python benchmarks/compile_check.py --device cpu --dtype fp32 --config tiny   # bench configs
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def inputs(network: str, model, device, dtype, gen) -> tuple[tuple, dict]:
    import torch

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    r = torch.tensor([0.7, 0.3], device=device)  # float32, as the pipeline passes it
    if network == "stage_c":
        kw = {
            "clip_text": randn(2, 77, model.clip_txt_mapper.in_features),
            "clip_text_pooled": randn(2, 1, model.clip_txt_pooled_mapper.in_features),
            "clip_img": randn(2, 1, model.clip_img_mapper.in_features),
        }
        return (randn(2, 16, 24, 24), r), kw
    effnet = model.effnet_mapper[0].in_channels
    return (randn(2, 4, 128, 128), r), {
        "effnet": randn(2, effnet, 12, 12),
        "clip": randn(2, 1, model.clip_mapper.in_features),
    }


def build(network: str, config: str, device):
    """A seeded random network built on ``device``: a released layout ("lite", "full") or a configs.json
    configuration."""
    import torch

    from benchmarks.gpu import randomize
    from cascade_studio.networks import StageB, StageC
    from cascade_studio.pipeline.checkpoints import RELEASED

    cls = StageC if network == "stage_c" else StageB
    if config in ("lite", "full"):
        kwargs = RELEASED[(network, config)]
    else:
        from tests.support.configs import bench_config

        kwargs = bench_config(config)[network]
    with torch.device(device):
        return randomize(cls(**kwargs), 0)


def check(network: str, config: str, device, dtype) -> str:
    import torch

    from cascade_studio.pipeline.generate import compiled

    model = build(network, config, device).to(dtype).eval()
    reference_model = copy.deepcopy(model).float()
    gen = torch.Generator(device=device).manual_seed(1)
    args, kwargs = inputs(network, model, device, dtype, gen)
    with torch.inference_mode():
        reference = reference_model(*(a.float() for a in args), **{k: v.float() for k, v in kwargs.items()})
        eager = model(*args, **kwargs).float()
        t0 = time.perf_counter()
        fast = compiled(model)(*args, **kwargs).float()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - t0

    def error(y):
        return (y - reference).abs().max().item()

    return (
        f"{network}: max|error| vs float32: eager {error(eager):.3g}, compiled {error(fast):.3g}; "
        f"compiled vs eager {(fast - eager).abs().max().item():.3g} (max|output| {reference.abs().max().item():.3g}; "
        f"first compiled call {compile_s:.0f} s)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument(
        "--config",
        default="lite",
        help="lite or full (released layouts), or a configuration of shared/bench/configs.json",
    )
    args = parser.parse_args(argv)

    import torch

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name} | torch {torch.__version__} | {args.dtype} | {args.config} networks", flush=True)
    for network in ("stage_c", "stage_b"):
        print(check(network, args.config, device, dtype), flush=True)


if __name__ == "__main__":
    main()
