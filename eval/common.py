"""Shared set-up for the benchmarks: a recorded store of Gemma 3 270M neurons, cached between runs."""

from __future__ import annotations

from autointerp import assets, record_units
from autointerp.store import Store

HOOK = "blocks.6.mlp.hook_post"


def bench_store(n_units: int, tokens: int = 40_000, first: int = 0) -> tuple[Store, list[str]]:
    """A store with `n_units` recorded neurons (recorded once, then reused from the cache dir)."""
    path = assets.home() / "bench" / f"neurons-{first}-{n_units}-{tokens}.db"
    units = list(range(first, first + n_units))
    record_units(path, [HOOK], units=units, max_tokens=tokens)
    return Store(path), [f"gemma-3-270m/{HOOK}/{i}" for i in units]
