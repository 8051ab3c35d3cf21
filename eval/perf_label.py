"""End-to-end units/hour of `label` with the embedded models, and where the time goes.

    python eval/perf_label.py [--units 6] [--scorers correlation,detection]

Records (once, cached) neurons of Gemma 3 270M, then labels them with no LLM cache. Prints JSON:
units/hour, seconds per unit split into explanation and each scorer, scoring examples per unit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import bench_store

from autointerp import label


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=6)
    ap.add_argument("--first", type=int, default=100)
    ap.add_argument("--scorers", default="correlation,detection")
    ap.add_argument("--explainer", default="local:qwen2.5-coder-1.5b")
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    store, unit_ids = bench_store(args.units, first=args.first)
    t = time.perf_counter()
    summary = label(
        store.path,
        unit_ids,
        explainer=args.explainer,
        scorers=args.scorers.split(","),
        no_cache=True,
        concurrency=args.concurrency,
    )
    secs = time.perf_counter() - t
    split: dict[str, list[float]] = {"explain": []}
    n_examples = []
    for r in summary.results:
        exp = [e for e in store.explanations(r.unit_id) if e.run_id == summary.run_id][0]
        split["explain"].append(exp.settings["seconds"])
        for s in store.scores(exp.id):
            split.setdefault(s.scorer, []).append(s.details.get("seconds", float("nan")))
            if s.scorer == "correlation":
                n_examples.append(s.details.get("n_test", 0))
    print(
        json.dumps(
            {
                "explainer": args.explainer,
                "units": len(unit_ids),
                "failures": len(summary.failures),
                "seconds": round(secs, 1),
                "units_per_hour": round(3600 * len(unit_ids) / secs, 1),
                "seconds_per_unit": {k: round(statistics.fmean(v), 2) for k, v in split.items()},
                "scoring_examples_per_unit": statistics.fmean(n_examples) if n_examples else None,
                "correlation": summary.stats("correlation"),
                "concurrency": args.concurrency,
                "note": "stages overlap when concurrency > 1; the local backend runs one forward at a time",
            }
        )
    )


if __name__ == "__main__":
    main()
