"""Stable Cascade on a GPU: our pipeline against diffusers' ``StableCascadeCombinedPipeline`` on identical weights.

Full-size random weights (the released Stage C / Stage B layouts, lite and full; the real Stage A,
Previewer and ViT-bigG-14 text tower), built seeded on the GPU, written as our weights folder (official
file names, read back through ``ModelSet`` and the real loader) and handed to diffusers' modules from the
very same tensors (test-support converters). bf16 for the U-Nets and the text encoder; Stage A runs in
float32 in ours (``ModelSet`` always does) and in bf16 in diffusers (its usual ``torch_dtype``).

Settings, both implementations: 1024x1024 by default, Stage C 20 steps at guidance 4, Stage B 10 steps at
guidance 1.1 (diffusers: ``decoder_guidance_scale=1.1``, which also doubles its decoder batch), seed 0,
batch 1 and 4. Ours runs as the window does (a Previewer image after every Stage C step) and, in the row
``ours-headless``, as ``cascade-studio generate`` does: no previews, like diffusers. ``--impls`` picks our rows
(:data:`ROWS`: the default pipeline and variants of it with one switch changed).

One process, one implementation at a time (the other one's weights freed), so ``peak VRAM`` is that
implementation's weights plus its activations (``torch.cuda.max_memory_allocated``). Stage marks come from
each implementation's step callback after a ``torch.cuda.synchronize()``; a warm-up generation precedes
``--runs`` timed ones and the best total is reported::

    python benchmarks/gpu.py                                   # lite and full, batch 1 and 4, 1024x1024
    python benchmarks/gpu.py --variants lite --batches 1 --size 512
    python benchmarks/gpu.py --tiny --device cpu --size 256    # a quick run of this script without a GPU

Also prints the largest bf16 difference between the two Stage C implementations on one forward pass.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import table  # noqa: E402
from benchmarks.pipeline import BOS_ID, EOS_ID, PAD_ID, hf_tokenizer_from_open_clip  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse, highly detailed"
SEED = 0
STAGE_C = {"steps": 20, "cfg": 4.0, "shift": 2.0}
STAGE_B = {"steps": 10, "cfg": 1.1, "shift": 1.0}
#: Our eager row with each ResBlock's GELU as its own kernel after the product (before the GELU moved into the
#: product's epilogue on GPUs, ``networks/linear.gelu_in_product``).
SPLIT_GELU = "ours-eager-split-gelu"
#: Our default pipeline without previews, as ``cascade-studio generate`` runs it (diffusers makes none either).
HEADLESS = "ours-headless"
#: ``ours-headless`` with each ResBlock's residual add and the TimestepBlock's modulation as two PyTorch ops (before
#: they were one kernel, ``networks/kernels.residual_scale_shift``).
SPLIT_MODULATION = "ours-headless-split-modulation"
#: Our rows' settings, each a change from the default pipeline: no CUDA graphs, no previews,
#: the GELU split from the product, the residual add split from the modulation.
ROWS = {
    "ours": {},
    HEADLESS: {"previews": False},
    "ours-eager": {"graphs": False},
    SPLIT_GELU: {"graphs": False, "gelu": False},
    SPLIT_MODULATION: {"previews": False, "modulation": False},
    "ours-compiled": {"compile": True},
}
DEFAULT_ROWS = ("ours", HEADLESS, "ours-eager", SPLIT_GELU)
#: open_clip's ViT-bigG-14 text tower (the conditioning of every released Stage C / Stage B).
BIGG_TEXT = {
    "embed_dim": 1280,
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1280, "heads": 20, "layers": 32},
}


def full_kwargs(network: str, overrides: dict) -> dict:
    """Every constructor keyword (defaults filled in), as diffusers' config converters need them all."""
    from cascade_studio.pipeline.checkpoints import NETWORKS

    signature = inspect.signature(NETWORKS[network].build_class().__init__)
    kwargs = {
        name: p.default
        for name, p in signature.parameters.items()
        if p.default is not inspect.Parameter.empty and p.kind != p.VAR_KEYWORD
    }
    return {**kwargs, **overrides}


def layouts(variant: str, tiny: bool) -> dict[str, tuple[str, dict]]:
    """our file name -> (network, keywords) for one variant."""
    from cascade_studio.pipeline.checkpoints import RELEASED
    from cascade_studio.pipeline.demo import DEMO_NETWORKS

    if tiny:
        files = {name: spec for name, spec in DEMO_NETWORKS.items() if spec[0] in ("stage_c", "stage_b", "stage_a")}
        files["previewer.safetensors"] = DEMO_NETWORKS["previewer.safetensors"]
        if variant == "full":  # the demo set is lite only; the same tiny networks under the full names
            files = {name.replace("_lite", ""): spec for name, spec in files.items()}
        return {name: (net, full_kwargs(net, kw)) for name, (net, kw) in files.items()}
    suffix = "_lite" if variant == "lite" else ""
    return {
        f"stage_c{suffix}_bf16.safetensors": ("stage_c", full_kwargs("stage_c", RELEASED[("stage_c", variant)])),
        f"stage_b{suffix}_bf16.safetensors": ("stage_b", full_kwargs("stage_b", RELEASED[("stage_b", variant)])),
        "stage_a.safetensors": ("stage_a", full_kwargs("stage_a", {})),
        "previewer.safetensors": ("previewer", full_kwargs("previewer", {})),
    }


def randomize(module, seed: int):
    """Seeded values drawn on the module's own device (fast at 3.6B parameters), scaled by fan-in."""
    import torch

    device = next(module.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=gen)
            else:
                p.normal_(0.0, 0.1, generator=gen)
    return module.eval().requires_grad_(False)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Marks:
    """Stage boundaries from step callbacks, after a device synchronisation."""

    def __init__(self, device) -> None:
        self.device = device
        self.last: dict[str, float] = {}
        self.steps: dict[str, int] = {}

    def step(self, stage: str) -> None:
        sync(self.device)
        self.last[stage] = time.perf_counter()
        self.steps[stage] = self.steps.get(stage, 0) + 1

    def stages(self, start: float, end: float) -> dict:
        c, b = self.last["c"] - start, self.last["b"] - self.last["c"]
        return {
            "c": c,
            "b": b,
            "a": end - self.last["b"],
            "total": end - start,
            "c_its": self.steps["c"] / c,
            "b_its": self.steps["b"] / b,
        }


# ------------------------------------------------------------------------------------------ weights


def build_weights(variant: str, folder: Path, args, device, dtype):
    """Write our weights folder; return diffusers' modules holding the same values."""
    import torch

    from cascade_studio.pipeline.checkpoints import NETWORKS, save_network
    from cascade_studio.pipeline.conditioning import build_text_tower, save_clip
    from cascade_studio.pipeline.demo import DEMO_TEXT_CLIP
    from cascade_studio.pipeline.weights import TEXT_ENCODER_FILE
    from tests.support.diffusers_unet import to_diffusers
    from tests.support.diffusers_vqgan import to_diffusers_paella
    from tests.support.hf_clip import hf_text_model

    theirs: dict = {}
    for i, (name, (network, kwargs)) in enumerate(layouts(variant, args.tiny).items()):
        t0 = time.perf_counter()
        with torch.device(device):
            module = randomize(NETWORKS[network].build_class()(**kwargs), SEED + i)
        keep_dtype = dtype if network in ("stage_c", "stage_b") else torch.float32
        module.to(keep_dtype)
        save_network(module, folder / name, network, kwargs)
        with torch.device(device):
            if network in ("stage_c", "stage_b"):
                theirs[network] = to_diffusers(module, kwargs, network[-1]).to(dtype)
                theirs[network + "_ours"] = module  # kept for the forward-pass comparison, then freed
            elif network == "stage_a":
                theirs["vqgan"] = to_diffusers_paella(module).to(dtype)
        params = sum(p.numel() for p in module.parameters())
        print(f"  {name}: {params / 1e6:.0f}M parameters ({time.perf_counter() - t0:.1f}s)", flush=True)
        del module

    t0 = time.perf_counter()
    clip_cfg = DEMO_TEXT_CLIP if args.tiny else BIGG_TEXT
    with torch.device(device):
        tower = randomize(build_text_tower(clip_cfg), SEED + 10)
    save_clip({k: v.to(dtype) for k, v in tower.state_dict().items()}, folder / TEXT_ENCODER_FILE, clip_cfg)
    text = clip_cfg["text_cfg"]
    hf_config = {
        "vocab_size": text["vocab_size"],
        "hidden_size": text["width"],
        "intermediate_size": text["width"] * 4,
        "num_attention_heads": text["heads"],
        "num_hidden_layers": text["layers"],
        "max_position_embeddings": text["context_length"],
        "projection_dim": clip_cfg["embed_dim"],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }
    with torch.device(device):
        theirs["text_encoder"] = hf_text_model(
            tower, hf_config, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
        ).to(dtype)
    print(f"  text encoder: {sum(p.numel() for p in tower.parameters()) / 1e6:.0f}M ({time.perf_counter() - t0:.1f}s)")
    del tower
    theirs["tokenizer"] = hf_tokenizer_from_open_clip(folder / "tokenizer")
    return theirs


def compare_stage_c(ours, theirs, device, dtype, tiny: bool) -> str:
    """One Stage C forward in bf16 from each implementation on identical inputs, each compared with a float32
    forward of the same (bf16-valued) weights: how much precision each bf16 path gives away."""
    import copy

    import torch

    from cascade_studio.networks import linear

    gen = torch.Generator(device=device).manual_seed(1)
    side = 24 if not tiny else 8

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    x = randn(2, 16, side, side)
    r = torch.tensor([0.7, 0.3], device=device).to(dtype)  # diffusers' pipeline passes r in the model dtype
    text = randn(2, 77, ours.clip_txt_mapper.in_features)
    pooled = randn(2, 1, ours.clip_txt_pooled_mapper.in_features)
    image = randn(2, 1, ours.clip_img_mapper.in_features)
    with torch.inference_mode():
        reference = copy.deepcopy(ours).float()(x.float(), r.float(), text.float(), pooled.float(), image.float())
        a = ours(x, r.float(), text, pooled, image).float()
        linear.GPU_GELU_IN_PRODUCT = False
        split = ours(x, r.float(), text, pooled, image).float()
        linear.GPU_GELU_IN_PRODUCT = True
        b = theirs(x, r, clip_text=text, clip_text_pooled=pooled, clip_img=image, return_dict=False)[0].float()

    def error(y):
        return (y - reference).abs().max().item()

    return (
        f"bf16 vs float32 on the same weights, max|error|: ours {error(a):.3g} (GELU split from the product: "
        f"{error(split):.3g}), diffusers {error(b):.3g} "
        f"(max|output| {reference.abs().max().item():.3g})"
    )


# ------------------------------------------------------------------------------------------ running


def run_diffusers(modules: dict, args, device, dtype) -> dict[int, dict]:
    import torch
    from diffusers import DDPMWuerstchenScheduler, StableCascadeCombinedPipeline

    pipe = StableCascadeCombinedPipeline(
        tokenizer=modules["tokenizer"],
        text_encoder=modules["text_encoder"],
        decoder=modules["stage_b"],
        scheduler=DDPMWuerstchenScheduler(),
        vqgan=modules["vqgan"],
        prior_prior=modules["stage_c"],
        prior_text_encoder=modules["text_encoder"],
        prior_tokenizer=modules["tokenizer"],
        prior_scheduler=DDPMWuerstchenScheduler(),
    )
    for sub in (pipe, pipe.prior_pipe, pipe.decoder_pipe):
        sub.set_progress_bar_config(disable=True)

    def generate(batch: int) -> dict:
        marks = Marks(device)

        def on_step(stage):
            def callback(_pipe, _i, _t, _tensors):
                marks.step(stage)
                return {}

            return callback

        sync(device)
        start = time.perf_counter()
        images = pipe(
            prompt=PROMPT,
            height=args.size,
            width=args.size,
            num_images_per_prompt=batch,
            prior_num_inference_steps=STAGE_C["steps"],
            prior_guidance_scale=STAGE_C["cfg"],
            num_inference_steps=STAGE_B["steps"],
            decoder_guidance_scale=STAGE_B["cfg"],
            generator=torch.Generator(device=device).manual_seed(SEED),
            output_type="pt",
            prior_callback_on_step_end=on_step("c"),
            callback_on_step_end=on_step("b"),
        ).images
        sync(device)
        result = marks.stages(start, time.perf_counter())
        result["finite"] = bool(torch.isfinite(images).all())
        return result

    return timed({"diffusers": generate}, args, device)["diffusers"]


def run_ours(folder: Path, variant: str, args, device, dtype) -> dict:
    """Our rows (``--impls``, and with ``--compile`` ``ours-compiled``: torch.compile + graphs) on the same loaded
    models and one pipeline, whose CUDA graphs are kept from one image to the next as in the app; whether the pixels
    of rows that must agree are identical; with ``--lora``, a LoRA run; the Stage A checks."""
    import numpy as np
    import torch

    from cascade_studio.core.request import GenerationRequest, StageSettings
    from cascade_studio.networks import kernels, linear
    from cascade_studio.pipeline.generate import Pipeline
    from cascade_studio.pipeline.models import ModelSet

    t0 = time.perf_counter()
    models = ModelSet(folder, variant=variant, device=device, dtype=dtype, memory="resident")
    for role in models.check("text"):
        models.get(role)
    sync(device)
    load_s = time.perf_counter() - t0
    pipeline = Pipeline(models, preview_every=1)
    pixels: dict[tuple[str, int], np.ndarray] = {}

    def generate(batch: int, impl: str, prompt: str = PROMPT) -> dict:
        marks = Marks(device)
        request = GenerationRequest(
            prompt,
            seed=SEED,
            width=args.size,
            height=args.size,
            batch_size=batch,
            stage_c=StageSettings(**STAGE_C),
            stage_b=StageSettings(**STAGE_B),
            variant=variant,
        )
        row = ROWS[impl]
        pipeline.cuda_graphs = row.get("graphs", True)
        pipeline.compile = row.get("compile", False)
        pipeline.preview_every = 1 if row.get("previews", True) else 0
        linear.GPU_GELU_IN_PRODUCT = row.get("gelu", True)
        kernels.RESIDUAL_MODULATION_FUSED = row.get("modulation", True)
        sync(device)
        start = time.perf_counter()
        images = pipeline.run(request, on_progress=lambda event: event.note or marks.step(event.stage))
        sync(device)
        linear.GPU_GELU_IN_PRODUCT = kernels.RESIDUAL_MODULATION_FUSED = True
        result = marks.stages(start, time.perf_counter())
        result["finite"] = all(bool(torch.from_numpy(i.pixels).float().std() > 0) for i in images)
        pixels[impl, batch] = np.stack([i.pixels for i in images])
        return result

    out: dict = {"load_s": load_s}
    out.update(timed({impl: lambda b, i=impl: generate(b, i) for impl in args.impls}, args, device))

    def compare(name: str, a: str, b: str, exact: bool) -> None:
        """Pixels of rows ``a`` and ``b`` per batch: identical (``exact``) or their largest difference."""
        if a in args.impls and b in args.impls:
            out[name] = {
                n: bool(np.array_equal(pixels[a, n], pixels[b, n]))
                if exact
                else int(np.abs(pixels[a, n].astype(int) - pixels[b, n]).max())
                for n in args.batches
            }

    compare("graphs_identical", "ours", "ours-eager", exact=True)
    compare("headless_identical", "ours", HEADLESS, exact=True)
    compare("split_gelu_vs_eager", SPLIT_GELU, "ours-eager", exact=False)
    compare("split_modulation_vs_headless", SPLIT_MODULATION, HEADLESS, exact=False)
    out["stage_a"] = stage_a_check(models, device, dtype, args.size)
    if args.lora and {"ours", "ours-eager"} <= set(args.impls):
        out["lora"] = lora_check(models, folder, generate, pixels)
    if args.compile:  # last: the compilations take the longest
        out.update(timed({"ours-compiled": lambda b: generate(b, "ours-compiled")}, args, device))
        compare("compiled_vs_eager", "ours-compiled", "ours-eager", exact=False)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            generate(max(args.batches), "ours-eager")
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(f"  profile of one eager generation, batch {max(args.batches)}:")
        print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
    return out


def lora_check(models, folder: Path, generate, pixels) -> dict:
    """A random reference-format LoRA (rank 4 over every attention, as the reference trainer writes) at batch 1:
    time with graphs, graphed pixels equal to eager ones, and different from the images without it."""
    import numpy as np
    from safetensors.torch import save_file

    from cascade_studio.pipeline.lora import reference_lora_tensors

    tensors = reference_lora_tensors(models.get("stage_c"), rank=4, seed=7, std=0.02)
    (folder / "lora").mkdir(exist_ok=True)
    save_file(
        {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
        str(folder / "lora" / "bench.safetensors"),
    )
    prompt = f"{PROMPT} <lora:bench:1>"
    plain = pixels.get(("ours", 1))
    generate(1, "ours", prompt)  # warm-up (capture)
    graphed = generate(1, "ours", prompt)
    lora_graphed = pixels["ours", 1]
    generate(1, "ours-eager", prompt)
    result = {
        "total_s": round(graphed["total"], 3),
        "graphed_equals_eager": bool(np.array_equal(lora_graphed, pixels["ours-eager", 1])),
        "differs_from_plain": None if plain is None else bool(not np.array_equal(lora_graphed, plain)),
    }
    print(f"  LoRA: {result}", flush=True)
    return result


def stage_a_check(models, device, dtype, size: int) -> dict:
    """Stage A: bfloat16 strip decode (the pipeline's GPU path) against the plain float32 decode, in 8-bit pixels,
    at ``size``; and peak memory of a 2048² decode both ways."""
    import torch

    from cascade_studio.pipeline.generate import STAGE_A_TILE_PIXELS, to_uint8

    stage_a = models.get("stage_a")
    tile = STAGE_A_TILE_PIXELS.get(device.type, STAGE_A_TILE_PIXELS["cpu"])
    gen = torch.Generator(device=device).manual_seed(3)
    result = {}
    with torch.inference_mode():
        z = torch.randn(1, 4, size // 4, size // 4, device=device, generator=gen)
        ref = to_uint8(stage_a.decode(z)).astype(int)
        low = to_uint8(stage_a.decode(z.to(dtype), tile_pixels=tile).float()).astype(int)
        diff = abs(low - ref)
        result["bf16_vs_fp32_max"], result["bf16_vs_fp32_mean"] = int(diff.max()), round(float(diff.mean()), 3)
        if device.type == "cuda":
            z = torch.randn(1, 4, 512, 512, device=device, generator=gen)
            for name, run in (
                ("plain_fp32_2048", lambda: stage_a.decode(z)),
                ("strips_bf16_2048", lambda: stage_a.decode(z.to(dtype), tile_pixels=tile)),
            ):
                free(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                sync(device)
                t = time.perf_counter()
                run()
                sync(device)
                result[name] = {
                    "s": round(time.perf_counter() - t, 3),
                    "peak_gib": round((torch.cuda.max_memory_allocated(device) - base) / 2**30, 2),
                }
    print(f"  Stage A: {result}", flush=True)
    return result


def timed(rows: dict, args, device) -> dict[str, dict[int, dict]]:
    """Each row's ``generate(batch)`` per batch: a warm-up generation (for our rows it captures the CUDA graphs that
    the next generations of that size replay; for the compiled row it includes the compilation), then ``--runs``
    timed ones; the best run, with all the totals and the peak memory over the runs."""
    import torch

    results: dict[str, dict[int, dict]] = {name: {} for name in rows}
    for name, generate in rows.items():
        for batch in args.batches:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t = time.perf_counter()
            generate(batch)
            first = time.perf_counter() - t
            runs = [generate(batch) for _ in range(args.runs)]
            best = min(runs, key=lambda r: r["total"])
            best["runs"] = [round(r["total"], 3) for r in runs]
            best["first_s"] = round(first, 2)
            best["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
            results[name][batch] = best
            print(
                f"  {name} batch {batch}: first {first:.1f} s, then {best['runs']} s, peak {best['peak_gib']:.1f} GiB",
                flush=True,
            )
    return results


def free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="lite,full")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny demo-sized networks (to try the script on a CPU)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--profile", action="store_true", help="print a kernel profile of one eager generation")
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile (ours-compiled)")
    parser.add_argument("--lora", action="store_true", help="also run a random reference-format LoRA at batch 1")
    parser.add_argument("--no-diffusers", action="store_true", help="skip diffusers (ratios then left out)")
    choices = ", ".join(r for r in ROWS if r != "ours-compiled")
    parser.add_argument("--impls", default=",".join(DEFAULT_ROWS), help=f"our rows, of: {choices} (--compile adds one)")
    args = parser.parse_args(argv)
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = set(args.impls) - set(ROWS) | ({"ours-compiled"} & set(args.impls))
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    if args.compile:
        args.impls.append("ours-compiled")
    args.batches = [int(b) for b in args.batches.split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]

    import diffusers
    import torch

    diffusers.utils.logging.set_verbosity_error()
    device = torch.device(args.device)
    dtype = torch.bfloat16
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"Device: {name} | torch {torch.__version__} | diffusers {diffusers.__version__} | bf16 | {args.size}px")

    results: dict = {"device": name, "torch": torch.__version__, "diffusers": diffusers.__version__, "size": args.size}
    with tempfile.TemporaryDirectory(prefix="cascade_bench_gpu_") as tmp:
        for variant in variants:
            folder = Path(tmp) / variant
            print(f"{variant}: building random weights", flush=True)
            theirs = build_weights(variant, folder, args, device, dtype)
            check = compare_stage_c(theirs.pop("stage_c_ours"), theirs["stage_c"], device, dtype, args.tiny)
            del theirs["stage_b_ours"]
            print(f"  Stage C forward: {check}", flush=True)
            free(device)
            diff = {}
            if not args.no_diffusers:
                print("  diffusers", flush=True)
                diff = run_diffusers(theirs, args, device, dtype)
            del theirs
            free(device)
            results[variant] = {"diffusers": diff, **run_ours(folder, variant, args, device, dtype)}
            results[variant]["stage_c_check"] = check
            free(device)

    rows = []
    impls = ["diffusers", *args.impls]
    for variant in variants:
        for batch in args.batches:
            d = results[variant]["diffusers"].get(batch)
            for impl in impls:
                r = d if impl == "diffusers" else results[variant][impl][batch]
                if r is None:
                    continue
                ratio = f" ({r['total'] / d['total']:.2f}x)" if d is not None and impl != "diffusers" else ""
                rows.append(
                    [
                        variant,
                        str(batch),
                        impl,
                        f"{r['c']:.2f} ({r['c_its']:.1f} it/s)",
                        f"{r['b']:.2f} ({r['b_its']:.1f} it/s)",
                        f"{r['a']:.2f}",
                        f"{r['total']:.2f}{ratio}",
                        f"{r['first_s']:.1f}",
                        f"{r['peak_gib']:.1f}",
                        "yes" if r["finite"] else "NO",
                    ]
                )
    print()
    print(
        f"{name}, bf16, {args.size}x{args.size}, Stage C {STAGE_C['steps']} steps cfg {STAGE_C['cfg']}, "
        f"Stage B {STAGE_B['steps']} steps cfg {STAGE_B['cfg']}, best of {args.runs} after a warm-up"
    )
    header = [
        "variant",
        "batch",
        "implementation",
        "Stage C s",
        "Stage B s",
        "Stage A s",
        "total s (ours/diffusers)",
        "first image s",
        "peak VRAM GiB",
        "valid",
    ]
    print(table(header, rows))
    for variant in variants:
        r = results[variant]
        print(f"{variant}: our load {r['load_s']:.1f}s")
        print(f"  Stage C forward, {r['stage_c_check']}")
        print(f"  Stage A: {r['stage_a']}")
        for key, what in (
            ("graphs_identical", "graphed pixels identical to eager"),
            ("headless_identical", "pixels without previews identical to the window's"),
            ("split_gelu_vs_eager", "GELU in the product vs split, largest pixel difference"),
            ("split_modulation_vs_headless", "residual add + modulation split vs fused, largest pixel difference"),
            ("compiled_vs_eager", "compiled vs eager, largest pixel difference"),
            ("lora", "LoRA"),
        ):
            if key in r:
                print(f"  {what}: {r[key]}")
    summary = [
        f"{v} batch {b}: ours/diffusers {results[v][impl][b]['total'] / results[v]['diffusers'][b]['total']:.2f} "
        f"time, {results[v][impl][b]['peak_gib'] / results[v]['diffusers'][b]['peak_gib']:.2f} peak VRAM ({impl})"
        for v in variants
        for b in args.batches
        for impl in impls[1:]
        if b in results[v]["diffusers"]
    ]
    print("summary: " + "; ".join(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
