"""Benchmark the embedded SAE: quality on held-out tokens, and the cost of recording its 4096 latents
against recording the bare hook (its 640 neurons) over the same tokens in the same run; also 640 latents
(same unit count: the encoder's own cost) and the streaming part alone (without building and writing
rows, which grows with the number of units). Prints JSON.

The default length is `autointerp record`'s default (200k tokens): the end-of-run write of every unit's
examples is a fixed cost (about 2-4 s for 4096 latents), so a short run mostly measures that.

    python eval/perf_sae.py [--eval-tokens 4096] [--record-tokens 200000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import timed

from autointerp.store import Store
from autointerp.subject.model import load_subject
from autointerp.subject.recorder import Recorder, neuron_sources
from autointerp.subject.sae import embedded_sae_path, load_sae, sae_source
from autointerp.subject.sae_train import evaluate_sae
from autointerp.types import RecordSettings

HOOK = "blocks.6.hook_resid_post"


_FINISH = {"s": 0.0}  # seconds spent turning buffers into rows and writing them (grows with unit count)
Recorder._collect = timed(Recorder._collect, _FINISH)
Store.write_units = timed(Store.write_units, _FINISH)


def record_seconds(subject, sources, tokens: int, db: Path, seed: int) -> tuple[float, float]:  # noqa: ANN001
    """(total seconds, streaming seconds: forward + unit activations + buffer updates) of one recording."""
    settings = RecordSettings(
        model=subject.name,
        hooks=[HOOK],
        max_tokens=tokens,
        ctx=64,
        batch_size=32,
        seed=seed,
        sae={HOOK: sources[0].sae} if sources[0].sae else {},
    )
    _FINISH["s"] = 0.0
    t0 = time.perf_counter()
    Recorder(subject, settings, sources).run(Store(db))
    total = time.perf_counter() - t0
    return total, total - _FINISH["s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--record-tokens", type=int, default=RecordSettings.model_fields["max_tokens"].default)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    subject = load_subject()
    sae, info = load_sae(embedded_sae_path())
    trained = info.metrics
    t0 = time.perf_counter()
    held_out = evaluate_sae(
        subject,
        sae,
        HOOK,
        ["default"],
        args.eval_tokens,
        ctx=trained["ctx"],
        skip_windows=trained["train_windows"] + 64,
    )  # past the training windows
    eval_s = time.perf_counter() - t0
    bare = neuron_sources(subject, [HOOK], None)
    latents, _ = sae_source(subject, embedded_sae_path())
    same, _ = sae_source(subject, embedded_sae_path(), latents=list(range(len(bare[0].indices))))
    times: dict[str, list[tuple[float, float]]] = {"bare": [], "sae": [], "sae_same_n": []}
    with tempfile.TemporaryDirectory() as tmp:
        record_seconds(subject, bare, 2048, Path(tmp) / "warm.db", seed=99)  # warm-up: corpus, kernels
        for r in range(args.repeats):  # alternate, so machine load hits both alike
            times["bare"].append(record_seconds(subject, bare, args.record_tokens, Path(tmp) / f"b{r}.db", r))
            times["sae"].append(
                record_seconds(subject, [latents], args.record_tokens, Path(tmp) / f"s{r}.db", r)
            )
            times["sae_same_n"].append(
                record_seconds(subject, [same], args.record_tokens, Path(tmp) / f"n{r}.db", r)
            )
    bare_s, sae_s = (min(t[0] for t in times[key]) for key in ("bare", "sae"))
    bare_stream, sae_stream = (min(t[1] for t in times[key]) for key in ("bare", "sae"))
    print(
        json.dumps(
            {
                "sae": info.name,
                "hook": HOOK,
                "width": info.d_sae,
                "k": info.k,
                "train": {
                    key: trained.get(key)
                    for key in ("train_tokens", "seconds", "tokens_per_s", "dead_frac_train")
                },
                "held_out": held_out.model_dump(),
                "held_out_eval_s": round(eval_s, 1),
                "record_tokens": args.record_tokens,
                "record_bare_hook_s": [round(t[0], 2) for t in times["bare"]],
                "record_sae_latents_s": [round(t[0], 2) for t in times["sae"]],
                "record_bare_units": len(bare[0].indices),
                "record_sae_units": len(latents.indices),
                "ratio_sae_over_bare": round(sae_s / bare_s, 3),
                "stream_bare_s": round(bare_stream, 2),
                "stream_sae_s": round(sae_stream, 2),
                "ratio_stream_sae_over_bare": round(sae_stream / bare_stream, 3),
                "end_write_bare_s": round(bare_s - bare_stream, 2),
                "end_write_sae_s": round(sae_s - sae_stream, 2),
                # the encoder's own cost: 640 latents (full TopK pre-activation) vs the hook's 640 neurons
                "record_sae_640_latents_s": [round(t[0], 2) for t in times["sae_same_n"]],
                "ratio_sae_640_over_bare": round(min(t[0] for t in times["sae_same_n"]) / bare_s, 3),
                "target_ratio": 1.3,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
