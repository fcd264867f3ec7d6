"""What a LoRA's text-encoder part costs a job's one text encoding: the real ViT-bigG-14 text tower (1280 wide,
32 layers) with random weights encodes a prompt and a negative prompt, without a LoRA and with a random
kohya-layout text-encoder part of rank ``--rank`` on every layer (q, k, v, out_proj, fc1, fc2) and on
``text_projection``, applied the way a job applies it (``TextEncoder.applying``).

    .venv/bin/python benchmarks/lora_text.py [--rank 16] [--runs 5] [--dtype fp32|bf16]

Runs alternate between the two cases; each case's best time is reported with its ratio to the plain encoding. Ends
by checking that the plain encoding after the LoRA equals the one before, bit for bit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_model, table  # noqa: E402
from cascade_studio.networks.lora import LoraDelta  # noqa: E402
from cascade_studio.pipeline.conditioning import BIGG_TEXT_CONFIG, TextEncoder, build_text_tower  # noqa: E402
from cascade_studio.pipeline.demo import randomize_  # noqa: E402

PROMPTS = ["a photograph of an astronaut riding a horse, highly detailed", ""]


def text_deltas(encoder: TextEncoder, rank: int) -> list[LoraDelta]:
    """Rank-``rank`` deltas on every Linear layer, every packed q/k/v projection and the projection matrix."""
    g = torch.Generator().manual_seed(1)

    def delta(module: str, out: int, inp: int, rows=None) -> LoraDelta:
        return LoraDelta(
            module, torch.randn(rank, inp, generator=g) * 0.01, torch.randn(out, rank, generator=g), 1.0, rows
        )

    deltas = []
    for i, block in enumerate(encoder.tower.transformer.resblocks):
        width = block.attn.in_proj_weight.shape[1]
        base = f"transformer.resblocks.{i}"
        deltas += [delta(f"{base}.attn", width, width, (j * width, (j + 1) * width)) for j in range(3)]
        for name in ("attn.out_proj", "mlp.c_fc", "mlp.c_proj"):
            linear = encoder.tower.get_submodule(f"{base}.{name}")
            deltas.append(delta(f"{base}.{name}", linear.out_features, linear.in_features))
    projection = encoder.tower.text_projection
    deltas.append(delta("text_projection", projection.shape[1], projection.shape[0]))
    return deltas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--runs", type=int, default=5, help="timed encodings per case (default 5)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    encoder = TextEncoder(randomize_(build_text_tower(BIGG_TEXT_CONFIG), 0).to(dtype))
    deltas = text_deltas(encoder, args.rank)
    best = {"no LoRA": float("inf"), f"text encoder, rank {args.rank}": float("inf")}
    with torch.inference_mode():
        plain = encoder.encode(PROMPTS)  # also the warm-up
        for _ in range(args.runs):
            for case in best:
                start = time.perf_counter()
                if case == "no LoRA":
                    encoder.encode(PROMPTS)
                else:
                    with encoder.applying([(deltas, 0.8)]):
                        encoder.encode(PROMPTS)
                best[case] = min(best[case], time.perf_counter() - start)
        after = encoder.encode(PROMPTS)
    base = best["no LoRA"]
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.dtype}")
    print(table(["case", "encode s (best)", "ratio"], [[c, f"{t:.3f}", f"{t / base:.2f}x"] for c, t in best.items()]))
    same = all(torch.equal(a, b) for a, b in zip(plain, after, strict=True))
    print("plain encoding after the LoRA is bit-identical:", same)
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
