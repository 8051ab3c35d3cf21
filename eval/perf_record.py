"""Recording throughput vs the bare forward pass of the same model, same tokens, same batch shape.

    python eval/perf_record.py [--tokens 65536] [--units 0:512] [--hook blocks.6.mlp.hook_post]

Prints JSON: {"record_tok_s", "forward_tok_s", "ratio", ...}. The forward pass is stopped at the same
layer the recorder stops at; record_tok_s is the whole `record` run (tokenizing, forward, streaming
top-k / reservoirs / statistics, and the final store write).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch

from autointerp import corpus
from autointerp.store import Store
from autointerp.subject.model import load_subject
from autointerp.subject.recorder import Recorder, neuron_sources
from autointerp.types import RecordSettings
from autointerp.units import parse_units


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--units", default="0:512")
    ap.add_argument("--hook", default="blocks.6.mlp.hook_post")
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    subject = load_subject()
    units = parse_units(args.units) if args.units != "all" else None
    settings = RecordSettings(
        model=subject.name,
        hooks=[args.hook],
        units=units,
        max_tokens=args.tokens,
        ctx=args.ctx,
        batch_size=args.batch_size,
    )
    rec = Recorder(subject, settings, neuron_sources(subject, [args.hook], units))
    n_windows = args.tokens // args.ctx
    wins = list(
        itertools.islice(
            corpus.windows(settings.corpus, subject.tokenizer, args.ctx, subject.bos_id), n_windows
        )
    )
    batches = [torch.tensor(wins[i : i + args.batch_size]) for i in range(0, len(wins), args.batch_size)]
    rec.forward(batches[0])  # warm-up

    def bare_forward() -> float:
        t = time.perf_counter()
        for b in batches:
            rec.forward(b)
        return time.perf_counter() - t

    fwd_before = bare_forward()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = rec.run(Store(Path(tmp) / "bench.db"))
        record_s = time.perf_counter() - t
    fwd_after = bare_forward()
    forward_s = (fwd_before + fwd_after) / 2
    tokens = len(wins) * args.ctx
    print(
        json.dumps(
            {
                "model": subject.name,
                "hook": args.hook,
                "units": result.n_units,
                "tokens": tokens,
                "ctx": args.ctx,
                "batch_size": args.batch_size,
                "stop_at_layer": subject.stop_layer([args.hook]),
                "record_tok_s": round(tokens / record_s, 1),
                "forward_tok_s": round(tokens / forward_s, 1),
                "forward_tok_s_before_after": [round(tokens / fwd_before, 1), round(tokens / fwd_after, 1)],
                "ratio": round(forward_s / record_s, 3),
                "device": str(subject.model.cfg.device),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
