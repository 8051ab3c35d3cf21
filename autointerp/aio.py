"""Running an async core from sync code, with or without an event loop already running (Jupyter)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[object, object, T]) -> T:
    """`asyncio.run(coro)`; inside a running loop (which must not be blocked on itself), in a fresh
    thread with its own loop while the caller waits."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="autointerp-sync") as pool:
        return pool.submit(asyncio.run, coro).result()
