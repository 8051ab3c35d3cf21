"""Recording throughput vs the bare forward pass of the same model, same tokens, same batch shape.

    python eval/perf_record.py [--tokens 65536] [--units 0:512] [--hook blocks.6.mlp.hook_post]
    python eval/perf_record.py --sae embedded      # the embedded SAE's 4096 latents (the GPU goal: >= 0.85)

The bare forward pass and the whole recorder run (forward, SAE encoder, streaming top-k / reservoirs /
statistics, the final store write) alternate `--repeats` times in one process, so machine load hits
both alike; the best of each is compared. Both stop at the same layer, on the device the model loaded
on (a GPU when there is one). Prints JSON: {"record_tok_s", "forward_tok_s", "ratio", ...}.
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--units", default="0:512", help="neuron (or latent) indices, or 'all'")
    ap.add_argument("--hook", default="blocks.6.mlp.hook_post")
    ap.add_argument("--sae", default=None, help="record this SAE's latents instead ('embedded' or a folder)")
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    subject = load_subject()
    units = parse_units(args.units) if args.units != "all" else None
    if args.sae:
        from autointerp.subject.sae import sae_source

        source, info = sae_source(subject, args.sae, latents=units)
        sources, hook = [source], info.hook
    else:
        sources, hook = neuron_sources(subject, [args.hook], units), args.hook
    settings = RecordSettings(
        model=subject.name,
        hooks=[hook],
        units=units,
        max_tokens=args.tokens,
        ctx=args.ctx,
        batch_size=args.batch_size,
    )
    rec = Recorder(subject, settings, sources)
    device = rec.device
    n_windows = args.tokens // args.ctx
    wins = list(
        itertools.islice(
            corpus.windows(settings.corpus, subject.tokenizer, args.ctx, subject.bos_id), n_windows
        )
    )
    batches = [torch.tensor(wins[i : i + args.batch_size]) for i in range(0, len(wins), args.batch_size)]
    rec.forward(batches[0].to(device))  # warm-up

    def bare_forward() -> float:
        """The forward pass alone, from host token ids (as the recorder gets them) to hook activations."""
        sync(device)
        t = time.perf_counter()
        for b in batches:
            rec.forward(b.to(device))
        sync(device)
        return time.perf_counter() - t

    forward, record = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # alternate, so machine load hits both alike
            forward.append(bare_forward())
            t = time.perf_counter()
            rec.run(Store(Path(tmp) / f"bench{r}.db"))  # a new store: a whole run each time
            sync(device)
            record.append(time.perf_counter() - t)
    tokens = len(wins) * args.ctx
    forward_s, record_s = min(forward), min(record)
    print(
        json.dumps(
            {
                "model": subject.name,
                "hook": hook,
                "source": sources[0].key,
                "units": len(sources[0].indices),
                "tokens": tokens,
                "ctx": args.ctx,
                "batch_size": args.batch_size,
                "stop_at_layer": subject.stop_layer([hook]),
                "repeats": args.repeats,
                "record_tok_s": round(tokens / record_s, 1),
                "forward_tok_s": round(tokens / forward_s, 1),
                "record_s_each": [round(x, 2) for x in record],
                "forward_s_each": [round(x, 2) for x in forward],
                "ratio": round(forward_s / record_s, 3),
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
