"""Benchmark recording attention heads: every head of layers 0..L recorded (the hooked forward pass
stopped after L, each head's activation and top sources, the top-k / reservoir buffers and statistics)
against the bare forward pass to L, on the same token batches, interleaved in one run. Prints JSON with
the ratio (the issue's goal: at most 1.3).

    python eval/perf_heads.py [--layer 5] [--batches 6] [--batch-size 32] [--ctx 64] [--activation max-attn]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from autointerp import corpus
from autointerp.subject.model import load_subject
from autointerp.subject.recorder import Recorder, SourceState, head_sources
from autointerp.types import RecordSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", type=int, default=5)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--activation", default="max-attn")
    args = ap.parse_args()

    subject = load_subject()
    n_heads = subject.head_counts["blocks.0.attn"]
    spec = [f"{layer}.{h}" for layer in range(args.layer + 1) for h in range(n_heads)]
    settings = RecordSettings(
        model=subject.name, hooks=[], heads=spec, ctx=args.ctx, head_activation=args.activation
    )
    sources = head_sources(subject, spec, args.activation)
    rec = Recorder(subject, settings, sources)
    states = {s.key: SourceState.new(settings, len(s.indices), 8) for s in sources}
    gen = torch.Generator().manual_seed(0)
    windows = corpus.windows(["default"], subject.tokenizer, args.ctx, subject.bos_id)
    batches = [
        torch.tensor(list(itertools.islice(windows, args.batch_size)), dtype=torch.long)
        for _ in range(args.batches + 1)
    ]
    bare_hook = [f"blocks.{args.layer}.hook_resid_post"]

    def bare(toks: torch.Tensor) -> None:
        subject.hook_acts(toks, bare_hook)

    def heads(toks: torch.Tensor) -> None:
        acts = rec.forward(toks)
        special = rec.special_positions(toks)
        key_mask = torch.isin(toks, rec.key_ids)
        for src in sources:
            value, src_pos, src_w = src.head.read(acts, key_mask)
            states[src.key].update(value, toks.to(torch.int32), gen, None, special, (src_pos, src_w))

    bare(batches[0])  # warm-up (first-call allocations) for both ways
    heads(batches[0])
    times = {"bare": 0.0, "heads": 0.0}
    for i, toks in enumerate(batches[1:]):
        for name, fn in (
            (("bare", bare), ("heads", heads)) if i % 2 == 0 else (("heads", heads), ("bare", bare))
        ):
            t0 = time.perf_counter()
            fn(toks)
            times[name] += time.perf_counter() - t0
    tokens = args.batches * args.batch_size * args.ctx
    print(
        json.dumps(
            {
                "model": subject.name,
                "layers": f"0..{args.layer}",
                "heads": len(spec),
                "activation": args.activation,
                "tokens": tokens,
                "bare_s": round(times["bare"], 3),
                "heads_s": round(times["heads"], 3),
                "bare_tokens_per_s": round(tokens / times["bare"]),
                "heads_tokens_per_s": round(tokens / times["heads"]),
                "ratio": round(times["heads"] / times["bare"], 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
