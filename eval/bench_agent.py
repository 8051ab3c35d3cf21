"""Does the investigation agent find the truth of synthetic units more often than the one-shot `top`
explainer? Same units, same LLM as agent, explainer and simulator, same held-out test sets.

    python eval/bench_agent.py [--llm local:qwen2.5-coder-1.5b] [--units 3] [--tokens 20000]
                               [--max-steps 6] [--db PATH]

Records the first `--units` built-in synthetic units over Gemma's tokens (no forward pass), explains
each with `top` (the label pipeline) and with an investigation (`--max-steps`), and scores both with
the correlation scorer on the same held-out examples. Prints JSON: per unit the truth, both
explanations, their correlations and matches to the truth (MiniLM cosine, or keyword overlap without
the embedder), the agent's status, steps, tokens, seconds and share of well-formed actions; then per
method the mean correlation and match share, and the ratios agent / top of tokens and seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from autointerp.agent.loop import INVALID, AgentSettings, ainvestigate
from autointerp.bench.run import BenchSettings, record_suite, similarities
from autointerp.bench.synthetic import BUILTIN
from autointerp.llm import get_llm
from autointerp.pipeline import Labeller, LabelSettings
from autointerp.store import Store
from autointerp.subject.model import load_subject


def mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


async def run(args: argparse.Namespace) -> dict:
    db = Path(args.db or Path(tempfile.mkdtemp()) / "agent-bench.db")
    store = Store(db)
    units = BUILTIN[: args.units]
    ids, _ = record_suite(store, BenchSettings(tokens=args.tokens, ctx=32), units, subject=load_subject())
    llm = get_llm(args.llm, store)
    labeller = Labeller(
        store, LabelSettings(explainer=args.llm, simulator=args.llm, methods=["top"]), llm, llm
    )
    rows = []
    for unit, uid in zip(units, ids, strict=True):
        t0 = time.perf_counter()
        top = await labeller.label_one(uid, "top")
        top_s = time.perf_counter() - t0
        meter = labeller.explainer.usage
        top_tokens = meter.prompt_tokens + meter.completion_tokens
        meter.prompt_tokens = meter.completion_tokens = 0
        t0 = time.perf_counter()
        out = await ainvestigate(db, uid, AgentSettings(agent=args.llm, max_steps=args.max_steps))
        inv, agent_s = out.investigation, time.perf_counter() - t0
        steps = [e for e in out.experiments if e.source == "agent"]
        rows.append(
            {
                "unit": unit.name,
                "truth": unit.explanation,
                "top": {"explanation": top.explanation, "correlation": top.scores.get("correlation")},
                "agent": {
                    "explanation": inv.explanation,
                    "correlation": next((x.value for x in out.scores if x.scorer == "correlation"), None),
                    "status": inv.status,
                    "reason": inv.reason,
                    "steps": inv.steps,
                    "well_formed": sum(not e.error.startswith(INVALID) for e in steps) / max(1, len(steps)),
                    "tokens": inv.prompt_tokens + inv.completion_tokens,
                    "seconds": round(agent_s, 1),
                },
                "top_tokens": top_tokens,
                "top_seconds": round(top_s, 1),
            }
        )
    pairs = [(r[m]["explanation"] or "", r["truth"]) for r in rows for m in ("top", "agent")]
    sims, threshold, how = similarities(pairs, BenchSettings())
    for i, r in enumerate(rows):
        for j, m in enumerate(("top", "agent")):
            r[m]["match"] = bool(r[m]["explanation"]) and sims[2 * i + j] >= threshold
    summary = {
        m: {
            "mean_correlation": mean([r[m]["correlation"] for r in rows]),
            "match_share": sum(r[m]["match"] for r in rows) / len(rows),
        }
        for m in ("top", "agent")
    }
    top_tokens, top_s = sum(r["top_tokens"] for r in rows), sum(r["top_seconds"] for r in rows)
    return {
        "llm": args.llm,
        "units": len(rows),
        "max_steps": args.max_steps,
        "match_measure": how,
        "rows": rows,
        "summary": summary,
        "agent_finished": sum(r["agent"]["status"] == "finished" for r in rows),
        "agent_well_formed": mean([r["agent"]["well_formed"] for r in rows]),
        "tokens_ratio_agent_over_top": sum(r["agent"]["tokens"] for r in rows) / max(1, top_tokens),
        "seconds_ratio_agent_over_top": sum(r["agent"]["seconds"] for r in rows) / max(1e-9, top_s),
        "db": str(db),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm", default="local:qwen2.5-coder-1.5b")
    ap.add_argument("--units", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--max-steps", type=int, default=6)
    ap.add_argument("--db", default=None, help="reuse a store (default: a temporary one)")
    print(json.dumps(asyncio.run(run(ap.parse_args())), indent=2))


if __name__ == "__main__":
    main()
