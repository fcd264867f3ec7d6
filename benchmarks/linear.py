"""The CPU's linear layers: PyTorch's ``F.linear`` (MKL in float32; what diffusers runs) against our oneDNN route
(``cascade_studio.networks.linear``), at the matrix shapes of the ``medium`` Stage C and Stage B.

    .venv/bin/python benchmarks/linear.py [--size 1024] [--dtype fp32|bf16] [--runs 5]

Rows are (tokens × in → out) for one classifier-free-guidance Stage C call (batch 2) and one Stage B call (batch
1, decoder guidance off): each ResBlock's two MLP layers and the attention's packed q/k/v and output projections.
For the first MLP layer the GELU that follows is timed too: ``F.gelu(F.linear(…))`` against the fused call.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_model, table  # noqa: E402
from benchmarks.networks import latent_sizes  # noqa: E402
from cascade_studio.networks.linear import linear, onednn_applies  # noqa: E402


def shapes(size: int) -> list[tuple[str, int, int, int, bool]]:
    """(name, rows, in, out, gelu after) at image side ``size``: Stage C at its latent side (two levels, 768 wide),
    Stage B at size/4 patched by 2 (four levels: 160, 288, 576, 576 wide)."""
    side_c, side_b = latent_sizes(size)
    c0 = side_c**2 * 2  # Stage C level 0 tokens, batch 2
    c1 = (side_c // 2) ** 2 * 2
    b = [((side_b // 2) >> i) ** 2 for i in range(4)]
    rows = [
        ("C mlp in", c0, 768, 3072, True),
        ("C mlp out", c0, 3072, 768, False),
        ("C qkv", c0, 768, 2304, False),
        ("C mlp in, level 1", c1, 768, 3072, True),
    ]
    for i, width in enumerate((160, 288, 576)):
        rows += [(f"B{i} mlp in", b[i], width, 4 * width, True), (f"B{i} mlp out", b[i], 4 * width, width, False)]
    rows.append(("B2 qkv", b[2], 576, 1728, False))
    return rows


def best_of(fn, inputs: tuple[torch.Tensor, ...], runs: int) -> float:
    fn(*inputs)
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(*inputs)
        best = min(best, time.perf_counter() - t0)
    return best


def linear_then_gelu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.gelu(F.linear(x, w, b))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    print(f"{cpu_model()} | torch {torch.__version__} | {args.threads} threads | {args.dtype} | {args.size}²")

    out = []
    totals = [0.0, 0.0]
    with torch.inference_mode():
        for name, m, k, n, gelu in shapes(args.size):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(m, k, generator=g).to(dtype)
            w = torch.randn(n, k, generator=g).to(dtype)
            b = torch.randn(n, generator=g).to(dtype)
            if not onednn_applies(x, w, b):
                raise SystemExit("the oneDNN route does not apply in this PyTorch build")
            flop = 2 * m * k * n
            plain = best_of(F.linear, (x, w, b), args.runs)
            ours = best_of(linear, (x, w, b), args.runs)
            row = [name, f"{m}×{k}→{n}", f"{flop / plain / 1e9:.0f}", f"{flop / ours / 1e9:.0f}", f"{ours / plain:.2f}"]
            if gelu:
                plain_g = best_of(linear_then_gelu, (x, w, b), args.runs)
                ours_g = best_of(functools.partial(linear, gelu=True), (x, w, b), args.runs)
                row += [f"{plain_g * 1e3:.1f}", f"{ours_g * 1e3:.1f}", f"{ours_g / plain_g:.2f}"]
                totals[0] += plain_g
                totals[1] += ours_g
            else:
                row += ["", "", ""]
                totals[0] += plain
                totals[1] += ours
            out.append(row)
    headers = ["layer", "shape", "F.linear GFLOP/s", "ours GFLOP/s", "ours/F.linear"]
    headers += ["+GELU F.linear ms", "+GELU ours ms", "ratio"]
    print(table(headers, out))
    print(f"summary: ours / F.linear over these layers (GELU included where it follows): {totals[1] / totals[0]:.2f}")


if __name__ == "__main__":
    main()
