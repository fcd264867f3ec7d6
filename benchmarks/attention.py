"""Attention on the CPU in bf16: PyTorch's fused kernel (``F.scaled_dot_product_attention``, what diffusers runs)
against our head-by-head oneDNN route (``cascade_studio.networks.attention.bf16_attention``), at the attention shapes
of the ``medium`` Stage C and Stage B (and the token counts of the full models, which have the same heads of 64).

    .venv/bin/python benchmarks/attention.py [--threads 1,2] [--runs 12]

Rows are (batch, heads, queries, keys): a classifier-free-guidance Stage C call (batch 2; image tokens plus the 85
condition tokens as keys) and a Stage B call (batch 1, decoder guidance off; plus its 4 condition tokens). Each
time is the median of ``--runs`` calls alternating between the two; the error is the largest and the mean absolute
difference to float64 attention on the same bf16 inputs. The route runs here whatever ``MIN_TOKENS``, ``MAX_THREADS``
and the CPU's bf16 support say (the pipeline takes it only where those allow).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_model, table  # noqa: E402
from cascade_studio.networks.attention import bf16_attention  # noqa: E402
from cascade_studio.networks.linear import cpu_has_native_bf16  # noqa: E402
from cascade_studio.pipeline import heap  # noqa: E402

#: (where, batch, heads, queries, keys); the medium networks' heads (12 in Stage C, 9 in Stage B), 64 wide.
SHAPES = [
    ("Stage C at 768²", 2, 12, 18**2, 18**2 + 85),
    ("Stage C at 1024²", 2, 12, 24**2, 24**2 + 85),
    ("Stage C at 2048²", 2, 12, 48**2, 48**2 + 85),
    ("Stage B level 3 at 1024²", 1, 9, 16**2, 16**2 + 4),
    ("Stage B level 2 at 1024²", 1, 9, 32**2, 32**2 + 4),
    ("Stage B level 2 at 2048²", 1, 9, 64**2, 64**2 + 4),
]
HEAD = 64


def medians(fns, inputs: tuple[torch.Tensor, ...], runs: int) -> list[float]:
    """Median seconds of each function on ``inputs``, called in turn so that the machine's load hits all alike."""
    for fn in fns:
        fn(*inputs)
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn(*inputs)
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="2", help="torch thread counts to run, comma-separated (e.g. 1,2)")
    parser.add_argument("--runs", type=int, default=12)
    args = parser.parse_args(argv)
    print(f"{cpu_model()} | torch {torch.__version__} | bf16 | native bf16: {cpu_has_native_bf16()}")
    rows = []
    with heap.kept_heap(), torch.inference_mode():  # as a CPU job runs
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for where, b, h, n, m in SHAPES:
                g = torch.Generator().manual_seed(0)
                q, k, v = (torch.randn(b, h, t, HEAD, generator=g).bfloat16() for t in (n, m, m))
                implementations = (F.scaled_dot_product_attention, bf16_attention)
                fused_s, route_s = medians(implementations, (q, k, v), args.runs)
                exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
                errors = [(fn(q, k, v).double() - exact).abs() for fn in implementations]
                rows.append(
                    [
                        str(threads),
                        where,
                        f"({b}, {h}, {n}, {m})",
                        f"{fused_s * 1e3:.2f}",
                        f"{route_s * 1e3:.2f}",
                        f"{route_s / fused_s:.2f}",
                        " / ".join(f"{e.max().item():.1e}, {e.mean().item():.1e}" for e in errors),
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    headers = ["threads", "where", "(batch, heads, queries, keys)", "fused ms", "route ms", "route/fused"]
    print()
    print(table([*headers, "max, mean error: fused / route"], rows))


if __name__ == "__main__":
    main()
