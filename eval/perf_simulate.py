"""The `exact` simulator vs the `json` simulator on the same local model and the same examples.

    python eval/perf_simulate.py [--units 6] [--llm local:qwen2.5-coder-1.5b]

Each unit gets one `top` explanation from the model; both simulators then predict the held-out test
examples (top + random). Prints JSON: examples/s of each, their ratio, the mean correlation each
reaches against the true activations, and how many json simulations failed validation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import time

from common import bench_store

from autointerp.explain import ExplainSettings, propose
from autointerp.llm import get_llm
from autointerp.metrics import correlation
from autointerp.sampling import SampleSettings, sample_unit
from autointerp.simulate import ExactSimulator, JsonSimulator, SimulationError


async def run(args: argparse.Namespace) -> dict:
    store, unit_ids = bench_store(args.units, first=args.first)
    llm = get_llm(args.llm, store, no_cache=True)
    samples = [
        sample_unit(store, u, SampleSettings(n_test_top=args.n_test // 2, n_test_random=args.n_test // 2))
        for u in unit_ids
    ]
    explanations = [(await propose(llm, s, ExplainSettings(method="top"), 24))[0] for s in samples]
    out: dict = {"llm": args.llm, "units": len(unit_ids), "explanations": explanations}
    for sim in (ExactSimulator(llm), JsonSimulator(llm)):
        t, n, corrs, failures = time.perf_counter(), 0, [], 0
        for s, expl in zip(samples, explanations, strict=True):
            sims = []
            for e in s.test:
                try:
                    sims += await sim.simulate(expl, [e])
                except SimulationError:
                    failures += 1
                n += 1
            c = correlation([x.true for x in sims], [x.expected for x in sims]) if sims else math.nan
            corrs.append(c)
        secs = time.perf_counter() - t
        ok = [c for c in corrs if not math.isnan(c)]
        out[sim.name] = {
            "examples": n,
            "seconds": round(secs, 1),
            "examples_per_s": round(n / secs, 3),
            "mean_correlation": round(statistics.fmean(ok), 4) if ok else None,
            "nan_units": len(corrs) - len(ok),
            "failed_examples": failures,
        }
    out["exact_over_json_speed"] = round(out["exact"]["examples_per_s"] / out["json"]["examples_per_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=6)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--n-test", type=int, default=10)
    ap.add_argument("--llm", default="local:qwen2.5-coder-1.5b")
    print(json.dumps(asyncio.run(run(ap.parse_args()))))


if __name__ == "__main__":
    main()
