"""End-to-end text-to-image: our pipeline against diffusers' ``StableCascadeCombinedPipeline`` on identical weights.

Builds the ``medium`` benchmark networks (/work/shared/bench/configs.json) once with deterministic random
weights and writes them twice: as our weights folder (official file names, read by ``ModelSet``) and as
diffusers / transformers ``save_pretrained`` folders converted from the very same tensors (test-support
converters; Stage A through ``to_diffusers_paella``, scale factor 0.43 in both). Every implementation then
runs in its own child process (clean peak RSS), 2 torch threads, float32 (``--dtype bf16``: bfloat16 in every
row): each child loads its weights once, generates once to warm up, and then the children take turns, one
timed generation each per round for ``--runs`` rounds (the order rotating), so that load from other processes
on this shared machine falls on all of them alike (``--no-interleave``: one child after another). The run with
the best total is reported::

    .venv/bin/python benchmarks/pipeline.py                 # 512x512, best of 2
    .venv/bin/python benchmarks/pipeline.py --size 1024 --runs 2

On a GPU, with full-size weights in bf16, use ``benchmarks/gpu.py``.

Rows (the protocol of configs.json: seed 0, its prompt, Stage C 20 steps at guidance 4, Stage B 10 steps):

* ``diffusers``: ``StableCascadeCombinedPipeline``, prior guidance 4, decoder guidance 0 (off: batch 1);
* ``ours``: ``Pipeline(ModelSet(...))``, Stage C cfg 4 (shift 2), Stage B cfg 1 (shift 1), which skips the
  unconditional branch, i.e. the like-for-like comparison;
* ``ours-b1.1``: ours with the reference default Stage B cfg 1.1 (batch 2 in Stage B).

Text conditioning: diffusers needs a ``CLIPTokenizer``; it is built offline from open_clip's bundled BPE
vocabulary (open_clip's ``<start_of_text>``/``<end_of_text>`` renamed to HF's ``<|startoftext|>``/
``<|endoftext|>``, padding with id 0 like open_clip), and the parent checks that both tokenizers give the
same ids for the benchmark prompt and the empty negative prompt. The text encoder is one random open_clip
text tower (width 512, 6 layers, 8 heads, vocab 49408, projection 512, exact GELU), saved in open_clip
format for ours and converted to ``CLIPTextModelWithProjection`` for diffusers, whose config takes the
real CLIP token ids (BOS 49406, EOS 49407, pad 0) instead of configs.json's placeholders so that pooling
picks the end-of-text position in both. One text encoder and tokenizer object is shared by diffusers'
prior and decoder pipes (the hub layout would load two copies). Each child saves its prompt embeddings
and the parent prints the largest difference.

Stage times come from the implementations' own step callbacks, measured the same way for both:

* text: the prompt-encoding call (tokenising included): our ``TextEncoder.encode``, diffusers'
  ``encode_prompt`` (positive and negative prompt);
* Stage C: end of text encoding to the last Stage C step callback (ours includes the Previewer, which
  our pipeline runs after every Stage C step; its share is shown in brackets);
* Stage B: last Stage C step to last Stage B step;
* Stage A: last Stage B step to the end of the call (decode and conversion to uint8 / a clamped tensor).

Peak RSS: ``peak`` is the child's whole-process high-water mark (loading included, VmHWM); ``gen peak``
is the high-water mark during the generations alone (reset through /proc/self/clear_refs after loading).
The parent stays small and writes the weights in a child of its own, since Linux carries a process's RSS
high-water mark over fork and exec.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_model, proc_status_mib, table  # noqa: E402

CONFIGS = ROOT.parent / "shared" / "bench" / "configs.json"
CONFIG = "medium"
THREADS = 2
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}
#: Stage A scale factor used by both implementations (configs.json asks for 0.43 in both).
STAGE_A_SCALE = 0.43
#: Real CLIP special token ids (configs.json's text_encoder has placeholders 0/1/1).
BOS_ID, EOS_ID, PAD_ID = 49406, 49407, 0
#: Stage C / Stage B noise-schedule shifts of the reference (the timings do not depend on them).
SHIFT_C, SHIFT_B = 2.0, 1.0
#: implementation -> (label, Stage B cfg for ours; None for diffusers)
IMPLS: dict[str, tuple[str, float | None]] = {
    "ours": ("ours as the window runs: previews, Stage B cfg 1", 1.0),
    "ours-headless": ("ours as `generate` runs: no previews, Stage B cfg 1", 1.0),
    "ours-compiled": ("ours headless with torch.compile, Stage B cfg 1", 1.0),
    "ours-sequential": ("ours headless, memory mode sequential, Stage B cfg 1", 1.0),
    "diffusers": ("diffusers, decoder guidance 0", None),
    "ours-b1.1": ("ours, Stage B cfg 1.1", 1.1),
}
#: the rows run when --impls is not given
DEFAULT_IMPLS = ("ours", "ours-headless", "diffusers")
#: stage marks for --profile: which calls belong to which stage
PROFILE_STAGES = {"text": "TextEncoder.encode", "C": "StageC.forward", "B": "StageB.forward", "A": "StageA.decode"}
STAMP = "BENCH_PIPELINE.json"

# ------------------------------------------------------------------------------------------- helpers


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def bench_file() -> dict:
    return json.loads(CONFIGS.read_text())


def open_clip_text_cfg(text_encoder: dict) -> dict:
    """The open_clip model config equal to configs.json's CLIPTextConfig keywords."""
    if text_encoder["hidden_act"] != "gelu" or text_encoder["layer_norm_eps"] != 1e-5:
        raise SystemExit("the open_clip text tower only matches exact GELU and LayerNorm eps 1e-5")
    return {
        "embed_dim": text_encoder["projection_dim"],
        "text_cfg": {
            "context_length": text_encoder["max_position_embeddings"],
            "vocab_size": text_encoder["vocab_size"],
            "width": text_encoder["hidden_size"],
            "heads": text_encoder["num_attention_heads"],
            "layers": text_encoder["num_hidden_layers"],
            "mlp_ratio": text_encoder["intermediate_size"] / text_encoder["hidden_size"],
        },
    }


def our_files() -> dict[str, str]:
    from cascade_studio.pipeline.weights import TEXT_ENCODER_FILE

    return {
        "stage_c": "stage_c_lite.safetensors",
        "stage_b": "stage_b_lite.safetensors",
        "stage_a": "stage_a.safetensors",
        "previewer": "previewer.safetensors",
        "text_encoder": TEXT_ENCODER_FILE,
    }


# ------------------------------------------------------------------------------------ weight writing


def hf_tokenizer_from_open_clip(folder: Path):
    """A transformers ``CLIPTokenizer`` with open_clip's bundled vocabulary and merges (no download)."""
    import open_clip
    from transformers import CLIPTokenizer

    simple = open_clip.tokenizer.SimpleTokenizer()
    renames = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renames.get(k, k): v for k, v in simple.encoder.items()}
    merges = sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(" ".join(pair) + "\n" for pair, _ in merges))
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!", model_max_length=77
    )
    if tokenizer.bos_token_id != BOS_ID or tokenizer.eos_token_id != EOS_ID or tokenizer.pad_token_id != PAD_ID:
        raise SystemExit(
            f"unexpected special ids {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}"
        )
    return tokenizer


def check_token_ids(tokenizer, prompts: list[str]) -> None:
    import open_clip
    import torch

    ours = open_clip.get_tokenizer("ViT-bigG-14")(prompts)
    theirs = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    if not torch.equal(ours, theirs):
        raise SystemExit(f"open_clip and HF token ids differ for {prompts!r}:\n{ours}\n{theirs}")


def write_weights(folder: Path) -> None:
    """Seeded random networks, written as our weights folder and as diffusers save_pretrained folders."""
    import torch

    from cascade_studio.pipeline.checkpoints import NETWORKS as KINDS
    from cascade_studio.pipeline.checkpoints import save_network
    from cascade_studio.pipeline.conditioning import build_text_tower, save_clip
    from cascade_studio.pipeline.demo import randomize_
    from tests.support.diffusers_unet import to_diffusers
    from tests.support.diffusers_vqgan import to_diffusers_paella
    from tests.support.hf_clip import hf_text_model

    bench = bench_file()
    cfg, protocol, seed = bench["configs"][CONFIG], bench["protocol"], bench["protocol"]["seed"]
    ours, theirs, files = folder / "ours", folder / "diffusers", our_files()
    torch.set_num_threads(THREADS)

    def report(what: str, module: torch.nn.Module, t0: float) -> None:
        params = sum(p.numel() for p in module.parameters())
        print(f"  wrote {what}: {params / 1e6:.1f}M parameters ({time.perf_counter() - t0:.1f}s)", flush=True)

    with torch.no_grad():
        for i, (network, stage) in enumerate((("stage_c", "c"), ("stage_b", "b"))):
            t0 = time.perf_counter()
            kwargs = dict(cfg[network])
            model = randomize_(KINDS[network].build_class()(**kwargs), seed + i)
            save_network(model, ours / files[network], network, kwargs)
            to_diffusers(model, kwargs, stage).save_pretrained(theirs / ("prior" if stage == "c" else "decoder"))
            report(KINDS[network].label, model, t0)
            del model

        t0 = time.perf_counter()
        kwargs = {**cfg["stage_a"], "scale_factor": STAGE_A_SCALE}
        model = randomize_(KINDS["stage_a"].build_class()(**kwargs), seed + 2)
        save_network(model, ours / files["stage_a"], "stage_a", kwargs)
        to_diffusers_paella(model).save_pretrained(theirs / "vqgan")
        report("Stage A", model, t0)

        t0 = time.perf_counter()
        model = randomize_(KINDS["previewer"].build_class()(), seed + 3)  # the real (only) Previewer size
        save_network(model, ours / files["previewer"], "previewer", {})
        report("Previewer (ours only)", model, t0)

        t0 = time.perf_counter()
        clip_cfg = open_clip_text_cfg(cfg["text_encoder"])
        tower = randomize_(build_text_tower(clip_cfg), seed + 4)
        save_clip(tower.state_dict(), ours / files["text_encoder"], clip_cfg)
        hf = hf_text_model(tower, cfg["text_encoder"], bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
        hf.save_pretrained(theirs / "text_encoder")
        report("CLIP text encoder", tower, t0)

    tokenizer = hf_tokenizer_from_open_clip(folder / "tokenizer_src")
    check_token_ids(tokenizer, [protocol["prompt"], ""])
    tokenizer.save_pretrained(theirs / "tokenizer")
    print("  wrote the CLIPTokenizer (open_clip's BPE vocabulary; same ids as open_clip for the prompts)", flush=True)


def weights_stamp() -> dict:
    bench = bench_file()
    return {"config": bench["configs"][CONFIG], "seed": bench["protocol"]["seed"], "scale": STAGE_A_SCALE, "v": 1}


# -------------------------------------------------------------------------------------------- timing


class StageTimer:
    """Stage boundaries from the implementations' own callbacks (see the module docstring)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.text_s = 0.0
        self.text_end: float | None = None
        self.preview_s = 0.0
        self.last: dict[str, float] = {}
        self.steps: dict[str, int] = {}

    def wrap(self, fn, kind: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                now = time.perf_counter()
                if kind == "text":
                    self.text_s += now - t0
                    self.text_end = now
                else:
                    self.preview_s += now - t0

        return timed

    def step(self, stage: str) -> None:
        self.last[stage] = time.perf_counter()
        self.steps[stage] = self.steps.get(stage, 0) + 1

    def stages(self, start: float, end: float) -> dict:
        if self.text_end is None or "c" not in self.last or "b" not in self.last:
            raise RuntimeError(f"missing stage marks: text_end={self.text_end}, steps={self.steps}")
        return {
            "text": self.text_s,
            "c": self.last["c"] - self.text_end,
            "previews": self.preview_s,
            "b": self.last["b"] - self.last["c"],
            "a": end - self.last["b"],
            "total": end - start,
            "steps": dict(self.steps),
        }


def run_ours(args: argparse.Namespace, b_cfg: float, protocol: dict) -> None:
    import torch

    from cascade_studio.core.request import GenerationRequest, StageSettings
    from cascade_studio.networks.previewer import Previewer
    from cascade_studio.pipeline.conditioning import TextEncoder
    from cascade_studio.pipeline.generate import Pipeline
    from cascade_studio.pipeline.models import ModelSet

    state: dict = {"import_s": time.perf_counter() - args.t_start}
    torch.set_num_threads(THREADS)
    timer = StageTimer()
    TextEncoder.encode = timer.wrap(TextEncoder.encode, "text")
    Previewer.forward = timer.wrap(Previewer.forward, "preview")
    state["rss_after_import_mib"] = proc_status_mib("VmRSS")

    t0 = time.perf_counter()
    memory = "sequential" if args.child == "ours-sequential" else args.memory
    dtype = getattr(torch, DTYPE_NAMES[args.dtype])
    models = ModelSet(Path(args.weights) / "ours", variant="lite", device="cpu", dtype=dtype, memory=memory)
    if memory == "resident":
        for role in models.check("text"):
            models.get(role)
    state["load_s"] = time.perf_counter() - t0
    headless = args.child != "ours"  # the window shows a preview per Stage C step; `generate` shows none
    pipeline = Pipeline(models, preview_every=0 if headless else 1, compile=args.child == "ours-compiled")
    request = GenerationRequest(
        protocol["prompt"],
        seed=protocol["seed"],
        width=args.size,
        height=args.size,
        stage_c=StageSettings(protocol["stage_c"]["steps"], float(protocol["stage_c"]["cfg"]), SHIFT_C),
        stage_b=StageSettings(protocol["stage_b"]["steps"], b_cfg, SHIFT_B),
    )

    def generate():
        timer.reset()
        start = time.perf_counter()
        images = pipeline.run(request, on_progress=lambda event: event.note or timer.step(event.stage))
        end = time.perf_counter()
        return timer.stages(start, end), images[0].pixels

    if args.profile:
        from cascade_studio.networks import StageA, StageB, StageC

        for cls, method in ((TextEncoder, "encode"), (StageC, "forward"), (StageB, "forward"), (StageA, "decode")):
            setattr(cls, method, marked(getattr(cls, method), f"{cls.__name__}.{method}"))

    def embeddings() -> dict:
        text, pooled = models.get("text_encoder").encode([protocol["prompt"], ""])
        return {"clip_text": text.float(), "clip_text_pooled": pooled.float()}

    def image_stats(pixels) -> dict:
        x = torch.from_numpy(pixels).float() / 255
        return {"shape": list(x.permute(2, 0, 1).shape), "mean": x.mean().item(), "std": x.std().item()}

    serve(args, state, generate, embeddings, image_stats)


def run_diffusers(args: argparse.Namespace, protocol: dict) -> None:
    import diffusers
    import torch
    from diffusers import DDPMWuerstchenScheduler, StableCascadeCombinedPipeline, StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    state: dict = {"import_s": time.perf_counter() - args.t_start, "diffusers": diffusers.__version__}
    torch.set_num_threads(THREADS)
    diffusers.utils.logging.set_verbosity_error()
    state["rss_after_import_mib"] = proc_status_mib("VmRSS")

    t0 = time.perf_counter()
    folder = Path(args.weights) / "diffusers"
    dtype = getattr(torch, DTYPE_NAMES[args.dtype])
    text_encoder = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder", dtype=dtype).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    pipe = StableCascadeCombinedPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        decoder=StableCascadeUNet.from_pretrained(folder / "decoder", torch_dtype=dtype).eval(),
        scheduler=DDPMWuerstchenScheduler(),
        vqgan=PaellaVQModel.from_pretrained(folder / "vqgan", torch_dtype=dtype).eval(),
        prior_prior=StableCascadeUNet.from_pretrained(folder / "prior", torch_dtype=dtype).eval(),
        prior_text_encoder=text_encoder,
        prior_tokenizer=tokenizer,
        prior_scheduler=DDPMWuerstchenScheduler(),
    )
    state["load_s"] = time.perf_counter() - t0
    for sub in (pipe, pipe.prior_pipe, pipe.decoder_pipe):
        sub.set_progress_bar_config(disable=True)
    if abs(pipe.vqgan.config.scale_factor - STAGE_A_SCALE) > 1e-9:
        raise SystemExit(f"diffusers vqgan scale factor {pipe.vqgan.config.scale_factor}, expected {STAGE_A_SCALE}")

    timer = StageTimer()
    encode_prompt = pipe.prior_pipe.encode_prompt
    pipe.prior_pipe.encode_prompt = timer.wrap(encode_prompt, "text")

    def on_step(stage: str):
        def callback(_pipe, _i, _t, _tensors):
            timer.step(stage)
            return {}

        return callback

    def generate():
        timer.reset()
        generator = torch.Generator().manual_seed(protocol["seed"])
        start = time.perf_counter()
        images = pipe(
            prompt=protocol["prompt"],
            height=args.size,
            width=args.size,
            prior_num_inference_steps=protocol["stage_c"]["steps"],
            prior_guidance_scale=float(protocol["stage_c"]["cfg"]),
            num_inference_steps=protocol["stage_b"]["steps"],
            decoder_guidance_scale=float(protocol["stage_b"]["cfg_like_for_like"]),
            generator=generator,
            output_type="pt",
            prior_callback_on_step_end=on_step("c"),
            callback_on_step_end=on_step("b"),
        ).images
        end = time.perf_counter()
        return timer.stages(start, end), images

    def embeddings() -> dict:
        text, pooled, neg_text, neg_pooled = encode_prompt(
            device=torch.device("cpu"),
            batch_size=1,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            prompt=protocol["prompt"],
        )
        return {"clip_text": torch.cat([text, neg_text]).float(), "clip_text_pooled": torch.cat([pooled, neg_pooled])}

    def image_stats(images) -> dict:
        x = images[0].float()
        return {"shape": list(x.shape), "mean": x.mean().item(), "std": x.std().item()}

    serve(args, state, generate, embeddings, image_stats)


def serve(args: argparse.Namespace, state: dict, generate, embeddings, image_stats) -> None:
    """Answer the parent's commands on stdin, one JSON reply line each on stdout (see :class:`Child`)."""
    import gc

    import torch
    from safetensors.torch import save_file

    gc.collect()
    state["rss_after_load_mib"] = proc_status_mib("VmRSS")
    state["load_peak_mib"] = proc_status_mib("VmHWM")
    state["peak_reset"] = reset_peak_rss()
    state["threads"] = torch.get_num_threads()
    state["torch"] = torch.__version__
    reply(state)
    out = peak = None
    for line in sys.stdin:
        command = line.strip()
        if command in ("warmup", "run"):
            with torch.inference_mode():
                stages, out = generate()
            reply(stages)
        elif command == "profile":
            peak = proc_status_mib("VmHWM")  # the profiler's own memory must not count in the peak
            with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
                generate()
            reply({"profile": stage_profile(p)})
            del p
        elif command == "finish":
            final = {
                "gen_peak_mib": proc_status_mib("VmHWM") if peak is None else peak,
                "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "image": image_stats(out) if out is not None else None,
            }
            with torch.inference_mode():
                save_file({k: v.contiguous() for k, v in embeddings().items()}, args.output)
            reply(final)
            return
        else:
            raise SystemExit(f"unknown command {command!r}")


REPLY = "@@bench "


def reply(message: dict) -> None:
    # A marked line, so that anything a library prints to stdout cannot be mistaken for a reply.
    sys.stdout.write(REPLY + json.dumps(message) + "\n")
    sys.stdout.flush()


def marked(fn, label: str):
    """``fn`` inside a profiler range named ``label`` (for the per-stage profile)."""
    import torch

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        with torch.profiler.record_function(label):
            return fn(*a, **kw)

    return wrapper


def stage_profile(prof, top: int = 6) -> dict[str, list[tuple[str, float, float]]]:
    """Self CPU time of each operator, grouped by the stage range (``PROFILE_STAGES``) it ran in: per stage the
    ``top`` operators as (name, seconds, share of the stage)."""
    ranges = {label: stage for stage, label in PROFILE_STAGES.items()}
    per_stage: dict[str, dict[str, float]] = {}
    for event in prof.events():
        if event.name in ranges:
            continue
        parent, stage = event.cpu_parent, "other"
        while parent is not None:
            if parent.name in ranges:
                stage = ranges[parent.name]
                break
            parent = parent.cpu_parent
        ops = per_stage.setdefault(stage, {})
        ops[event.name] = ops.get(event.name, 0.0) + event.self_cpu_time_total / 1e6
    out = {}
    for stage, ops in per_stage.items():
        total = sum(ops.values()) or 1.0
        ranked = sorted(ops.items(), key=lambda kv: -kv[1])[:top]
        out[stage] = [(name, round(sec, 3), round(sec / total, 3)) for name, sec in ranked]
    return out


def child(args: argparse.Namespace) -> None:
    protocol = bench_file()["protocol"]
    impl = args.child
    if impl == "diffusers":
        run_diffusers(args, protocol)
    else:
        run_ours(args, IMPLS[impl][1], protocol)


# -------------------------------------------------------------------------------------------- parent


class Child:
    """One implementation in its own process, loaded once, then asked for one generation at a time.

    Protocol: the child loads and replies with its import / load figures; then each ``warmup`` / ``run``
    line makes it generate once and reply with the stage times; ``finish`` makes it reply with its peak
    RSS and image statistics, save its prompt embeddings and exit. Its stderr goes to a log file.
    """

    def __init__(self, impl: str, folder: Path, args: argparse.Namespace) -> None:
        self.impl = impl
        self.embeddings = folder / f"embeddings_{impl}.safetensors"
        self.log = folder / f"child_{impl}.log"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            impl,
            "--weights",
            str(folder),
            "--output",
            str(self.embeddings),
            "--size",
            str(args.size),
            "--memory",
            args.memory,
            "--dtype",
            args.dtype,
            *(["--profile"] if args.profile else []),
        ]
        self._stderr = self.log.open("w")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self.info: dict = self._read()
        self.info["runs"] = []

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
        self.proc.wait()
        self._stderr.close()
        sys.stderr.write(self.log.read_text()[-5000:])
        raise SystemExit(f"child {self.impl} failed with exit status {self.proc.returncode} (log: {self.log})")

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def warm_up(self) -> None:
        t0 = time.perf_counter()
        self.ask("warmup")
        self.info["warmup_s"] = time.perf_counter() - t0

    def run(self) -> dict:
        stages = self.ask("run")
        self.info["runs"].append(stages)
        return stages

    def profile(self) -> None:
        self.info.update(self.ask("profile"))

    def finish(self) -> dict:
        self.info.update(self.ask("finish"))
        self.proc.stdin.close()
        self.proc.wait()
        self._stderr.close()
        runs = self.info["runs"]
        self.info["best"] = min(runs, key=lambda r: r["total"])
        self.info["peak_mib"] = max(self.info["load_peak_mib"], self.info["gen_peak_mib"])
        self.info["embeddings"] = self.embeddings
        return self.info

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_children(folder: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Interleaved (default): start and load the children one after another, warm each up, then ``--runs``
    rounds in which every child generates once, the order rotating each round, so that load from other
    processes on the machine falls on every implementation alike. ``--no-interleave``: one child at a time,
    its runs back to back (less memory: only one implementation is loaded at any time)."""

    def start(impl: str) -> Child:
        t0 = time.perf_counter()
        child = children[impl] = Child(impl, folder, args)
        info = child.info
        print(
            f"  started {impl:<10} import {info['import_s']:.1f}s, load {info['load_s']:.1f}s, "
            f"RSS {info['rss_after_load_mib']:.0f} MiB ({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
        return child

    def warm_up(child: Child) -> None:
        child.warm_up()
        print(f"  warm-up {child.impl:<10} {child.info['warmup_s']:.1f}s (load average {load_average()})", flush=True)

    def run(child: Child, round_: int) -> None:
        r = child.run()
        print(
            f"  round {round_} {child.impl:<10} total {r['total']:6.2f}s = text {r['text']:.2f} + C {r['c']:.2f} "
            f"+ B {r['b']:.2f} + A {r['a']:.2f} (load average {load_average()})",
            flush=True,
        )

    def profile(chosen) -> None:
        for child in chosen:
            if args.profile and child.impl != "diffusers":
                print(f"  profiling {child.impl}", flush=True)
                child.profile()

    children: dict[str, Child] = {}
    try:
        if args.interleave:
            print("Running the children interleaved", flush=True)
            for impl in args.impls:
                start(impl)
            for child in children.values():
                warm_up(child)
            order = list(children.values())
            for i in range(args.runs):
                k = i % len(order)
                for child in order[k:] + order[:k]:
                    run(child, i + 1)
            profile(children.values())
            return {impl: child.finish() for impl, child in children.items()}
        print("Running the children one after another", flush=True)
        results = {}
        for impl in args.impls:
            child = start(impl)
            warm_up(child)
            for i in range(args.runs):
                run(child, i + 1)
            profile([child])
            results[impl] = child.finish()
        return results
    finally:
        for child in children.values():
            child.kill()


def compare_embeddings(ours: Path, theirs: Path) -> str:
    from safetensors.torch import load_file

    a, b = load_file(str(ours)), load_file(str(theirs))
    parts = []
    for key in ("clip_text", "clip_text_pooled"):
        if a[key].shape != b[key].shape:
            return f"{key} shapes differ: ours {tuple(a[key].shape)}, diffusers {tuple(b[key].shape)}"
        diff, scale = (a[key] - b[key]).abs().max().item(), b[key].abs().max().item()
        parts.append(f"{key} {tuple(a[key].shape)} max|diff| {diff:.1e} (max|x| {scale:.2f})")
    return "; ".join(parts)


def parent(args: argparse.Namespace) -> None:
    bench = bench_file()
    protocol = bench["protocol"]
    print(f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, {THREADS} torch threads, load average {load_average()}")
    print(
        f"Config {CONFIG!r} at {args.size}x{args.size}, {DTYPE_NAMES[args.dtype]}, seed {protocol['seed']}, "
        f"Stage C {protocol['stage_c']['steps']} steps cfg {protocol['stage_c']['cfg']}, "
        f"Stage B {protocol['stage_b']['steps']} steps; 1 warm-up + best of {args.runs} generations per child, "
        f"{'interleaved' if args.interleave else 'one child after another'}"
    )
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cascade_bench_pipeline_") as tmp:
        folder = Path(args.workdir) if args.workdir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = folder / STAMP
        wanted = weights_stamp()
        if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
            print(f"Reusing the weights in {folder}", flush=True)
        else:
            print(f"Writing weights to {folder}", flush=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--write-weights", str(folder)]
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                raise SystemExit("writing the weights failed")
            stamp.write_text(json.dumps(wanted))
        results = run_children(folder, args)
        text_check = None
        if "ours" in results and "diffusers" in results:
            text_check = compare_embeddings(results["ours"]["embeddings"], results["diffusers"]["embeddings"])

    base = results.get("diffusers")
    rows = []
    for impl, info in results.items():
        best = info["best"]
        ratio = f"{best['total'] / base['best']['total']:.2f}" if base else "-"
        previews = f"({best['previews']:.2f})" if impl != "diffusers" else "-"
        rows.append(
            [
                f"{impl} ({IMPLS[impl][0]})",
                f"{best['text']:.2f}",
                f"{best['c']:.2f}",
                previews,
                f"{best['b']:.2f}",
                f"{best['a']:.2f}",
                f"{best['total']:.2f}",
                ratio,
                f"{info['peak_mib']:.0f}",
                f"{info['gen_peak_mib']:.0f}" if info["peak_reset"] else "n/a",
            ]
        )
    if base and "ours" in results:
        ours, theirs = results["ours"]["best"], base["best"]
        rows.append(
            [
                "ratio ours / diffusers",
                *(f"{ours[k] / theirs[k]:.2f}" for k in ("text", "c")),
                "",
                *(f"{ours[k] / theirs[k]:.2f}" for k in ("b", "a", "total")),
                "",
                f"{results['ours']['peak_mib'] / base['peak_mib']:.2f}",
                f"{results['ours']['gen_peak_mib'] / base['gen_peak_mib']:.2f}",
            ]
        )

    print()
    versions = base or next(iter(results.values()))
    print(
        f"Machine: {cpu_model()} | torch {versions['torch']} | diffusers {base['diffusers'] if base else '-'} | "
        f"{THREADS} threads | {DTYPE_NAMES[args.dtype]} | {CONFIG} @ {args.size}x{args.size} | "
        f"best total of {args.runs} after "
        f"1 warm-up | ours memory mode {args.memory} (ours-sequential: sequential)"
    )
    print(
        table(
            [
                "implementation",
                "text s",
                "Stage C s",
                "(previews)",
                "Stage B s",
                "Stage A s",
                "total s",
                "total / diffusers",
                "peak RSS MiB",
                "gen peak RSS MiB",
            ],
            rows,
        )
    )
    print()
    detail = [
        [
            impl,
            f"{info['import_s']:.2f}",
            f"{info['load_s']:.2f}",
            f"{info['rss_after_load_mib']:.0f}",
            f"{info['load_peak_mib']:.0f}",
            f"{info['warmup_s']:.2f}",
            " ".join(f"{r['total']:.2f}" for r in info["runs"]),
            " ".join(f"{k}{v}" for k, v in info["best"]["steps"].items()),
            f"{tuple(info['image']['shape'])} mean {info['image']['mean']:.3f} std {info['image']['std']:.3f}",
        ]
        for impl, info in results.items()
    ]
    print(
        table(
            [
                "process",
                "import s",
                "load s",
                "RSS after load MiB",
                "load peak MiB",
                "warm-up s",
                "run totals s",
                "steps",
                "image",
            ],
            detail,
        )
    )
    if text_check:
        print(f"\nPrompt embeddings, ours vs diffusers (prompt + empty negative): {text_check}")
    seen = bench.get("baseline_seen", {}).get(f"{CONFIG}@{args.size}")
    if seen:
        stages = ", ".join(f"{k} {v}" for k, v in seen.get("stage_s", {}).items())
        print(f"Earlier diffusers numbers on this machine type ({CONFIG}@{args.size}): total {seen['best_total_s']} s")
        print(f"  ({stages}; peak RSS {seen.get('peak_rss_mib')} MiB)")
    for impl, info in results.items():
        for stage, ops in info.get("profile", {}).items():
            listed = ", ".join(f"{name} {sec:.2f}s ({share:.0%})" for name, sec, share in ops)
            print(f"Profile {impl}, stage {stage}: {listed}")
    if base:
        print(
            "\nsummary: "
            + "; ".join(
                f"{impl} / diffusers: time {info['best']['total'] / base['best']['total']:.2f}, "
                f"peak RSS {info['peak_mib'] / base['peak_mib']:.2f}"
                for impl, info in results.items()
                if impl != "diffusers"
            )
        )
    print(f"\nLoad average at the end {load_average()}; total wall time {time.perf_counter() - t_start:.1f}s")


def main(argv: list[str] | None = None) -> None:
    t_start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, help="image side in pixels, a multiple of 128 (default 512; cuda 1024)")
    parser.add_argument("--runs", type=int, default=2, help="timed generations after the warm-up (default 2)")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: full-size lite and full weights in bf16 at 1024x1024, batch 4 (benchmarks/gpu.py)",
    )
    parser.add_argument(
        "--impls",
        default=",".join(DEFAULT_IMPLS),
        help=f"comma-separated rows to run, in this order, from {', '.join(IMPLS)} (default {','.join(DEFAULT_IMPLS)})",
    )
    parser.add_argument(
        "--memory",
        default="resident",
        choices=("resident", "sequential"),
        help="our ModelSet memory mode (default resident; sequential re-reads weights every run on a CPU)",
    )
    parser.add_argument(
        "--no-interleave",
        dest="interleave",
        action="store_false",
        help="run the children one after another instead of keeping all loaded and alternating their runs",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the timed runs, profile one generation per row: top operators per stage",
    )
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPE_NAMES),
        default="fp32",
        help="precision of every network in every row (default fp32, the protocol's; bf16 pays off on CPUs with "
        "native bfloat16 such as AVX512-BF16 or AMX)",
    )
    parser.add_argument("--workdir", help="keep (and reuse) weights and results in this folder, not a temp folder")
    parser.add_argument("--write-weights", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=tuple(IMPLS), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.t_start = t_start
    if args.device == "cuda":
        from benchmarks import gpu

        return gpu.main(["--batches", "4", "--runs", str(args.runs), "--size", str(args.size or 1024)])
    args.size = args.size or 512
    if args.size <= 0 or args.size % 128:
        parser.error(f"--size must be a positive multiple of 128, not {args.size}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in args.impls if i not in IMPLS]
    if unknown or not args.impls:
        parser.error(f"--impls takes names from {', '.join(IMPLS)}, not {args.impls}")
    if args.write_weights:
        write_weights(Path(args.write_weights))
    elif args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
