"""The caching and logging wrapper every backend is served through.

Each call is looked up in the store by the hash of its canonical request; a hit is returned with
`usage.cached=True`. A miss is performed, timed and written with its token counts, latency and cost.
Identical requests in flight at the same time (also within one batch) are performed once; the
other askers get a copy marked cached. Token-probability answers (deterministic reads, no sampling)
are also remembered for the rest of the run (`REMEMBER`, least recently used out), even with
`no_cache`: a request asked again later in the run is answered from memory, marked cached. The exact
simulator's null reads are the same for every unit (the random windows are shared), so a run makes
them once. A failed call raises `LLMError` and is never written; nor is
an empty answer (no text, no tool call, no probabilities), a JSON-schema answer that is not JSON, or
an answer to a `json_answer` request (JSON the caller parses itself) that holds no JSON: a rerun asks again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel

from autointerp.errors import UserError
from autointerp.llm.base import (
    LLM,
    Capabilities,
    ChatRequest,
    ChatResponse,
    LLMError,
    StepwiseRequest,
    StepwiseResponse,
    TokenProbsRequest,
    TokenProbsResponse,
)
from autointerp.llm.util import holds_json, parse_json_answer
from autointerp.store import Store
from autointerp.types import LLMCallRecord

log = logging.getLogger("autointerp.llm")

REMEMBER = 20_000  # token-probability answers a CachedLLM remembers for its run (0: none; ~5 KB each)

R = TypeVar("R", ChatResponse, TokenProbsResponse, StepwiseResponse)


class CachedLLM(LLM):
    """Wraps a backend: cache lookups, in-flight de-duplication, timing and logging of every call."""

    def __init__(self, inner: LLM, store: Store | None = None, no_cache: bool = False):
        self.inner = inner
        self.store = store
        self.no_cache = no_cache
        self._inflight: dict[str, asyncio.Future] = {}
        self._memory: OrderedDict[str, TokenProbsResponse] = OrderedDict()  # this run's token_probs answers
        self.calls = 0  # calls actually performed by the backend (not served from the cache)

    @property
    def spec(self) -> str:
        return self.inner.spec

    @property
    def backend(self) -> str:
        return self.inner.backend

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    async def chat(self, request: ChatRequest) -> ChatResponse:
        key = request.cache_key(self.backend, self.model)
        return await self._call(key, "chat", request, ChatResponse, lambda: self.inner.chat(request))

    async def token_probs(self, request: TokenProbsRequest) -> TokenProbsResponse:
        key = request.cache_key(self.backend, self.model)
        return await self._call(
            key, "token_probs", request, TokenProbsResponse, lambda: self.inner.token_probs(request)
        )

    async def token_probs_many(self, requests: list[TokenProbsRequest]) -> list[TokenProbsResponse]:
        """Many prompts at once: cache hits are served, the misses go to the backend as one batch."""
        return await self._many(requests, "token_probs", TokenProbsResponse, self.inner.token_probs_many)

    async def stepwise_many(self, requests: list[StepwiseRequest]) -> list[StepwiseResponse]:
        """Stepwise read-outs (see `llm.stepwise`): cache hits served, the misses sent as one batch."""
        return await self._many(requests, "stepwise", StepwiseResponse, self.inner.stepwise_many)

    # -- internals ------------------------------------------------------------------------------
    async def _many(
        self,
        requests: list,
        kind: str,
        rtype: type[R],
        perform: Callable[[list], Awaitable[list[R]]],
    ) -> list[R]:
        out: list[R | None] = [None] * len(requests)
        keys = [req.cache_key(self.backend, self.model) for req in requests]
        loop = asyncio.get_running_loop()
        mine: dict[str, asyncio.Future] = {}  # key -> future of a request this call performs
        shared: list[tuple[int, asyncio.Future]] = []  # repeats, and requests another call performs
        todo: list[int] = []  # indices this call performs, each key once
        for i, key in enumerate(keys):
            hit = self._lookup(key, rtype)
            if hit is not None:
                out[i] = hit
                continue
            pending = mine.get(key) or self._inflight.get(key)
            if pending is not None and pending.get_loop() is loop:
                shared.append((i, pending))
                continue
            mine[key] = self._inflight[key] = loop.create_future()
            todo.append(i)
        try:
            if todo:
                reqs = [requests[i] for i in todo]
                t0 = time.perf_counter()
                try:
                    results = await perform(reqs)
                except (LLMError, UserError):
                    raise
                except Exception as e:  # a backend bug or an unexpected transport error: never a default
                    raise LLMError(f"{self.spec}: {kind} failed: {e}") from e
                share = (time.perf_counter() - t0) / len(reqs)
                for i, req, res in zip(todo, reqs, results, strict=True):
                    if not res.usage.latency_s:
                        res.usage.latency_s = share
                    self._write(keys[i], kind, req, res)
                    out[i] = res
                    mine[keys[i]].set_result(res)
        except BaseException as e:
            for fut in mine.values():
                if not fut.done():
                    fut.set_exception(e)
                    fut.exception()  # mark retrieved: no "never retrieved" log
            raise
        finally:
            for key, fut in mine.items():
                if self._inflight.get(key) is fut:
                    del self._inflight[key]
        for i, fut in shared:
            copy = (await asyncio.shield(fut)).model_copy(deep=True)
            copy.usage.cached = True  # performed (and counted) once, by the first asker
            out[i] = copy
        return [r for r in out if r is not None]

    def _lookup(self, key: str, kind: type[R]) -> R | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            resp = self._memory[key].model_copy(deep=True)
            resp.usage.cached = True
            return resp  # type: ignore[return-value]
        if self.store is None or self.no_cache:
            return None
        rec = self.store.get_llm_call(key)
        if rec is None:
            return None
        resp = kind.model_validate(rec.response)
        resp.usage.cached = True
        log.debug("llm cache hit %s %s", self.spec, key[:12])
        return resp

    def _write(
        self,
        key: str,
        kind: str,
        request: BaseModel,
        resp: ChatResponse | TokenProbsResponse | StepwiseResponse,
    ) -> None:
        self.calls += 1
        u = resp.usage
        if not _cacheable(request, resp):
            log.debug("llm answer %s %s not cached: empty or not the JSON asked for", self.spec, key[:12])
            return
        if isinstance(resp, TokenProbsResponse) and REMEMBER > 0:
            self._memory[key] = resp
            while len(self._memory) > REMEMBER:
                self._memory.popitem(last=False)
        log.debug(
            "llm call %s %s %s: %d+%d tokens, %.2f s",
            self.spec,
            kind,
            key[:12],
            u.prompt_tokens,
            u.completion_tokens,
            u.latency_s,
        )
        if self.store is None:
            return
        self.store.put_llm_call(
            LLMCallRecord(
                hash=key,
                backend=self.backend,
                model=self.model,
                request={"kind": kind, **request.model_dump()},
                response=resp.model_dump(),
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                latency_s=u.latency_s,
                cost_usd=u.cost_usd,
            )
        )

    async def _call(
        self, key: str, kind: str, request: BaseModel, rtype: type[R], perform: Callable[[], Awaitable[R]]
    ) -> R:
        hit = self._lookup(key, rtype)
        if hit is not None:
            return hit
        loop = asyncio.get_running_loop()
        pending = self._inflight.get(key)
        if pending is not None and pending.get_loop() is loop:
            shared = (await asyncio.shield(pending)).model_copy(deep=True)
            shared.usage.cached = True  # performed (and counted) once, by the first caller
            return shared
        fut: asyncio.Future = loop.create_future()
        self._inflight[key] = fut
        try:
            t0 = time.perf_counter()
            try:
                resp = await perform()
            except (LLMError, UserError):
                raise
            except Exception as e:  # a backend bug or an unexpected transport error: never a default
                raise LLMError(f"{self.spec}: {kind} failed: {e}") from e
            if not resp.usage.latency_s:
                resp.usage.latency_s = time.perf_counter() - t0
            self._write(key, kind, request, resp)
            fut.set_result(resp)
            return resp
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e)
                fut.exception()  # mark retrieved: a lone caller must not log "never retrieved"
            raise
        finally:
            if self._inflight.get(key) is fut:
                del self._inflight[key]


def _cacheable(request: BaseModel, resp: ChatResponse | TokenProbsResponse | StepwiseResponse) -> bool:
    """Whether an answer may be served again: not empty, finite, and JSON where JSON was asked for."""
    if isinstance(resp, ChatResponse):
        if not resp.text.strip() and not resp.tool_calls:
            return False
        if isinstance(request, ChatRequest) and request.json_schema is not None and not resp.tool_calls:
            try:
                parse_json_answer(resp.text, request.json_schema, resp.backend)
            except LLMError:
                return False
        return not (isinstance(request, ChatRequest) and request.json_answer and not holds_json(resp.text))
    values = [p for dist in resp.probs for p in dist.values()] + list(resp.mass)
    return bool(resp.probs) and all(math.isfinite(v) for v in values)
