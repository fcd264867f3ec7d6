"""The ``cascade-studio`` command.

Until the studio window lands, running it without arguments reports which weights it finds
(same as ``cascade-studio info``). ``inspect`` checks individual files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .core.paths import default_models_dir, demo_folder


def describe_file(path: Path) -> str:
    import math

    from .pipeline.checkpoints import CheckpointError, identify, read_header

    try:
        header, identity = identify(path)
        label = identity.label
    except CheckpointError as exc:
        try:
            header = read_header(path)
        except CheckpointError:
            return f"unusable: {exc}"
        label = _clip_label(header) or _lora_label(path, header)
        if label is None:
            return f"unusable: {exc}"
        if label.startswith("unusable"):
            return label
    dtypes = "/".join(sorted(header.float_dtypes)) or "-"
    values = sum(math.prod(t.shape) for t in header.tensors.values())
    return f"{label}, {dtypes}, {_count(values)} values"


def _lora_label(path: Path, header) -> str | None:
    """What a LoRA file is for (layout, Stage C variant, what it changes), "unusable: …" when a job would refuse its
    keys, or None when its keys are no LoRA's at all."""
    from .core.lora_info import KOHYA_KEY, OTHER_KINDS, PEFT_KEY, REFERENCE_KEY, key_layout, read_lora_info

    keys = list(header.tensors)
    if not any(p.search(k) for k in keys for p in (KOHYA_KEY, PEFT_KEY, REFERENCE_KEY, OTHER_KINDS)):
        return None
    try:
        info = read_lora_info(path)
        layout = key_layout(keys)
    except ValueError as exc:
        return f"unusable: LoRA {path}: {exc}"
    if info.problem:
        return f"unusable: LoRA {path}: {info.problem}"
    made_for = f", made for Stage C {info.variant}" if info.variant else ""
    changes = f", changes {' and '.join(info.changes)}" if info.changes else ""
    return f"LoRA ({layout} layout{made_for}{changes})"


def _clip_label(header) -> str | None:
    """CLIP files (the text and image encoders) are not Stable Cascade networks."""
    keys = set(header.tensors)
    if "text_model.embeddings.token_embedding.weight" in keys:  # Stability AI's text_encoder/model.safetensors
        return "CLIP text encoder (transformers format)"
    towers = [name for name, present in (("text", "token_embedding.weight" in keys), ("image", "visual.proj" in keys))
              if present]  # fmt: skip
    return f"CLIP {' and '.join(towers)} encoder (open_clip format)" if towers else None


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:,.1f}{unit}"
    return str(n)


def cmd_info(args: argparse.Namespace) -> int:
    from .pipeline import weights

    models = Path(args.models_dir).expanduser()
    print(f"Cascade Studio {__version__}")
    print(f"Weights folder: {models}")
    if not models.is_dir():
        print("  (does not exist yet)")
    else:
        files = sorted(p for p in models.rglob("*") if p.is_file() and p.suffix == ".safetensors")
        if not files:
            print("  no .safetensors files found")
        for path in files:
            rel = path.relative_to(models)
            print(f"  {rel} ({weights.human_size(path.stat().st_size)}): {describe_file(path)}")
    _print_registry(models)
    return 0


def _print_registry(models: Path) -> None:
    """Each variant's registry files: present (where) or missing (size)."""
    from .pipeline import weights

    print("Files by variant (`cascade-studio download --variant V` fetches the missing ones):")
    found = {entry.name: weights.locate(entry, models) for entry in weights.REGISTRY}
    for variant in weights.VARIANTS:
        entries = weights.files_for(variant)
        missing = [e for e in entries if found[e.name] is None]
        size = weights.human_size(sum(e.size for e in missing))
        state = f"{len(missing)} of {len(entries)} files missing ({size})" if missing else "complete"
        print(f"  {variant}: {state}")
        for entry in entries:
            where = found[entry.name]
            text = f"present ({where.where})" if where else f"missing ({weights.human_size(entry.size)})"
            if where and where.where == weights.HF_CACHE:
                text += ", used from there"
            elif where and where.where == weights.SUBSTITUTE:
                text = f"not needed: {where.path} is used instead"
            print(f"    {entry.name}: {text}")


def cmd_inspect(args: argparse.Namespace) -> int:
    status = 0
    for name in args.files:
        text = describe_file(Path(name))
        print(f"{name}: {text}")
        status |= text.startswith("unusable")
    return status


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1024x1024, not {text!r}") from None
    return w, h


def _progress(event) -> None:
    if event.note:
        print(f"  {event.note}…", file=sys.stderr, flush=True)
        return
    names = {"c": "Stage C", "b": "Stage B", "a": "Stage A"}
    width = 24
    filled = round(width * event.step / event.total)
    bar = "#" * filled + "-" * (width - filled)
    end = "\n" if event.step == event.total else ""
    print(f"\r  {names[event.stage]} [{bar}] {event.step}/{event.total}", end=end, file=sys.stderr, flush=True)


def _unique_path(folder: Path, stem: str) -> Path:
    path = folder / f"{stem}.png"
    n = 1
    while path.exists():
        path = folder / f"{stem}-{n}.png"
        n += 1
    return path


def _usage_error(message: str) -> int:
    print(f"cascade-studio generate: error: {message}", file=sys.stderr)
    return 2


def _sides(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 0:
        raise argparse.ArgumentTypeError(f"--outpaint takes LEFT,TOP,RIGHT,BOTTOM in px (e.g. 256,0,256,0): {text!r}")
    return values  # type: ignore[return-value]


def _generate_mode(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    """(mode, source, error) from the image flags; error is a usage message for a wrong combination."""
    given = [name for name, value in (("--image", args.image), ("--variation", args.variation),
                                      ("--canny", args.canny), ("--upscale", args.upscale)) if value]  # fmt: skip
    if len(given) > 1:
        return "text", None, f"use only one of --image, --variation, --canny and --upscale (got {' and '.join(given)})"
    if (args.mask or args.outpaint) and not args.image:
        flag = "--mask" if args.mask else "--outpaint"
        return "text", None, f"{flag} needs --image (the picture to {'inpaint' if args.mask else 'extend'})"
    if args.image and args.outpaint:
        return "outpaint", args.image, None
    if args.image and args.mask:
        return "inpaint", args.image, None
    if args.image:
        return "img2img", args.image, None
    if args.variation:
        return "variation", args.variation, None
    if args.canny:
        return "canny", None, None
    if args.upscale:
        return "upscale", args.upscale, None
    return "text", None, None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _lora_arg(text: str) -> tuple[str, float] | tuple[str, float, float]:
    """``NAME``, ``NAME:WEIGHT`` or ``NAME:WEIGHT:te=TEXT_WEIGHT`` (a path may hold colons: only a numeric last part
    is a weight)."""
    text_weight = None
    head, sep, last = text.rpartition(":")
    key, eq, value = last.partition("=")
    if sep and eq and key.strip().lower() == "te":
        try:
            text_weight = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"te={value} is not a number (in --lora {text})") from None
        text = head
    name, sep, weight = text.rpartition(":")
    use: tuple[str, float] = (text, 1.0)
    if sep and _is_float(weight):
        use = (name, float(weight))
    if not use[0].strip():
        raise argparse.ArgumentTypeError("a LoRA name is empty")
    return use if text_weight is None else (*use, text_weight)


def cmd_generate(args: argparse.Namespace) -> int:
    import secrets
    import time

    from .core.geometry import snap_size
    from .core.request import (
        LORA_TAG_FORMS,
        MASK_MODES,
        STRENGTH_MODES,
        GenerationRequest,
        StageSettings,
        unread_lora_tags,
    )

    if args.count < 1:
        return _usage_error("--count must be at least 1")
    mode, source, problem = _generate_mode(args)
    if problem:
        return _usage_error(problem)
    controlled = mode in (*MASK_MODES, "canny", "upscale")
    if args.control_strength is not None and not controlled:
        return _usage_error("--control-strength needs --canny, --upscale, --mask or --outpaint")
    if args.method != "auto" and mode not in MASK_MODES:
        return _usage_error("--method needs --mask or --outpaint (inpainting or outpainting)")
    if args.strength is not None and mode not in STRENGTH_MODES:
        return _usage_error("--strength needs --image")
    if mode == "upscale":
        if args.size is not None:
            return _usage_error("--size does not apply to --upscale: the output is twice the input's size")
        try:
            from PIL import Image

            with Image.open(source) as im:
                width, height = 2 * im.width, 2 * im.height
        except OSError as exc:
            return _usage_error(f"{source}: not a readable image ({exc})")
    else:
        width, height = args.size or (1024, 1024)
    snapped_w, snapped_h, note = snap_size(width, height)
    if note:
        print(f"note: {note}", file=sys.stderr)
    strength = args.strength if args.strength is not None else (0.8 if mode == "img2img" else 1.0)
    cfg_c = args.cfg_c if args.cfg_c is not None else (1.0 if mode == "upscale" else 4.0)  # SR: the reference's cfg 1
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)

    def resolved(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path else None

    try:
        request = GenerationRequest(
            prompt=args.prompt,
            negative_prompt=args.negative,
            width=snapped_w,
            height=snapped_h,
            seed=seed,
            batch_size=args.batch,
            stage_c=StageSettings(args.steps_c, cfg_c, args.shift),
            stage_b=StageSettings(args.steps_b, args.cfg_b, 1.0),
            variant=args.variant,
            mode=mode,
            source_image=resolved(source),
            strength=strength,
            sampler=args.sampler,
            mask_image=resolved(args.mask),
            control_image=resolved(args.canny),
            control_strength=args.control_strength if args.control_strength is not None else 1.0,
            mask_grow=args.grow,
            mask_feather=args.feather,
            context=args.context,
            context_padding=args.padding,
            outpaint=args.outpaint,
            method=args.method,
            loras=tuple(args.lora),
        )
        request.validate()
    except ValueError as exc:
        return _usage_error(str(exc))

    from .core.inpaint import InputError, load_mask
    from .core.metadata import png_text_chunks, save_png_atomic
    from .pipeline.demo import DEMO_NOTICE, write_demo_models
    from .pipeline.device import choose_device, choose_dtype, choose_memory, precision_name
    from .pipeline.generate import Pipeline
    from .pipeline.images import load_image, to_pil
    from .pipeline.lora import LoraError
    from .pipeline.models import MEMORY_MODES, MissingWeights, ModelSet

    inputs = {}
    try:
        device = choose_device(args.device)
        dtype = choose_dtype(args.dtype, device)
        memory = choose_memory(args.memory, device)
        if source:
            inputs["source_image"] = load_image(source)
        if args.mask:
            inputs["mask_image"] = load_mask(args.mask)
        if args.canny:
            inputs["control_image"] = load_image(args.canny)
    except ValueError as exc:
        return _usage_error(str(exc))
    models_dir = Path(args.models_dir)
    if args.demo:
        print(f"Using {DEMO_NOTICE}.", file=sys.stderr)
        models_dir = write_demo_models(demo_folder())
    models = ModelSet(models_dir, variant=request.variant, device=device, dtype=dtype, memory=memory)
    pipeline = Pipeline(models, preview_every=0, compile=args.compile)  # the terminal shows no previews
    try:
        plan = pipeline.plan(request)
        files = models.check(request.mode, plan.method)
        for lora, use in pipeline.loras(request):  # read and check every LoRA file before the first step
            print(f"LoRA {lora.name} ({lora.layout} layout) at weight {use.describe()}", file=sys.stderr)
            if use.text_weight is not None and not lora.has_text_part:
                print(f"warning: {lora.name} has no text-encoder part: its text weight does nothing", file=sys.stderr)
            if lora.token_warning:
                print(f"warning: {lora.token_warning}", file=sys.stderr)
        for tag in unread_lora_tags(request.prompt):
            print(f"warning: {tag} is not a LoRA tag this reads, so it stays in the prompt as text", file=sys.stderr)
            print(f"  (forms read: {LORA_TAG_FORMS})", file=sys.stderr)
    except (MissingWeights, ValueError) as exc:
        print(f"cascade-studio generate: {exc}", file=sys.stderr)
        return 2
    model_name = "demo" if args.demo else files["stage_c"].name.removesuffix(".safetensors")
    precision = precision_name(dtype)
    settings = f"{device}, {precision}, memory: {MEMORY_MODES[memory]}"
    if args.compile:
        settings += ", compiled (torch.compile: the first image waits for the compilation)"
    print(f"{settings}; weights from {models_dir}", file=sys.stderr)
    if plan.note:
        print(f"Mode: {plan.note}.", file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for job in range(args.count):
            job_request = request.with_(seed=request.seed + job * request.batch_size)
            print(f"Generating {job + 1}/{args.count} (seed {job_request.seed})", file=sys.stderr)
            started = time.perf_counter()
            try:
                images = pipeline.run(job_request, on_progress=_progress, **inputs)
            except InputError as exc:  # inputs that do not fit together (mask size, empty mask …)
                return _usage_error(str(exc))
            except LoraError as exc:  # a LoRA that does not fit this Stage C
                print(f"cascade-studio generate: {exc}", file=sys.stderr)
                return 2
            for image in images:
                stem = f"{time.strftime('%Y%m%d-%H%M%S')}_{image.request.seed}"
                texts = png_text_chunks(image.request, model_name, __version__, device=device.type, precision=precision)
                written.append(save_png_atomic(_unique_path(out, stem), to_pil(image.pixels), texts))
            print(f"  {time.perf_counter() - started:.1f} s", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"\nCancelled; the unfinished run wrote nothing ({len(written)} earlier image(s) kept).", file=sys.stderr)
        return 130
    finally:
        for path in written:
            print(path)
    if args.demo:
        print(f"Made with {DEMO_NOTICE}.", file=sys.stderr)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .pipeline import weights

    models = Path(args.models_dir).expanduser()
    entries = weights.files_for(args.variant)
    print(f"Weights folder: {models}")
    print(f"Variant {args.variant}: {weights.VARIANTS[args.variant]}")
    to_fetch, to_link = 0, 0
    for entry in entries:
        where = weights.locate(entry, models)
        if where is None:
            about = "about " if entry.size_is_estimate else ""
            print(f"  {entry.name}: {about}{weights.human_size(entry.size)} from {entry.repo}")
            to_fetch += entry.size
        elif where.where == weights.FOLDER:
            print(f"  {entry.name}: present, skipped")
        elif where.where == weights.SUBSTITUTE:
            print(f"  {entry.name}: skipped, {where.path} is used instead")
        else:
            print(f"  {entry.name}: in the Hugging Face cache, will be linked in")
            to_link += 1
    if not to_fetch and not to_link:
        print(f"All files of {args.variant!r} are present.")
        return 0
    print(f"To download: {weights.human_size(to_fetch)}", flush=True)
    if args.token:
        print(
            "note: a token given on the command line may stay in your shell history; HF_TOKEN or "
            "`hf auth login` avoid that.",
            file=sys.stderr,
        )

    last = {}

    def show(event) -> None:
        pct = int(100 * event.done / event.total) if event.total else 0
        if last.get(event.name) == pct:
            return
        last[event.name] = pct
        width = 24
        filled = min(width, width * pct // 100)
        bar = "#" * filled + "-" * (width - filled)
        end = "\n" if pct >= 100 else ""
        print(
            f"\r  [{event.index}/{event.count}] {event.name} [{bar}] {pct:3d}% of {weights.human_size(event.total)}",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    try:
        results = weights.download(entries, models, token=args.token, endpoint=args.endpoint, progress=show)
    except weights.DownloadError as exc:
        print(f"\ncascade-studio download: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nCancelled; the unfinished file was removed (finished files are kept).", file=sys.stderr)
        return 130
    fetched = [r for r in results if r.action != "present"]
    print(f"Done: {len(fetched)} file(s) added, {len(results) - len(fetched)} already present, in {models}.")
    return 0


def cmd_window(args: argparse.Namespace) -> int:
    from .app import run

    return run(sys.argv[:1], demo=bool(getattr(args, "demo", False) or getattr(args, "window_demo", False)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade-studio",
        description="Run Stable Cascade on your own machine. Without a command, opens the studio window.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--demo", dest="window_demo", action="store_true", help="open the window with tiny demo weights (noise)"
    )
    parser.add_argument(
        "--models-dir",
        default=str(default_models_dir()),
        help="folder holding the weights (default: $CASCADE_STUDIO_MODELS or the repository's models/)",
    )
    sub = parser.add_subparsers(dest="command")
    window = sub.add_parser("window", help="open the studio window (the default)")
    window.add_argument("--demo", action="store_true", help="use tiny demo weights (noise, not pictures)")
    window.set_defaults(func=cmd_window)
    sub.add_parser("info", help="show which weights are present and what they hold").set_defaults(func=cmd_info)
    inspect = sub.add_parser("inspect", help="check .safetensors files and say which network each holds")
    inspect.add_argument("files", nargs="+", metavar="FILE")
    inspect.set_defaults(func=cmd_inspect)

    gen = sub.add_parser("generate", help="generate images from a prompt (headless)")
    gen.add_argument("prompt")
    gen.add_argument("--negative", default="", help="negative prompt (default: empty)")
    gen.add_argument(
        "--size",
        type=_size,
        metavar="WxH",
        help="default 1024x1024; with --mask/--outpaint the generation resolution (pixel count) of the region",
    )
    gen.add_argument("--seed", type=int, help="seed of the first image (default: random); image i uses seed+i")
    gen.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    gen.add_argument("--count", type=int, default=1, help="number of runs (default 1)")
    gen.add_argument("--steps-c", type=int, default=20, help="Stage C steps (default 20)")
    gen.add_argument("--steps-b", type=int, default=10, help="Stage B steps (default 10)")
    gen.add_argument("--cfg-c", type=float, help="Stage C guidance (default 4; 1 with --upscale, as the reference)")
    gen.add_argument("--cfg-b", type=float, default=1.1, help="Stage B guidance (default 1.1)")
    gen.add_argument("--shift", type=float, default=2.0, help="Stage C noise shift (default 2)")
    gen.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    gen.add_argument("--variant", choices=("lite", "full"), default="lite")
    gen.add_argument("--image", metavar="PATH", help="image-to-image from this image (with --mask: inpaint it)")
    gen.add_argument(
        "--strength", type=float, help="how much of --image is renoised (default 0.8; 1 with --mask/--outpaint)"
    )
    gen.add_argument("--variation", metavar="PATH", help="image variation of this image")
    gen.add_argument("--mask", metavar="PATH", help="inpaint --image where this mask is white (same size as --image)")
    gen.add_argument(
        "--outpaint", type=_sides, metavar="L,T,R,B", help="extend --image by these px per side and fill them in"
    )
    gen.add_argument("--canny", metavar="PATH", help="generate following the canny edges of this image")
    gen.add_argument("--upscale", metavar="PATH", help="2x super-resolution of this image (needs the full Stage C)")
    gen.add_argument("--control-strength", type=float, help="ControlNet strength, 0-2 (default 1)")
    gen.add_argument(
        "--method",
        choices=("auto", "controlnet", "latent_blend"),
        default="auto",
        help="inpaint/outpaint through the inpainting ControlNet or by latent blending (auto: the ControlNet when "
        "it fits the Stage C, i.e. with --variant full)",
    )
    gen.add_argument("--grow", type=int, default=0, help="grow (or, negative, shrink) the mask by px (default 0)")
    gen.add_argument("--feather", type=int, default=16, help="transition band around the mask in px (default 16)")
    gen.add_argument(
        "--context",
        choices=("image", "mask"),
        default="image",
        help="generate on the whole image, or on the masked area plus --padding (pasted back)",
    )
    gen.add_argument("--padding", type=int, default=64, help="context padding in px for --context mask (default 64)")
    gen.add_argument(
        "--lora",
        action="append",
        type=_lora_arg,
        default=[],
        metavar="NAME[:WEIGHT][:te=W]",
        help="apply a Stage C LoRA (a .safetensors in <models dir>/lora/, or a path) at WEIGHT (default 1), its "
        "text-encoder part (if any) at te=W (default WEIGHT); repeatable. <lora:NAME:WEIGHT> (or "
        "<lora:NAME:unet=WEIGHT:te=W>) in the prompt does the same",
    )
    gen.add_argument("--out", default="outputs", help="output folder (default ./outputs)")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    gen.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="precision; auto: bf16 on CUDA GPUs and on CPUs with native bf16 (AVX512-BF16, AMX), else fp32 "
        "(fp16 is refused)",
    )
    gen.add_argument(
        "--memory",
        choices=("auto", "resident", "sequential"),
        default="auto",
        help="keep all networks on the device, or one stage at a time (auto: sequential below 12 GiB of VRAM)",
    )
    gen.add_argument(
        "--compile",
        action="store_true",
        help="run Stage C and Stage B through torch.compile: the first image waits for a compilation (tens of "
        "seconds on a CPU, a minute or more for the full models on a GPU), later ones at the same size and batch "
        "run fused kernels. Pays off for many images at one size (--count); needs a C++ compiler (and Triton on a GPU)",
    )
    gen.add_argument("--demo", action="store_true", help="use tiny demo weights (noise, not pictures)")
    gen.set_defaults(func=cmd_generate)

    dl = sub.add_parser("download", help="download the weights of a variant from Hugging Face (skips files present)")
    dl.add_argument("--variant", choices=("lite", "full", "lite-fp32", "full-fp32", "controlnets"), default="lite")
    dl.add_argument("--token", help="Hugging Face access token (default: $HF_TOKEN or the `hf auth login` token)")
    dl.add_argument("--endpoint", help="Hugging Face endpoint or mirror (default: $HF_ENDPOINT or huggingface.co)")
    dl.add_argument("--models-dir", default=argparse.SUPPRESS, help="weights folder (same as the global option)")
    dl.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func = getattr(args, "func", cmd_window)
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
