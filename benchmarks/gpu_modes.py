"""The ControlNet modes at full size on a GPU: inpaint, outpaint, canny and 2x upscale, bf16.

Random weights with the released layouts (the full 3.6B Stage C, which the released ControlNets fit, or
lite, which inpaints by latent blending), the real EfficientNet encoder and the three released ControlNet
layouts, written as a weights folder and run through ``ModelSet`` and ``Pipeline.run`` as the window runs
them. Prints seconds per mode, the method used, peak VRAM, and whether the pixels outside the mask and
its band are unchanged::

    python benchmarks/gpu_modes.py                      # full, 1024x1024
    python benchmarks/gpu_modes.py --variant lite
    python benchmarks/gpu_modes.py --tiny --device cpu  # a quick run of this script without a GPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import table  # noqa: E402
from benchmarks.gpu import SEED, build_weights, full_kwargs, randomize, sync  # noqa: E402


def write_extra(folder: Path, tiny: bool, device) -> None:
    """The EfficientNet encoder and the three ControlNets (released layouts, or the demo's tiny ones)."""
    import torch

    from cascade_studio.pipeline.checkpoints import NETWORKS, RELEASED, save_network
    from cascade_studio.pipeline.demo import DEMO_NETWORKS

    files = {"effnet_encoder.safetensors": ("effnet", "released")}
    files.update({f"controlnet/{kind}.safetensors": ("controlnet", kind) for kind in ("inpainting", "canny")})
    files["controlnet/super_resolution.safetensors"] = ("controlnet", "super_resolution")
    for i, (name, (network, variant)) in enumerate(files.items()):
        kwargs = DEMO_NETWORKS[name][1] if tiny else RELEASED[(network, variant)]
        kwargs = full_kwargs(network, kwargs)
        with torch.device(device):
            module = randomize(NETWORKS[network].build_class()(**kwargs), SEED + 20 + i)
        save_network(module, folder / name, network, kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="full", choices=("lite", "full"))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from cascade_studio.core.request import GenerationRequest, StageSettings
    from cascade_studio.pipeline.generate import Pipeline
    from cascade_studio.pipeline.models import ModelSet

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    side = args.size
    rng = np.random.default_rng(0)
    source = torch.from_numpy(rng.random((3, side, side), dtype=np.float32))
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4 : side // 2, side // 4 : 3 * side // 4] = 255
    small = source[:, : side // 2, : side // 2].contiguous()
    modes = {
        "inpaint": ({"mask_image": "mask.png", "source_image": "src.png"}, {"mask_image": mask}, source, side),
        "outpaint": ({"source_image": "src.png", "outpaint": (0, 0, 256, 0)}, {}, source, side),
        "canny": ({"control_image": "src.png"}, {"control_image": source}, None, side),
        "upscale": ({"source_image": "small.png"}, {}, small, side),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="cascade_bench_modes_") as tmp:
        folder = Path(tmp)
        dtype = torch.bfloat16
        print(f"{name}: writing {args.variant} weights", flush=True)
        build_weights(args.variant, folder, args, device, dtype)  # (its diffusers copies are dropped at once)
        write_extra(folder, args.tiny, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        models = ModelSet(folder, variant=args.variant, device=device, dtype=dtype, memory="resident")
        pipeline = Pipeline(models, preview_every=1)
        for mode, (fields, arrays, src, size) in modes.items():
            stage_c = StageSettings(20, 1.0 if mode == "upscale" else 4.0, 2.0)
            request = GenerationRequest(
                "a red balloon over the hills",
                seed=SEED,
                width=size,
                height=size,
                mode=mode,
                stage_c=stage_c,
                stage_b=StageSettings(10, 1.1, 1.0),
                variant=args.variant,
                strength=1.0,
                **fields,
            )
            plan = pipeline.plan(request)
            for _run in ("warm-up", "timed"):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sync(device)
                start = time.perf_counter()
                images = pipeline.run(request, on_progress=lambda e: None, source_image=src, **arrays)
                sync(device)
                seconds = time.perf_counter() - start
            pixels = images[0].pixels
            kept = "-"
            if mode == "inpaint":
                from cascade_studio.core.inpaint import effective_mask

                outside = effective_mask(mask, request.mask_grow) < 1
                band = request.mask_feather
                keep = outside.copy()
                ys, xs = np.nonzero(~outside)
                keep[max(0, ys.min() - band) : ys.max() + band + 1, max(0, xs.min() - band) : xs.max() + band + 1] = 0
                original = (source.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                kept = "yes" if np.array_equal(pixels[keep], original[keep]) else "NO"
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            rows.append(
                [
                    mode,
                    plan.method or "-",
                    f"{pixels.shape[1]}x{pixels.shape[0]}",
                    f"{seconds:.2f}",
                    f"{peak:.1f}",
                    kept,
                ]
            )
            print(f"  {mode}: {seconds:.2f}s ({plan.note or 'ControlNet'})", flush=True)
    print(f"\n{name}, {args.variant}, bf16, Stage C 20 steps, Stage B 10 steps, one run after a warm-up")
    print(table(["mode", "method", "output", "seconds", "peak VRAM GiB", "outside mask+band unchanged"], rows))


if __name__ == "__main__":
    main()
