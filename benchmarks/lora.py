"""What a LoRA costs a Stage C forward pass: the ``medium`` benchmark Stage C (/work/shared/bench/configs.json) with
random weights, one classifier-free-guidance call (batch 2) at an image side of ``--size``, timed without a LoRA and
with each of two random LoRAs applied the way a job applies them (``networks.lora.apply_loras``):

* ``reference``: the reference format, rank 4 on every attention matrix (each attention's ``out_proj`` and its
  packed q/k/v projection);
* ``every linear``: rank 16 on every ResBlock MLP layer, attention output and key/value mapper (how kohya-style
  trainers target "all linears").

    .venv/bin/python benchmarks/lora.py [--size 1024] [--runs 5] [--dtype fp32|bf16]

Runs alternate between the three cases so that a slow stretch of a shared machine hits them alike; each case's
best time is reported, with its ratio to the plain forward pass. Ends by checking that the plain output after the
LoRAs equals the one before, bit for bit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_model, table  # noqa: E402
from benchmarks.networks import latent_sizes  # noqa: E402
from cascade_studio.networks.lora import LoraDelta, apply_loras  # noqa: E402
from cascade_studio.pipeline.checkpoints import NETWORKS  # noqa: E402
from cascade_studio.pipeline.demo import randomize_  # noqa: E402
from cascade_studio.pipeline.heap import kept_heap  # noqa: E402
from cascade_studio.pipeline.lora import reference_lora_tensors, reference_slots  # noqa: E402
from tests.support.configs import bench_config  # noqa: E402


def cases(net: nn.Module) -> dict[str, list[LoraDelta] | None]:
    tensors = reference_lora_tensors(net, rank=4, std=0.1)
    reference = [
        LoraDelta(module, tensors[f"weights.{i}.lora_down"], tensors[f"weights.{i}.lora_up"], 0.25, rows)
        for i, (module, rows) in enumerate(reference_slots(net))
    ]
    g = torch.Generator().manual_seed(1)
    every = [
        LoraDelta(
            name,
            torch.randn(16, m.in_features, generator=g) * 0.01,
            torch.randn(m.out_features, 16, generator=g) * 0.01,
            1.0,
        )
        for name, m in net.named_modules()
        if isinstance(m, nn.Linear) and any(part in name for part in ("channelwise", "out_proj", "kv_mapper"))
    ]
    return {"no LoRA": None, "reference, rank 4": reference, "every linear, rank 16": every}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    parser.add_argument("--runs", type=int, default=5, help="timed forward passes per case (default 5)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(2)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16

    kwargs = dict(bench_config("medium")["stage_c"])
    net = randomize_(NETWORKS["stage_c"].build_class()(**kwargs), 0).to(dtype).eval().requires_grad_(False)
    side, _ = latent_sizes(args.size)
    g = torch.Generator().manual_seed(0)
    inputs = {
        "x": torch.randn(2, 16, side, side, generator=g),
        "r": torch.rand(2, generator=g),
        "clip_text": torch.randn(2, 77, kwargs["c_clip_text"], generator=g),
        "clip_text_pooled": torch.randn(2, 1, kwargs["c_clip_text_pooled"], generator=g),
        "clip_img": torch.randn(2, 1, kwargs["c_clip_img"], generator=g),
    }
    inputs = {k: v.to(dtype) for k, v in inputs.items()}
    lora_cases = cases(net)
    times: dict[str, list[float]] = {name: [] for name in lora_cases}
    print(f"Machine: {cpu_model()}, 2 torch threads; medium Stage C at {args.size}² ({side}×{side} latent), batch 2, "
          f"{args.dtype}; {args.runs} rounds after a warm-up, cases alternating", flush=True)  # fmt: skip
    with torch.inference_mode(), kept_heap():
        plain = None
        for round_ in range(args.runs + 1):
            for name, deltas in lora_cases.items():
                with net.reusing_condition(), apply_loras(net, [(deltas, 1.0)] if deltas else []):
                    net(**inputs)  # the step that projects the condition; the timed ones reuse it, as in a job
                    start = time.perf_counter()
                    out = net(**inputs)
                    elapsed = time.perf_counter() - start
                if round_ > 0:
                    times[name].append(elapsed)
                if deltas is None:
                    if plain is not None and not torch.equal(out, plain):
                        raise SystemExit("the plain output changed after a LoRA was applied and removed")
                    plain = out
    base = min(times["no LoRA"])
    rows = [
        [name, f"{min(t):.3f}", f"{min(t) / base:.3f}", " ".join(f"{x:.2f}" for x in t)] for name, t in times.items()
    ]
    print(table(["case", "best s", "/ no LoRA", "all runs s"], rows))
    print("plain output after the LoRAs: bit-identical to before")


if __name__ == "__main__":
    main()
