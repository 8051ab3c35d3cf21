"""The sync edge of the async core: run a coroutine from plain code, inside a running event loop or not."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)` where no event loop runs in this thread; else (Jupyter, an async app) the same
    in a worker thread with its own loop, waited for here. In async code, await the coroutine instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="autointerp-sync") as pool:
        return pool.submit(asyncio.run, coro).result()


async def gather_all(*aws: Awaitable[T]) -> list[T]:
    """Await every awaitable concurrently, let each finish, then raise the first error in argument order.

    Unlike `asyncio.gather`, no request is left unissued because an earlier one failed: in `label --batch`
    every request of a phase must be seen before the batch is submitted.
    """
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]
