"""One Stage C and one Stage B forward pass on a GPU, ours against diffusers on identical full-size weights.

The step loop of a generation is one network call per step, so this is where a pipeline's GPU time goes. Both
networks are built with the released full layouts (Stage C 3.6B, Stage B 1.56B), seeded random bf16 weights,
and called at the batch a 1024x1024, batch-4 generation with guidance uses (8: conditional and unconditional
halves). Prints milliseconds per forward (best of ``--runs`` after a warm-up) for ours and diffusers, for ours
with the variants named in ``--variants``, and the top operators of one profiled forward of each::

    python benchmarks/gpu_forward.py                       # full, batch 8, 1024x1024
    python benchmarks/gpu_forward.py --variant lite --batch 2 --variants channels_last
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu import SEED, layouts, randomize, sync  # noqa: E402

VARIANTS = (
    "graphs",
    "graphs_split_modulation",
    "split_gelu",
    "split_conv_bias",
    "split_modulation",
    "channels_last",
    "cudnn_benchmark",
)


def inputs(network: str, module, batch: int, size: int, device, dtype) -> dict:
    import torch

    gen = torch.Generator(device=device).manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    r = torch.rand(batch, generator=gen, device=device)
    side_c = math.ceil(size / 42.67)  # Stage C's latent side (24 at 1024)
    if network == "stage_c":
        return {
            "x": randn(batch, 16, side_c, side_c),
            "r": r,
            "clip_text": randn(batch, 77, module.clip_txt_mapper.in_features),
            "clip_text_pooled": randn(batch, 1, module.clip_txt_pooled_mapper.in_features),
            "clip_img": randn(batch, 1, module.clip_img_mapper.in_features),
        }
    return {
        "x": randn(batch, 4, size // 4, size // 4),
        "r": r,
        "effnet": randn(batch, 16, side_c, side_c),
        "clip": randn(batch, 1, module.clip_mapper.in_features),
    }


def call_ours(network: str, module):
    if network == "stage_c":
        return lambda i: module(i["x"], i["r"], i["clip_text"], i["clip_text_pooled"], i["clip_img"])
    return lambda i: module(i["x"], i["r"], i["effnet"], i["clip"])


def call_diffusers(network: str, module):
    if network == "stage_c":
        return lambda i: module(
            i["x"],
            i["r"].to(i["x"].dtype),
            clip_text_pooled=i["clip_text_pooled"],
            clip_text=i["clip_text"],
            clip_img=i["clip_img"],
            return_dict=False,
        )[0]
    return lambda i: module(
        i["x"], i["r"].to(i["x"].dtype), clip_text_pooled=i["clip"], effnet=i["effnet"], return_dict=False
    )[0]


def best_ms(fn, args, device) -> float:
    import torch

    with torch.inference_mode():
        for _ in range(2):
            fn()
        times = []
        for _ in range(args.runs):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    return min(times) * 1000


def profile_table(fn, device, rows: int) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=50)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="full", choices=("lite", "full"))
    parser.add_argument("--batch", type=int, default=8, help="network batch (default 8: batch 4 with guidance)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--networks", default="stage_c,stage_b")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"ours also with: {', '.join(VARIANTS)}")
    parser.add_argument("--profile-rows", type=int, default=18, help="0: no profiles")
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="demo-sized networks (to try the script on a CPU)")
    args = parser.parse_args(argv)

    import torch

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {args.variant}, batch {args.batch}, {args.size}x{args.size}, {dtype}")
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    specs = {net: (name, kw) for name, (net, kw) in layouts(args.variant, args.tiny).items()}
    for network in args.networks.split(","):
        file_name, kwargs = specs[network]
        bench_network(network, file_name, kwargs, variants, args, device, dtype)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_network(network: str, file_name: str, kwargs: dict, variants: list[str], args, device, dtype) -> None:
    import torch

    from cascade_studio.pipeline.checkpoints import NETWORKS

    with torch.device(device):
        ours = randomize(NETWORKS[network].build_class()(**kwargs), SEED).to(dtype)
    data = inputs(network, ours, args.batch, args.size, device, dtype)
    run = call_ours(network, ours)
    rows = {"ours": best_ms(lambda: run(data), args, device)}
    print(f"\n{network} ({file_name}): ours {rows['ours']:.1f} ms", flush=True)
    profiles = {"ours": lambda: run(data)}
    if not args.no_diffusers:
        from tests.support.diffusers_unet import to_diffusers

        with torch.device(device):
            theirs = to_diffusers(ours, kwargs, network[-1]).to(dtype).eval()
        run_theirs = call_diffusers(network, theirs)
        rows["diffusers"] = best_ms(lambda: run_theirs(data), args, device)
        with torch.inference_mode():
            diff = (run(data).float() - run_theirs(data).float()).abs().max().item()
        print(f"  diffusers {rows['diffusers']:.1f} ms (largest difference to ours {diff:.3g})", flush=True)
        profiles["diffusers"] = lambda: run_theirs(data)

    def variant(name: str, make, switch: tuple | None = None) -> None:
        """``rows[name]``: the callable ``make()`` returns, timed with ``switch`` (object, attribute, value) set for
        the while, and its output's largest difference to the default forward's."""
        with torch.inference_mode():
            reference = run(data).float()
        saved = getattr(switch[0], switch[1]) if switch else None
        if switch:
            setattr(*switch)
        try:
            fn = make()
            rows[name] = best_ms(fn, args, device)
            with torch.inference_mode():
                diff = (fn().float() - reference).abs().max().item()
        finally:
            if switch:
                setattr(switch[0], switch[1], saved)
        print(f"  {name} {rows[name]:.1f} ms (vs ours {diff:.3g})", flush=True)

    def eager():
        return lambda: run(data)

    def replayed():
        """The forward captured as one CUDA graph and replayed (as the pipeline runs it on a GPU): the GPU's own
        time, without the CPU's launches."""
        from cascade_studio.pipeline.graphs import GraphedStep

        with torch.inference_mode():
            step = GraphedStep(lambda x, r: run({**data, "x": x, "r": r}))
            step(data["x"], data["r"])  # capture
        return lambda: step(data["x"], data["r"])

    from cascade_studio.networks import kernels, linear
    from cascade_studio.networks.common import ResBlock

    def plain_depthwise(block, x):  # the convolution with its bias (cuDNN adds it in a pass of its own), then the norm
        h = block.depthwise(x).permute(0, 2, 3, 1)
        return torch.nn.functional.layer_norm(h, h.shape[-1:], eps=block.norm.eps)

    split_modulation = (kernels, "RESIDUAL_MODULATION_FUSED", False)
    if "graphs" in variants and device.type == "cuda":
        variant("ours+graphs", replayed)
    if "graphs_split_modulation" in variants and device.type == "cuda":
        variant("ours+graphs+split_modulation", replayed, split_modulation)
    if "split_gelu" in variants:
        variant("ours+split_gelu", eager, (linear, "GPU_GELU_IN_PRODUCT", False))
    if "split_conv_bias" in variants:
        variant("ours+split_conv_bias", eager, (ResBlock, "normed_depthwise", plain_depthwise))
    if "split_modulation" in variants:
        variant("ours+split_modulation", eager, split_modulation)
    if "cudnn_benchmark" in variants and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        rows["ours+cudnn_benchmark"] = best_ms(lambda: run(data), args, device)
        torch.backends.cudnn.benchmark = False
        print(f"  ours+cudnn_benchmark {rows['ours+cudnn_benchmark']:.1f} ms", flush=True)
    if "channels_last" in variants:
        with torch.inference_mode():
            reference = run(data).float()
        ours.to(memory_format=torch.channels_last)
        last = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in data.items()}
        rows["ours+channels_last"] = best_ms(lambda: run(last), args, device)
        with torch.inference_mode():
            diff = (run(last).float() - reference).abs().max().item()
        print(f"  ours+channels_last {rows['ours+channels_last']:.1f} ms (vs ours {diff:.3g})", flush=True)
        ours.to(memory_format=torch.contiguous_format)
    if args.profile_rows:
        for impl, fn in profiles.items():
            print(f"\n  profile, {network}, {impl}:")
            print(profile_table(fn, device, args.profile_rows), flush=True)
    base = rows.get("diffusers")
    if base:
        print(f"summary {network}: " + ", ".join(f"{k} {v:.1f} ms ({v / base:.2f}x)" for k, v in rows.items()))


if __name__ == "__main__":
    main()
