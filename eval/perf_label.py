"""End-to-end units/hour of `label` with the embedded models, and where the time goes.

    python eval/perf_label.py [--units 6] [--scorers correlation,detection]
                              [--simulator-mode exact] [--compare exact-raw]

Records (once, cached) neurons of Gemma 3 270M, then labels them with no LLM cache. Prints JSON:
units/hour, seconds per unit split into explanation and each scorer, scoring examples per unit;
`tokens_per_unit` per LLM role (prompt, of it reused from a prefix cache, completion, and the forward
tokens actually computed) and where the prompt tokens go (few-shot prefix vs the unit's examples /
listing, from the run's recorded requests); `llm_share`, the share of wall time spent inside the local
LLM's forward passes (timed around the model's forward, which the backend runs one at a time).
`--compare MODE` labels the same units again in the same run with another simulator mode (e.g.
`exact-raw`, the uncalibrated read at half the simulation passes) and adds its figures under `compare`.
`--compare-engine VARIANT[,VARIANT]` labels them again with the local engine run another way and adds
each under `compare_engine`: `plain` (nn.Linear, the LM head over every row's union of positions: the
engine before prepacking), `unpacked` (nn.Linear, gathered LM head), `prepacked` (both; off by default),
`ungrouped` (the main run's engine with every batch forwarded from its one common prefix, not in row
groups with their own, no tree: the engine before #16), `rows` (row groups, no tree mode, and no
answers remembered across units: the label run before the token tree); the main run is
`prepacked` when AUTOINTERP_PREPACK=1, else `unpacked`, both in tree mode (`llm/tree.py`) where the
model allows it, with the run's token-probability answers remembered (`llm.cache.REMEMBER`: the
null reads of the shared random windows are made once) and the element-wise ops fused
(`llm/fused.py`, torch.compile; not with prepacking); `eager` is the main run without the fusing
(the variants before the tree run eager too). The engine is set up (and compiled) before each run's
clock starts. Each run records its `engine` variant, `fused_modules` and the load average before
and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import bench_store, timed

from autointerp import label
from autointerp.llm.prepack import enabled_by_env
from autointerp.score import ScoreSettings
from autointerp.store import Store
from autointerp.types import now

ENGINES = ("plain", "unpacked", "prepacked", "ungrouped", "rows", "eager")
BEFORE_TREE = ("plain", "ungrouped", "rows")  # variants without the token tree and the run's memory
UNFUSED = (*BEFORE_TREE, "eager")  # variants with the eager element-wise ops (no llm/fused.py)


def engine_variant(variant: str, main: str, source: str | None) -> None:
    """Run the local engine as `variant` from the next `label` on (see the module docstring); `main`:
    the main run's variant, whose prepacking `ungrouped` keeps. The loaded engine of `source` is set
    up now (prepacked, compiled), before the run is timed."""
    from autointerp.llm import cache, fused, local
    from autointerp.llm.prepack import ENV

    if not hasattr(local, "_default_plain_head"):
        local._default_plain_head = local._plain_head
    local._plain_head = (lambda model: None) if variant == "plain" else local._default_plain_head
    local.GROUP_ROWS = variant != "ungrouped"
    local.TREE_ROWS = variant not in BEFORE_TREE
    if not hasattr(cache, "_default_remember"):
        cache._default_remember = cache.REMEMBER
    cache.REMEMBER = 0 if variant in BEFORE_TREE else cache._default_remember
    packed = (main if variant == "ungrouped" else variant) == "prepacked"
    fuse = variant not in UNFUSED and not packed
    os.environ[ENV] = "1" if packed else "0"  # read by the LocalLLM that label() makes
    os.environ[fused.ENV] = "1" if fuse else "0"
    if source is not None:
        engine = local.load_engine(source)
        engine.set_prepack(packed)
        engine.set_fuse(fuse)


def time_forwards(source: str) -> dict[str, float]:
    """Load the local model now and time every forward pass it makes (generation steps included): the
    model's forward, and its decoder's when the engine calls that alone (outermost calls only)."""
    from autointerp.llm.local import load_engine

    model = load_engine(source).model
    spent = {"seconds": 0.0, "depth": 0}
    for m in (model, getattr(model, "model", None)):
        if m is not None:
            m.forward = outermost(timed(m.forward, spent, "seconds"), m.forward, spent)
    return spent


def outermost(timed_fn, plain_fn, state: dict):  # noqa: ANN001, ANN201
    """`timed_fn` for an outermost call, `plain_fn` for a call made inside another timed one."""

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        fn = timed_fn if state["depth"] == 0 else plain_fn
        state["depth"] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            state["depth"] -= 1

    return wrapper


def engine_state(source: str | None) -> dict[str, int | None]:
    """How the loaded local model of `source` runs now: linear layers prepacked, modules compiled
    (fused); None for both without a local model."""
    if source is None:
        return {"prepacked_layers": None, "fused_modules": None}
    from autointerp.llm.local import load_engine

    engine = load_engine(source)
    return {"prepacked_layers": engine.prepacked, "fused_modules": engine.fused}


def where_tokens_go(store: Store, since: str, source: str, n_units: int) -> dict[str, float]:
    """Prompt tokens per unit by part, from the requests the run recorded: the explainer's few-shot
    prefix and the unit's examples; each simulation's header (few-shot + explanation) and its listing;
    each judge prompt's header and its examples."""
    from autointerp.llm.tokens import local_tokenizer

    tok = local_tokenizer(source)
    parts: dict[str, int] = defaultdict(int)
    rows = store.db.execute(
        "SELECT request, prompt_tokens FROM llm_calls WHERE created_at >= ?", [since]
    ).fetchall()
    for request, total in rows:
        req = json.loads(request)
        if req["kind"] == "chat":
            msgs = [{"role": m["role"], "content": m["content"]} for m in req["messages"][:-1]]
            text = tok.apply_chat_template(msgs, tokenize=False) if msgs else ""
            head = len(tok(text, add_special_tokens=False)["input_ids"])
            parts["explain: few-shot prefix"] += head
            parts["explain: examples"] += total - head
            continue
        prompt = req["prompt"]
        role = "simulate" if len(req.get("candidates", [])) == 10 else "judge"
        cut = prompt.rfind("\n", 0, req["positions"][0] if "positions" in req else len(prompt)) + 1
        if role == "judge":
            cut = prompt.rfind("Explanation:") if "Explanation:" in prompt else cut
        head = len(tok(prompt[:cut])["input_ids"])
        if role == "simulate":
            parts["simulate: header (few-shot + explanation)"] += head
            parts["simulate: listing"] += total - head
        else:
            parts["judge: few-shot prefix"] += head
            parts["judge: explanation + examples"] += total - head
    return {k: round(v / n_units) for k, v in sorted(parts.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=6)
    ap.add_argument("--first", type=int, default=100)
    ap.add_argument("--scorers", default="correlation,detection")
    ap.add_argument("--explainer", default="local:qwen2.5-coder-1.5b")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--simulator-mode", default="auto")
    ap.add_argument("--per-quantile", type=int, default=1, help="label --per-quantile")
    ap.add_argument("--compare", default=None, help="another simulator mode, measured in the same run")
    ap.add_argument("--compare-engine", default="", help=f"engine variants measured too: {ENGINES}")
    args = ap.parse_args()
    variants = [v for v in args.compare_engine.split(",") if v]
    if bad := [v for v in variants if v not in ENGINES]:
        ap.error(f"unknown engine variant {bad[0]!r}; use {', '.join(ENGINES)}")
    store, unit_ids = bench_store(args.units, first=args.first)
    local = args.explainer.removeprefix("local:") if args.explainer.startswith("local:") else None
    forwards = time_forwards(local) if local else None
    main_engine = "prepacked" if enabled_by_env() else "unpacked"
    args.main_engine = main_engine
    out = measure(args, store, unit_ids, local, forwards, args.simulator_mode, main_engine)
    if args.compare:
        out["compare"] = measure(args, store, unit_ids, local, forwards, args.compare, main_engine)
    if variants:
        out["compare_engine"] = {
            v: measure(args, store, unit_ids, local, forwards, args.simulator_mode, v) for v in variants
        }
        out["compare_engine_ratio"] = {
            v: round(out["units_per_hour"] / r["units_per_hour"], 3) for v, r in out["compare_engine"].items()
        }
    print(json.dumps(out))


def measure(args, store: Store, unit_ids: list[str], local, forwards, mode: str, engine: str) -> dict:  # noqa: ANN001
    """Label the units once with no LLM cache, with simulator mode `mode` and engine variant `engine`;
    the figures as a dict."""
    engine_variant(engine, args.main_engine, local)
    if forwards is not None:
        forwards["seconds"] = 0.0
    # each measurement labels its own copy of the recorded store: nothing is skipped as already done
    copy = Path(tempfile.mkdtemp(prefix="perf_label-")) / "store.db"
    store.copy_to(copy)
    store = Store(copy)
    store.delete_labels()
    load_before = os.getloadavg()[0]
    since = now()
    t = time.perf_counter()
    summary = label(
        store.path,
        unit_ids,
        explainer=args.explainer,
        scorers=args.scorers.split(","),
        no_cache=True,
        concurrency=args.concurrency,
        simulator_mode=mode,
        score=ScoreSettings(n_per_quantile=args.per_quantile),
    )
    secs = time.perf_counter() - t
    n = len(unit_ids)
    tokens = {
        role: {
            "prompt": round(u.prompt_tokens / n),
            "reused": round(u.reused_prompt_tokens / n),
            "completion": round(u.completion_tokens / n),
            "forward_computed": round((u.prompt_tokens - u.reused_prompt_tokens + u.completion_tokens) / n),
            "calls": round(u.calls / n, 1),
        }
        for role, u in summary.usage.items()
    }
    split: dict[str, list[float]] = {"explain": []}
    n_examples = []
    for r in summary.results:
        exp = [e for e in store.explanations(r.unit_id) if e.run_id == summary.run_id][0]
        split["explain"].append(exp.settings["seconds"])
        for s in store.scores(exp.id):
            split.setdefault(s.scorer, []).append(s.details.get("seconds", float("nan")))
            if s.scorer == "correlation":
                n_examples.append(s.details.get("n_test", 0))
    result = {
        "explainer": args.explainer,
        "simulator_mode": mode,
        "engine": engine,
        **engine_state(local),
        "row_groups": engine != "ungrouped",
        "tree": engine not in BEFORE_TREE,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "units": len(unit_ids),
        "failures": len(summary.failures),
        "seconds": round(secs, 1),
        "units_per_hour": round(3600 * len(unit_ids) / secs, 1),
        "seconds_per_unit": {k: round(statistics.fmean(v), 2) for k, v in split.items()},
        "scoring_examples_per_unit": statistics.fmean(n_examples) if n_examples else None,
        "correlation": summary.stats("correlation"),
        "tokens_per_unit": tokens,
        "prompt_tokens_per_unit_by_part": where_tokens_go(store, since, local, n) if local else None,
        "llm_share": round(forwards["seconds"] / secs, 3) if forwards else None,
        "concurrency": args.concurrency,
        "note": "stages overlap when concurrency > 1; the local backend runs one forward at a time",
    }
    store.db.close()
    shutil.rmtree(copy.parent, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
