"""Text encoder speed: our masked bigG-style forward against open_clip's own blocks, on the ``medium`` tower.

The ``medium`` text encoder of /work/shared/bench/configs.json (width 512, 6 layers, 8 heads, vocab
49408, exact GELU) with seeded random weights, float32, 2 torch threads, the protocol's prompt and the
empty negative prompt tokenised once (batch 2, 77 tokens). Rows, timed in turns (``--runs`` rounds,
each row once per round, best and median reported):

* ``ours``: ``TextEncoder.encode_tokens`` (batch-first blocks, ``F.linear`` + ``scaled_dot_product_attention``);
* ``open_clip blocks``: the same tower's ``ResidualAttentionBlock`` forwards with our additive causal +
  key-padding mask (B·heads, L, L), i.e. what ``encode_tokens`` ran before: ``nn.MultiheadAttention``
  with ``batch_first=True`` transposes to sequence-first and projects a non-contiguous input;
* ``transformers``: ``CLIPTextModelWithProjection`` (sdpa) with the same weights and ``attention_mask``.

The script also prints the largest differences of ``clip_text`` / ``clip_text_pooled`` between the rows::

    .venv/bin/python benchmarks/text_encoder.py --runs 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_model, table  # noqa: E402
from benchmarks.pipeline import BOS_ID, CONFIG, EOS_ID, PAD_ID, THREADS, bench_file, open_clip_text_cfg  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument("--threads", type=int, default=THREADS)
    args = parser.parse_args(argv)

    import torch
    from open_clip.model import _build_text_tower

    from cascade_studio.pipeline.conditioning import TextEncoder
    from cascade_studio.pipeline.demo import randomize_
    from tests.support.hf_clip import hf_text_model

    torch.set_num_threads(args.threads)
    bench = bench_file()
    cfg = bench["configs"][CONFIG]["text_encoder"]
    clip_cfg = open_clip_text_cfg(cfg)
    # open_clip's own tower: the "open_clip blocks" row runs its blocks' forward; ours reads the same tensors
    tower = randomize_(
        _build_text_tower(clip_cfg["embed_dim"], clip_cfg["text_cfg"], False), bench["protocol"]["seed"] + 4
    )
    tower.attn_mask = tower.build_causal_mask()
    encoder = TextEncoder(tower)
    hf = hf_text_model(tower, cfg, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    hf.set_attn_implementation("sdpa")
    tokens = encoder.tokenize([bench["protocol"]["prompt"], ""])
    heads = tower.transformer.resblocks[0].attn.num_heads
    hf_mask = encoder.attention_mask(tokens)[:, 0, -1].long()  # the last query sees every non-padding key

    def open_clip_blocks():
        allowed = encoder.attention_mask(tokens)[:, 0]
        mask = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf")).repeat_interleave(heads, dim=0)
        x = tower.token_embedding(tokens) + tower.positional_embedding
        for block in tower.transformer.resblocks:  # open_clip >= 2.23: batch-first blocks
            x = block(x, attn_mask=mask)
        eot = encoder.eot_positions(tokens)
        return x, (tower.ln_final(x[torch.arange(len(x)), eot]) @ tower.text_projection).unsqueeze(1)

    def transformers():
        out = hf(input_ids=tokens, attention_mask=hf_mask, output_hidden_states=True)
        return out.hidden_states[-1], out.text_embeds.unsqueeze(1)

    rows = {"ours": lambda: encoder.encode_tokens(tokens), "open_clip blocks": open_clip_blocks}
    rows["transformers (sdpa)"] = transformers
    times: dict[str, list[float]] = {name: [] for name in rows}
    with torch.inference_mode():
        results = {name: fn() for name, fn in rows.items()}  # warm-up
        for i in range(args.runs):
            names = list(rows)
            for name in names[i % len(names) :] + names[: i % len(names)]:
                start = time.perf_counter()
                rows[name]()
                times[name].append(time.perf_counter() - start)

    print(f"{CONFIG} text encoder, batch 2 x 77 tokens, float32, {args.threads} threads, {cpu_model()}")
    ours = min(times["ours"])
    body = [
        [name, f"{min(t) * 1e3:.1f}", f"{statistics.median(t) * 1e3:.1f}", f"{min(t) / ours:.2f}"]
        for name, t in times.items()
    ]
    print(table(["row", "best ms", "median ms", "x ours"], body))
    for name, (text, pooled) in results.items():
        if name != "ours":
            d_text = float((text - results["ours"][0]).abs().max())
            d_pooled = float((pooled - results["ours"][1]).abs().max())
            print(f"max |ours - {name}|: clip_text {d_text:.2e}, clip_text_pooled {d_pooled:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
