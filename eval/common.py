"""Shared set-up for the benchmarks: a recorded store of Gemma 3 270M neurons, cached between runs."""

from __future__ import annotations

import time
from collections.abc import Callable

from autointerp import assets, record_units
from autointerp.store import Store

HOOK = "blocks.6.mlp.hook_post"


def bench_store(n_units: int, tokens: int = 40_000, first: int = 0) -> tuple[Store, list[str]]:
    """A store with `n_units` recorded neurons (recorded once, then reused from the cache dir)."""
    path = assets.home() / "bench" / f"neurons-{first}-{n_units}-{tokens}.db"
    units = list(range(first, first + n_units))
    record_units(path, [HOOK], units=units, max_tokens=tokens)
    return Store(path), [f"gemma-3-270m/{HOOK}/{i}" for i in units]


def timed(fn: Callable, spent: dict[str, float], key: str = "s") -> Callable:
    """`fn`, adding the seconds each call takes to `spent[key]`."""

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - t0

    return wrapper
