"""Do contrastive explanations (top examples + verified counterfactuals + hard negatives) score higher than
top-only ones? Same units, same explainer and simulator, scored on the correlation and counterfactual scorers.

    python eval/bench_contrastive.py [--llm local:qwen2.5-coder-1.5b] [--units 8] [--tokens 40000]
                                     [--n-examples 4] [--reference highlight]

Records the embedded SAE's 4096 latents over `--tokens` corpus tokens, draws `--units` latents (seed 0)
among those firing on 0.2%-5% of tokens, generates verified counterfactuals for them, then explains
each with `top` and with `contrastive` (and the `--reference` methods, reported beside them) and scores
them. The counterfactual scorer only uses edits of
examples the explainer did not read (see sampling.py), so neither method is scored on what it saw.
Prints JSON: per method the mean of each scorer, and the paired difference contrastive - top with a
95% bootstrap interval, the number of units where contrastive wins, and the counterfactual yield.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import tempfile
import time
from pathlib import Path

from autointerp import record_units
from autointerp.bench.meta import bootstrap_ci
from autointerp.counterfactual import CounterfactualSettings, generate_counterfactuals
from autointerp.llm import get_llm
from autointerp.pipeline import Labeller, LabelSettings
from autointerp.sampling import SampleSettings, sample_unit
from autointerp.store import Store
from autointerp.subject.model import load_subject
from autointerp.subject.sae import sae_unit_name

HOOK = "blocks.6.hook_resid_post"
METHODS = ["top", "contrastive"]
SCORERS = ["correlation", "counterfactual"]


def pick_units(store: Store, n: int, lo: float = 0.002, hi: float = 0.05) -> list[str]:
    eligible = sorted(u.id for u in store.units(hook=HOOK) if lo <= u.stats.frac_firing <= hi)
    return sorted(random.Random(0).sample(eligible, min(n, len(eligible))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm", default="local:qwen2.5-coder-1.5b")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=40_000)
    ap.add_argument("--n-examples", type=int, default=4, help="top examples per unit given `off` edits")
    ap.add_argument("--reference", default="highlight", help="comma-separated methods to report beside")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--db", default=None, help="reuse a store (default: a temporary one); resumes")
    args = ap.parse_args()

    db = Path(args.db or Path(tempfile.mkdtemp()) / "contrastive.db")
    subject = load_subject()
    t0 = time.perf_counter()
    record_units(db, [], saes={HOOK: "embedded"}, subject=subject, max_tokens=args.tokens)
    t_record = time.perf_counter() - t0
    store = Store(db)
    units = pick_units(store, args.units)
    llm = get_llm(args.llm, store, concurrency=args.concurrency)

    t0 = time.perf_counter()
    cf_settings = CounterfactualSettings(n_examples=args.n_examples, n_on=1)
    cf = generate_counterfactuals(store, subject, units, llm, cf_settings)
    t_cf = time.perf_counter() - t0

    methods = METHODS + [m for m in args.reference.split(",") if m and m not in METHODS]
    s = LabelSettings(
        explainer=args.llm, simulator=args.llm, methods=methods, scorers=SCORERS, concurrency=args.concurrency
    )
    labeller = Labeller(store, s, llm, llm)
    t0 = time.perf_counter()
    summary = asyncio.run(labeller.run(units))
    t_label = time.perf_counter() - t0

    scores: dict[str, dict[str, dict[str, float | None]]] = {m: {} for m in methods}
    for r in summary.results:
        scores[r.method][r.unit_id] = r.scores
    per_unit = []
    for uid in units:
        sample = sample_unit(store, uid, s.sample)
        per_unit.append(
            {
                "unit": uid,
                "frac_firing": round(sample.unit.stats.frac_firing, 4),
                "shown_counterfactuals": sum(e.kind == "counterfactual" for e in sample.contrast),
                "held_out_pairs": len(sample.counterfactual_pairs),
                **{
                    m: {
                        "explanation": next(
                            (r.explanation for r in summary.results if r.unit_id == uid and r.method == m),
                            None,
                        ),
                        **scores[m].get(uid, {}),
                    }
                    for m in methods
                },
            }
        )

    def value(m: str, uid: str, scorer: str) -> float:
        v = scores[m].get(uid, {}).get(scorer)
        return math.nan if v is None else float(v)

    def mean_of(m: str, scorer: str) -> dict:
        vals = [v for u in units if not math.isnan(v := value(m, u, scorer))]
        return {"n": len(vals), "mean": round(sum(vals) / len(vals), 4) if vals else None}

    result: dict = {}
    for scorer in SCORERS:
        paired = [
            (value("top", u, scorer), value("contrastive", u, scorer))
            for u in units
            if not math.isnan(value("top", u, scorer)) and not math.isnan(value("contrastive", u, scorer))
        ]
        diffs = [c - t for t, c in paired]
        result[scorer] = {
            "n_units": len(paired),
            "mean_top": round(sum(t for t, _ in paired) / len(paired), 4) if paired else None,
            "mean_contrastive": round(sum(c for _, c in paired) / len(paired), 4) if paired else None,
            "mean_diff": round(sum(diffs) / len(diffs), 4) if diffs else None,
            "diff_ci95": [round(x, 4) for x in bootstrap_ci(diffs)],
            "contrastive_wins": sum(d > 0 for d in diffs),
            "ties": sum(d == 0 for d in diffs),
            "all_methods_mean": {m: mean_of(m, scorer) for m in methods},
        }
    print(
        json.dumps(
            {
                "subject": f"gemma-3-270m {HOOK} sae:{sae_unit_name('embedded')}",
                "llm": args.llm,
                "tokens": args.tokens,
                "units": len(units),
                "scores": result,
                "counterfactuals": cf.totals(),
                "counterfactual_settings": cf_settings.model_dump(),
                "failures": [r.model_dump() for r in summary.failures],
                "seconds": {
                    "record": round(t_record),
                    "counterfactuals": round(t_cf),
                    "label": round(t_label),
                },
                "sample_settings": SampleSettings().model_dump(),
                "per_unit": per_unit,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
