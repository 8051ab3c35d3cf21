"""Counterfactual quality on a fixed set of units: LLM-proposed edits vs a random-word-deletion baseline.

    python eval/bench_counterfactual.py [--llm local:qwen2.5-coder-1.5b] [--units 8] [--tokens 20000]

Records blocks.6.mlp.hook_post units 0..63 of the embedded Gemma 3 270M on `--tokens` corpus tokens
(ctx 64), takes the `--units` with the highest max activation, and runs `generate_counterfactuals`.
Prints JSON: the share of LLM candidates that verify on the subject model, the mean activation drop of
the verified `off` edits, the minimal-example success rate (a suffix shorter than the prefix keeps
>= keep_frac of the peak), and the same verify rate for deleting one random word of the same snippet
(`ratio` = LLM verify rate / baseline verify rate, `off` direction).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from autointerp import record_units
from autointerp.counterfactual import CounterfactualSettings, UnitProbe, generate_counterfactuals
from autointerp.counterfactual.probe import body_start
from autointerp.llm import get_llm
from autointerp.store import Store
from autointerp.subject.model import load_subject

HOOK = "blocks.6.mlp.hook_post"


def delete_random_word(text: str, rng: random.Random) -> str:
    words = list(re.finditer(r"\S+", text))
    if len(words) < 2:
        return text
    w = rng.choice(words)
    return (text[: w.start()] + text[w.end() :]).replace("  ", " ")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm", default="local:qwen2.5-coder-1.5b")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--n-examples", type=int, default=3)
    ap.add_argument("--n-on", type=int, default=1)
    ap.add_argument("--db", default=None, help="reuse a store (default: a temporary one)")
    args = ap.parse_args()

    db = Path(args.db or Path(tempfile.mkdtemp()) / "bench.db")
    subject = load_subject()
    t0 = time.perf_counter()
    record_units(db, [HOOK], units=list(range(64)), subject=subject, max_tokens=args.tokens, ctx=64, top_k=10)
    t_record = time.perf_counter() - t0
    store = Store(db)
    units = sorted(store.units(hook=HOOK), key=lambda u: -u.stats.max)[: args.units]
    settings = CounterfactualSettings(n_examples=args.n_examples, n_on=args.n_on)
    llm = get_llm(args.llm, store)
    t0 = time.perf_counter()
    summary = generate_counterfactuals(store, subject, [u.id for u in units], llm, settings)
    t_cf = time.perf_counter() - t0

    # Baseline: delete one random word of each `off` snippet the LLM was given, verified the same way.
    rng = random.Random(0)
    base_ok, base_n = 0, 0
    for res, unit in zip(summary.units, units, strict=True):
        probe = UnitProbe.for_unit(subject, store, unit)
        offs = [c for c in res.candidates if c.direction == "off" and c.status != "skipped"]
        edits = [delete_random_word(c.original_text, rng) for c in offs]
        for c, ids, acts in zip(
            offs, [probe.encode(e) for e in edits], probe.acts([probe.encode(e) for e in edits]), strict=True
        ):
            new = float(acts[body_start(ids, subject.bos_id) :].max())
            base_n += 1
            base_ok += new < settings.off_frac * c.original_act

    cands = [c for u in summary.units for c in u.candidates if c.status != "skipped"]
    off = [c for c in cands if c.direction == "off"]
    on = [c for c in cands if c.direction == "on"]
    ver_off = [c for c in off if c.status == "verified"]
    kept = [f for u in summary.units for f in u.minimal_kept_len_frac]
    n_min = sum(u.n_minimal for u in summary.units)
    llm_off_rate = len(ver_off) / len(off) if off else float("nan")
    base_rate = base_ok / base_n if base_n else float("nan")
    out = {
        "llm": args.llm,
        "subject": f"gemma-3-270m {HOOK}",
        "units": [u.id for u in units],
        "tokens_recorded": args.tokens,
        "candidates": len(cands),
        "parse_failed": sum(c.status == "parse_failed" for c in cands),
        "llm_error": sum(c.status == "llm_error" for c in cands),
        "verified_share": sum(c.status == "verified" for c in cands) / len(cands) if cands else None,
        "verified_share_off": llm_off_rate,
        "verified_share_on": sum(c.status == "verified" for c in on) / len(on) if on else None,
        "n_off": len(off),
        "n_on": len(on),
        "mean_drop_frac_verified_off": float(np.mean([1 - c.edited_act / c.original_act for c in ver_off]))
        if ver_off
        else None,
        "baseline_random_word_deletion_verified_share_off": base_rate,
        "ratio_llm_vs_baseline_off": llm_off_rate / base_rate if base_rate else None,
        "minimal_success_rate": sum(u.n_minimal_shortened for u in summary.units) / n_min if n_min else None,
        "minimal_mean_length_frac": float(np.mean(kept)) if kept else None,
        "hard_negatives": sum(u.n_hard_negatives for u in summary.units),
        "seconds_record": round(t_record, 1),
        "seconds_counterfactuals": round(t_cf, 1),
        "examples_verified": [
            {
                "unit": u.unit_id,
                "direction": c.direction,
                "original": c.original_text[-80:],
                "edited": (c.edited_text or "")[-80:],
                "acts": [round(c.original_act, 3), round(c.edited_act or 0, 3)],
            }
            for u in summary.units
            for c in u.verified
        ][:10],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
