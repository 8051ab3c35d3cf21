"""Viewer speed on a large generated store: index pages (search + sort + filter + page) and unit pages,
server time per request; and the index query in SQL vs building every unit's summary in Python
(`listing.unit_summaries`, what `autointerp units` does) for one sorted page.

    python eval/perf_viewer.py [--units 100000] [--examples 20] [--explained 0.2] [--requests 40]

Builds the store once in a temporary folder (units of one hook, `--examples` top windows of 32 tokens
each, an explanation and a correlation score for a `--explained` share of them), then times requests
through the app in-process (starlette TestClient; no network). Prints JSON: per request kind the
median and p95 in ms, the SQL vs Python ratio for one sorted page, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from autointerp.listing import unit_summaries
from autointerp.store import Store
from autointerp.types import Context, ExampleRows, Explanation, RunRecord, Score, Unit, UnitRef, UnitStats

HOOK = "blocks.6.mlp.hook_post"
WORDS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "the",
    "a",
    "of",
    "in",
    "cat",
    "dog",
    "river",
]


def build(path: Path, n_units: int, n_examples: int, explained: float, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    store = Store(path)
    store.start_run(RunRecord(id="r", kind="record", settings={}, code_version="t", started_at="now"))
    contexts = {
        f"c{i}": Context(
            id=f"c{i}", token_ids=list(range(32)), tokens=[" " + w for w in rng.choice(WORDS, 32)]
        )
        for i in range(1000)
    }
    ids = []
    for start in range(0, n_units, 5000):
        units = []
        for i in range(start, min(start + 5000, n_units)):
            mx = float(rng.gamma(2.0, 2.0))
            stats = UnitStats(
                n_tokens=100_000, max=mx, mean=0.1, std=0.5, frac_firing=float(rng.uniform(0, 0.2)),
                fire_threshold=0.0, hist_edges=[-np.inf, 0.0, 1.0, np.inf], hist_counts=[90, 8, 2],
            )  # fmt: skip
            units.append(Unit(ref=UnitRef(model="m", hook=HOOK, index=i), run_id="r", stats=stats))
        n = len(units) * n_examples
        rows = ExampleRows(
            unit_ids=np.repeat(np.array([u.id for u in units], dtype=object), n_examples),
            kinds=np.full(n, "top", dtype=object),
            ranks=np.tile(np.arange(n_examples), len(units)),
            context_ids=np.array([f"c{k}" for k in rng.integers(0, 1000, n)], dtype=object),
            acts=rng.exponential(1.0, (n, 32)).astype(np.float32),
            quantiles=np.full(n, -1),
            provenance={},
            contexts=contexts,
        )
        store.write_units(units, rows)
        ids += [u.id for u in units]
    chosen = rng.choice(len(ids), int(explained * len(ids)), replace=False)
    with store._write():
        for k in chosen:
            uid = ids[k]
            text = f"{rng.choice(WORDS)} and {rng.choice(WORDS)} tokens"
            e = Explanation(id=f"e{k}", unit_id=uid, text=text, method="top", model="x", prompt="p@1")
            store.put_explanation(e, [Score(explanation_id=e.id, unit_id=uid, scorer="correlation",
                                            value=float(rng.uniform(-1, 1)), status="ok")])  # fmt: skip
    return ids


def timed(client, url: str, n: int) -> dict:  # noqa: ANN001 - TestClient
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(url)
        times.append(1000 * (time.perf_counter() - t))
        assert r.status_code == 200, (url, r.status_code)
    times.sort()
    return {"median_ms": round(statistics.median(times), 1), "p95_ms": round(times[int(0.95 * (n - 1))], 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--units", type=int, default=100_000)
    p.add_argument("--examples", type=int, default=20)
    p.add_argument("--explained", type=float, default=0.2)
    p.add_argument("--requests", type=int, default=40)
    args = p.parse_args()
    from fastapi.testclient import TestClient

    from autointerp.viewer.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.db"
        t = time.perf_counter()
        ids = build(path, args.units, args.examples, args.explained)
        out: dict = {
            "units": args.units,
            "examples_per_unit": args.examples,
            "build_s": round(time.perf_counter() - t, 1),
        }
        client = TestClient(create_app(path))
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        queries = {
            "index_first_page": "/",
            "index_sort_max_page_100": "/?sort=max&descending=true&page=100",
            "index_search_sort_score": "/?search=march&scorer=correlation&sort=score&descending=true",
            "index_filter_unexplained_freq": "/?explained=false&min_freq=0.05&max_freq=0.1&sort=freq",
        }
        for name, url in queries.items():
            out[name] = timed(client, url, args.requests)
        rng = random.Random(0)
        unit_times = [timed(client, "/unit/" + rng.choice(ids), 1)["median_ms"] for _ in range(args.requests)]
        unit_times.sort()
        out["unit_page"] = {
            "median_ms": round(statistics.median(unit_times), 1),
            "p95_ms": unit_times[int(0.95 * (len(unit_times) - 1))],
        }
        out["rss_growth_mib_serving"] = round(
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 1
        )
        store = Store.reader(path)
        t = time.perf_counter()
        client.get("/api/units?sort=max&descending=true")
        sql_s = time.perf_counter() - t
        t = time.perf_counter()
        unit_summaries(store, sort="max")[:50]
        py_s = time.perf_counter() - t
        out["sorted_page_sql_ms"] = round(1000 * sql_s, 1)
        out["sorted_page_python_all_units_ms"] = round(1000 * py_s, 1)
        out["python_over_sql"] = round(py_s / sql_s, 1)
        out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
