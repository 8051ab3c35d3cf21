"""Small helpers shared by the backends: JSON answers, per-event-loop objects (prices: `llm.prices`)."""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from autointerp.llm.base import LLMError

T = TypeVar("T")


def env_flag(name: str, default: bool) -> bool:
    """An on/off environment variable: "1", "true", "yes", "on" turn it on, "0", "false", "no", "off"
    off; unset or anything else gives `default`."""
    value = os.environ.get(name, "").strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    return default


def schema_instruction(schema: dict) -> str:
    return (
        "Answer with a single JSON object and nothing else. It must match this JSON schema:\n"
        + json.dumps(schema)
    )


def parse_json_answer(text: str, schema: dict, spec: str) -> dict:
    """The JSON object in a model's answer, checked for the schema's required keys; LLMError if not."""
    s = text.strip()
    if s.startswith("```"):
        s = s.strip("`").removeprefix("json").strip()
    start, end = s.find("{"), s.rfind("}")
    try:
        obj = json.loads(s[start : end + 1]) if start >= 0 else json.loads(s)
    except json.JSONDecodeError as e:
        raise LLMError(
            f"{spec} did not answer with JSON ({text[:80]!r}); retry or use a stronger model."
        ) from e
    if not isinstance(obj, dict):
        raise LLMError(f"{spec} answered JSON that is not an object ({text[:80]!r}); use a stronger model.")
    missing = [k for k in schema.get("required", []) if k not in obj]
    if missing:
        raise LLMError(f"{spec} answered JSON without required keys {missing}; use a stronger model.")
    return obj


def holds_json(text: str) -> bool:
    """Whether `text` is, or holds, a JSON object or list (what a caller parsing JSON out of it can use)."""
    s = text.strip()
    try:
        json.loads(s)
        return True
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    for i, ch in enumerate(s):
        if ch in "[{":
            try:
                decoder.raw_decode(s, i)
                return True
            except json.JSONDecodeError:
                continue
    return False


class PerLoop(Generic[T]):
    """One object per running event loop (asyncio primitives and HTTP clients must not cross loops)."""

    def __init__(self, factory: Callable[[], T]):
        self._factory = factory
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()
        self._lifetimes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None:
            item = self._items[loop] = self._factory()
        return item

    async def aget(self) -> T:
        """Like get(), for an object with an async close(): it is closed when its loop shuts down.

        An async generator holds it; `asyncio.run` closes every live async generator before closing
        the loop, so the client's connections close inside their own loop, never from a later one.
        """
        loop = asyncio.get_running_loop()
        if loop not in self._items:
            holder = _hold(self._factory())
            self._items[loop] = await holder.__anext__()
            self._lifetimes[loop] = holder
        return self._items[loop]


async def _hold(item):  # noqa: ANN001, ANN202
    try:
        yield item
    finally:
        await item.close()
