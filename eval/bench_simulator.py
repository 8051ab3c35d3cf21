"""Simulator fidelity on ground-truth units: does the true explanation simulate well, and beat wrong ones?

    python eval/bench_simulator.py [--units N] [--simulator SPEC]
                                   [--mode exact|exact-raw|exact-whole|exact-follow|json]
                                   [--baseline raw|whole|follow|placeholder|none]

Records the first N built-in synthetic units (all 12 by default; their activations are known rules over
Gemma 3 270M's tokens), then for each unit simulates its held-out test windows (top + random, BOS left
out) from the true explanation and from three distractors (the next unit's truth, the negated truth, a
near miss), and scores each with OpenAI's correlation. Prints JSON:

- `truth_correlation_mean`: mean over units of the true explanation's correlation (goal >= 0.7);
- `distractor_correlation_max`: the highest mean correlation of any distractor kind (goal <= 0.2),
  with every kind's mean in `distractor_correlation_by_kind`;
- `truth_first_share`: share of units where the truth has the highest correlation of all candidates
  (a k-way tie at the top counts 1/k; goal >= 0.95);
- `scale_mass_median`: median over every simulated token of the probability the simulator put on the
  scale tokens "0".."9" (exact mode; the read-out is made of this mass), `scale_mass_min`, and
  `below_floor_share`, the share of simulations whose median mass is under the floor (stored as failed
  by the scorers);
- `seconds`, `per_unit`; and in exact mode, `baseline`: the same figures for another read-out computed
  in the same run for comparison: `raw` (the default: `exact` without its calibration by the null
  explanation, i.e. `exact-raw`; its passes are the calibrated run's own, served from the LLM cache),
  `whole` (`exact-whole`: each window in one listing, not in chunks of 8: `simulate-exact@4`'s read),
  `follow` (the stepwise read-out, `exact-follow`: after each TAB the model's own most likely digit) or
  `placeholder` (the first read-out: every TAB followed by `unknown`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import time

from autointerp import assets
from autointerp.bench.meta import truth_rank_credit
from autointerp.bench.run import BenchSettings, distractors, record_suite
from autointerp.bench.synthetic import BUILTIN
from autointerp.llm import get_llm
from autointerp.metrics import MASS_FLOOR, correlation
from autointerp.sampling import SampleSettings, sample_unit
from autointerp.simulate import SIMULATORS, ExactSimulator, JsonSimulator, Simulation, SimulationError
from autointerp.store import Store
from autointerp.types import Example

PLACEHOLDER = "unknown"  # the old all-at-once listing's filler after every TAB (the baseline)


class PlaceholderSimulator(ExactSimulator):
    """The first exact read-out, kept here only as a baseline: one pass, `unknown` after each TAB."""

    name = "placeholder"
    filler = PLACEHOLDER
    calibrated = False


async def simulate(sim, text: str, test: list[Example]) -> tuple[list[Simulation], int]:  # noqa: ANN001
    """Simulations of the test windows and how many failed (json mode fails per example, recorded)."""
    if not isinstance(sim, JsonSimulator):
        return await sim.simulate(text, test), 0
    sims, failed = [], 0
    for e in test:
        try:
            sims += await sim.simulate(text, [e])
        except SimulationError:
            failed += 1
    return sims, failed


async def evaluate(sim, cases: list[tuple[str, dict[str, str], list[Example]]]) -> dict:  # noqa: ANN001
    """Correlation of every candidate explanation per unit, and the figures over all units.

    An undefined correlation (a constant simulation) counts as 0 in the means and is counted in `nan`.
    """
    t0 = time.perf_counter()
    per_unit, masses, sim_medians, failures, nan = [], [], [], 0, 0
    for name, candidates, test in cases:
        corr: dict[str, float | None] = {}
        for key, text in candidates.items():
            sims, failed = await simulate(sim, text, test)
            failures += failed
            for x in sims:
                if x.mass is not None:
                    masses += x.mass
                    sim_medians.append(statistics.median(x.mass))
            c = correlation([x.true for x in sims], [x.expected for x in sims]) if sims else math.nan
            nan += math.isnan(c)
            corr[key] = None if math.isnan(c) else round(c, 4)
        first = (
            0.0 if corr["truth"] is None else truth_rank_credit(corr, "truth")
        )  # constant truth: not first
        per_unit.append({"unit": name, "correlation": corr, "truth_first": first})

    def mean(key: str) -> float | None:
        vals = [u["correlation"][key] or 0.0 for u in per_unit if key in u["correlation"]]
        return round(statistics.fmean(vals), 4) if vals else None

    kinds = sorted({k for u in per_unit for k in u["correlation"] if k != "truth"})
    by_kind = {k: mean(k) for k in kinds}
    firsts = [u["truth_first"] for u in per_unit if u["truth_first"] is not None]
    return {
        "truth_correlation_mean": mean("truth"),
        "distractor_correlation_max": max((v for v in by_kind.values() if v is not None), default=None),
        "distractor_correlation_by_kind": by_kind,
        "truth_first_share": round(statistics.fmean(firsts), 4) if firsts else None,
        "scale_mass_median": round(statistics.median(masses), 6) if masses else None,
        "scale_mass_min": round(min(masses), 6) if masses else None,
        "below_floor_share": round(sum(m < MASS_FLOOR for m in sim_medians) / len(sim_medians), 4)
        if sim_medians
        else None,
        "nan": nan,
        "failed_examples": failures,
        "seconds": round(time.perf_counter() - t0, 1),
        "per_unit": per_unit,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=len(BUILTIN), help="the first N built-in synthetic units")
    ap.add_argument("--simulator", default="local:qwen2.5-coder-1.5b")
    modes = ["exact", "exact-raw", "exact-whole", "exact-follow", "json"]
    ap.add_argument("--mode", choices=modes, default="exact")
    ap.add_argument("--tokens", type=int, default=80_000)
    ap.add_argument("--ctx", type=int, default=32)
    ap.add_argument("--n-test-top", type=int, default=10)
    ap.add_argument("--n-test-random", type=int, default=10)
    ap.add_argument("--baseline", choices=["raw", "whole", "follow", "placeholder", "none"], default="raw")
    ap.add_argument("--no-baseline", action="store_true", help="the same as --baseline none")
    ap.add_argument("--no-cache", action="store_true")
    args = ap.parse_args()

    units = list(BUILTIN)[: args.units]
    s = BenchSettings(n_units=args.units, tokens=args.tokens, ctx=args.ctx)
    path = assets.home() / "bench" / f"synthetic-{args.tokens}-{args.ctx}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    store = Store(path)
    unit_ids, _ = record_suite(store, s, units)
    ss = SampleSettings(n_test_top=args.n_test_top, n_test_random=args.n_test_random)
    cases = []
    for i, (u, uid) in enumerate(zip(units, unit_ids, strict=True)):
        candidates = {"truth": u.explanation, **distractors(units, i)}
        cases.append((u.name, candidates, sample_unit(store, uid, ss).test))
    llm = get_llm(args.simulator, store, no_cache=args.no_cache)
    out: dict = {
        "simulator": args.simulator,
        "mode": args.mode,
        "units": len(cases),
        "test_windows_per_unit": args.n_test_top + args.n_test_random,
        "ctx": args.ctx,
        "mass_floor": MASS_FLOOR,
    }
    sim = SIMULATORS[args.mode](llm)
    out.update(asyncio.run(evaluate(sim, cases)))
    baseline = "none" if args.no_baseline else args.baseline
    if args.mode == "exact" and baseline != "none":
        base = (
            SIMULATORS["exact-raw"](llm)
            if baseline == "raw"
            else SIMULATORS["exact-whole"](llm)
            if baseline == "whole"
            else SIMULATORS["exact-follow"](llm)
            if baseline == "follow"
            else PlaceholderSimulator(llm)
        )
        out["baseline"] = {"read_out": baseline, **asyncio.run(evaluate(base, cases))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
