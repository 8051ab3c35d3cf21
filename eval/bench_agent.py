"""Does the investigation agent find the truth of synthetic units more often than a one-shot explainer
(`highlight` by default)? Same units, same LLM as agent, explainer and simulator, same held-out test sets.

    python eval/bench_agent.py [--llm local:qwen2.5-coder-1.5b] [--baseline highlight] [--units 3]
                               [--skip 0] [--tokens 20000] [--max-steps 16] [--max-scores 7]
                               [--n-test 10] [--wall SECONDS] [--db PATH] [--agent-mode auto]

Records built-in synthetic units `--skip` .. `--skip + --units` over Gemma's tokens (no forward pass),
explains each with the baseline method (the label pipeline) and with an investigation (`--max-steps`),
and scores both with the correlation scorer on the same held-out examples (`--n-test` top + `--n-test`
random windows). Prints JSON: per unit the truth, both explanations, their correlations and matches to
the truth (MiniLM cosine, or keyword overlap without the embedder), the agent's status, steps, tools,
tokens, seconds and share of well-formed LLM turns (free: JSON actions; guided: answers holding a
hypothesis); then per method the mean correlation, match share, tokens and seconds per unit, and the
ratios agent / baseline of tokens and seconds. Each unit's row is also printed to stderr as soon as it
is done. `--agent-mode`: guided, free or auto (guided for local:, free for openai: and anthropic:).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from autointerp.agent.loop import INVALID, AgentSettings, ainvestigate
from autointerp.bench.run import BenchSettings, record_suite, similarities
from autointerp.bench.synthetic import BUILTIN
from autointerp.llm import get_llm
from autointerp.pipeline import Labeller, LabelSettings
from autointerp.sampling import SampleSettings
from autointerp.score import ScoreSettings
from autointerp.store import Store
from autointerp.subject.model import load_subject


def mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


async def run(args: argparse.Namespace) -> dict:
    db = Path(args.db or Path(tempfile.mkdtemp()) / "agent-bench.db")
    store = Store(db)
    units = BUILTIN[args.skip : args.skip + args.units]
    ids, _ = record_suite(store, BenchSettings(tokens=args.tokens, ctx=32), units, subject=load_subject())
    llm = get_llm(args.llm, store)
    base = args.baseline
    sample = SampleSettings(n_test_top=args.n_test, n_test_random=args.n_test)
    score = ScoreSettings(n_per_quantile=0)  # the correlation on the held-out test set only
    s = LabelSettings(explainer=args.llm, simulator=args.llm, methods=[base], sample=sample, score=score)
    labeller = Labeller(store, s, llm, llm)
    rows, skipped = [], {}
    start = time.perf_counter()
    for unit, uid in zip(units, ids, strict=True):
        if args.wall and time.perf_counter() - start > args.wall:
            skipped[unit.name] = f"not started: the wall-time budget ({args.wall:g} s) was spent"
            continue
        t0 = time.perf_counter()
        one = await labeller.label_one(uid, base)
        base_s = time.perf_counter() - t0
        if one.skip_reason:  # never fired on these tokens
            skipped[unit.name] = one.skip_reason
            continue
        meter = labeller.explainer.usage
        base_tokens = meter.prompt_tokens + meter.completion_tokens
        meter.prompt_tokens = meter.completion_tokens = 0
        t0 = time.perf_counter()
        budget = {"max_steps": args.max_steps, "max_scores": args.max_scores, "agent_mode": args.agent_mode}
        agent_s = AgentSettings(agent=args.llm, sample=sample, score=score, **budget)
        out = await ainvestigate(db, uid, agent_s)
        inv, agent_seconds = out.investigation, time.perf_counter() - t0
        steps = [e for e in out.experiments if e.source == "agent"]
        turns = [e for e in steps if e.action]  # the LLM's own answers (guided: not the code's tool runs)
        row = {
            "unit": unit.name,
            "truth": unit.explanation,
            base: {"explanation": one.explanation, "correlation": one.scores.get("correlation")},
            "agent": {
                "explanation": inv.explanation,
                "correlation": next((x.value for x in out.scores if x.scorer == "correlation"), None),
                "status": inv.status,
                "reason": inv.reason,
                "steps": inv.steps,
                "tools": [e.tool or "?" for e in steps],
                "errors": [e.error[:80] for e in steps if e.error],
                "mode": inv.settings.get("agent_mode"),
                "hypotheses": [
                    (e.arguments.get("explanation"), e.result.get("correlation"))
                    for e in steps
                    if e.tool == "score" and not e.error
                ],
                "well_formed": sum(not e.error.startswith(INVALID) for e in turns) / max(1, len(turns)),
                "tokens": inv.prompt_tokens + inv.completion_tokens,
                "seconds": round(agent_seconds, 1),
            },
            "base_tokens": base_tokens,
            "base_seconds": round(base_s, 1),
        }
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    methods = (base, "agent")
    pairs = [(r[m]["explanation"] or "", r["truth"]) for r in rows for m in methods]
    sims, threshold, how = similarities(pairs, BenchSettings())
    for i, r in enumerate(rows):
        for j, m in enumerate(methods):
            r[m]["similarity"] = round(sims[2 * i + j], 3)
            r[m]["match"] = bool(r[m]["explanation"]) and sims[2 * i + j] >= threshold
    n = max(1, len(rows))
    base_tokens, base_s = sum(r["base_tokens"] for r in rows), sum(r["base_seconds"] for r in rows)
    agent_tokens, agent_s = sum(r["agent"]["tokens"] for r in rows), sum(r["agent"]["seconds"] for r in rows)
    summary = {
        m: {
            "mean_correlation": mean([r[m]["correlation"] for r in rows]),
            "match_share": sum(r[m]["match"] for r in rows) / n,
        }
        for m in methods
    }
    summary[base] |= {"tokens_per_unit": base_tokens / n, "seconds_per_unit": base_s / n}
    summary["agent"] |= {"tokens_per_unit": agent_tokens / n, "seconds_per_unit": agent_s / n}
    return {
        "llm": args.llm,
        "baseline": base,
        "units": len(rows),
        "max_steps": args.max_steps,
        "max_scores": args.max_scores,
        "agent_mode": args.agent_mode,
        "n_test": args.n_test,
        "match_measure": how,
        "rows": rows,
        "skipped": skipped,
        "summary": summary,
        "agent_finished": sum(r["agent"]["status"] == "finished" for r in rows),
        "agent_well_formed": mean([r["agent"]["well_formed"] for r in rows]),
        "tokens_ratio_agent_over_baseline": agent_tokens / max(1, base_tokens),
        "seconds_ratio_agent_over_baseline": agent_s / max(1e-9, base_s),
        "db": str(db),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm", default="local:qwen2.5-coder-1.5b")
    ap.add_argument("--baseline", default="highlight", help="the one-shot method compared with")
    ap.add_argument("--units", type=int, default=3)
    ap.add_argument("--skip", type=int, default=0, help="start at this unit of the built-in suite")
    ap.add_argument("--max-scores", type=int, default=7, help="the agent's score tool calls at most")
    ap.add_argument("--n-test", type=int, default=10, help="held-out top and random windows each")
    ap.add_argument("--wall", type=float, default=None, help="start no unit after this many seconds")
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--max-steps", type=int, default=16)
    ap.add_argument("--agent-mode", default="auto", choices=["auto", "guided", "free"])
    ap.add_argument("--db", default=None, help="reuse a store (default: a temporary one)")
    print(json.dumps(asyncio.run(run(ap.parse_args())), indent=2))


if __name__ == "__main__":
    main()
