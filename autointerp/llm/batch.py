"""`label --batch`: the same labelling run, with its chat calls answered by provider batches.

A run wraps its LLMs in `BatchLLM`. A chat request whose batch result is stored is answered from it
(checked and parsed exactly as a live answer); one answered before by a live call is served from the
cache; any other raises `BatchPending` after noting the request, so the unit waits and the pipeline
goes on collecting every request the current phase needs. `Batcher` polls the open submissions first
(collecting what ended) and submits what was noted at the end: explanations first, then, on a later
run, the simulations and judgements that score them, and so on.

Nothing is sent twice: a request is written to the store (`llm_batches`, `llm_batch_requests`)
before the provider is asked, and resubmitted only when it came back without an answer (an expired,
failed or cancelled batch; an individual error) - at most `MAX_ATTEMPTS` times, then it is recorded
as failed. An answer that does not parse is a result: recorded as a failed explanation or score.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import json
import logging
import uuid
from collections.abc import Awaitable, Iterable, Iterator
from typing import TypeVar

from pydantic import BaseModel, Field

from autointerp.errors import UserError
from autointerp.llm.base import LLM, Capabilities, ChatRequest, ChatResponse, LLMError, TokenProbsRequest
from autointerp.llm.batch_api import BatchAPI, batch_api
from autointerp.llm.cache import CachedLLM, _cacheable
from autointerp.store import Store
from autointerp.types import BatchRecord, BatchRequestRecord, LLMCallRecord

log = logging.getLogger("autointerp.llm")
T = TypeVar("T")

MAX_ATTEMPTS = 3  # submissions of one request that came back without an answer before it is failed
DISCOUNT = 0.5  # both providers' batch price: half the list price
EXACT_MODES = ("exact", "exact-whole", "exact-raw", "exact-follow", "head-exact")
# Requests and bytes per batch: OpenAI 50,000 and a 200 MB file; Anthropic 100,000 and 256 MB.
LIMITS: dict[str, tuple[int, int]] = {"openai": (50_000, 190_000_000), "anthropic": (100_000, 250_000_000)}


class BatchPending(Exception):  # noqa: N818 - not an error: the answer will come from a batch
    """The answer to this request will come from a provider batch: the unit waits for a later run."""


async def in_turn(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Await one after another, as a live run does (an error stops the rest); but a `BatchPending`
    does not stop the others, whose requests join the same batch: it is raised at the end."""
    todo, out, pending = list(aws), [], None
    for i, aw in enumerate(todo):
        try:
            out.append(await aw)
        except BatchPending as e:
            pending = e
        except BaseException:
            for rest in todo[i + 1 :]:
                if inspect.iscoroutine(rest):
                    rest.close()  # never started: no "never awaited" warning
            raise
    if pending is not None:
        raise pending
    return out


class Tag(BaseModel):
    """What a request is for: recorded beside its custom id."""

    unit_id: str = ""
    phase: str = ""
    candidate: str = ""


_TAG: contextvars.ContextVar[Tag] = contextvars.ContextVar("autointerp_batch_tag", default=Tag())  # noqa: B039
_SERVED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "autointerp_batch_served", default=None
)


@contextlib.contextmanager
def tagged(**fields: str) -> Iterator[None]:
    """Tag the requests made inside (unit_id, phase, candidate), on top of the current tag."""
    token = _TAG.set(_TAG.get().model_copy(update=fields))
    try:
        yield
    finally:
        _TAG.reset(token)


@contextlib.contextmanager
def served() -> Iterator[list[str]]:
    """The provider batch ids that answered the chat calls made inside (also in child tasks)."""
    ids: list[str] = []
    token = _SERVED.set(ids)
    try:
        yield ids
    finally:
        _SERVED.reset(token)


def batch_ids(ids: list[str]) -> dict:
    """`{"batch_id": ...}` for a result's details: one id, a sorted list of several, or nothing."""
    unique = sorted(set(ids))
    if not unique:
        return {}
    return {"batch_id": unique[0] if len(unique) == 1 else unique}


class Wanted(BaseModel):
    request: ChatRequest
    tag: Tag


class BatchLLM(LLM):
    """Chat through provider batches (see the module docstring); token probabilities are not batchable."""

    def __init__(self, llm: CachedLLM, store: Store):
        if not isinstance(llm, CachedLLM):
            raise TypeError("BatchLLM wraps the CachedLLM of an openai: or anthropic: backend")
        self.cached, self.store = llm, store
        self.api: BatchAPI = batch_api(llm.inner)
        self.spec, self.backend, self.model = llm.spec, llm.backend, llm.model
        caps = llm.capabilities
        self.capabilities = Capabilities(
            token_probs=False, top_logprobs=False, tools=caps.tools, json_schema=caps.json_schema
        )
        self.wanted: dict[str, Wanted] = {}  # cache key -> a request to submit at the end of the run
        self.waiting: set[str] = set()  # cache keys already in an open batch

    async def chat(self, request: ChatRequest) -> ChatResponse:
        key = request.cache_key(self.backend, self.model)
        latest = self.store.latest_batch_request(key)
        if latest is not None:
            row, batch = latest
            if row.status == "succeeded" and row.response is not None:
                resp = self.api.response(request, row.response)  # LLMError: unusable, recorded as failed
                resp.usage.cost_usd, resp.usage.cached = row.cost_usd, True  # paid once, when collected
                ids = _SERVED.get()
                if ids is not None and batch.provider_id:
                    ids.append(batch.provider_id)
                return resp
            if row.status == "failed":
                raise LLMError(f"{self.spec}: batch request {row.custom_id} failed: {row.error}")
        hit = self.store.get_llm_call(key)
        if hit is not None:  # answered by an earlier live run
            resp = ChatResponse.model_validate(hit.response)
            resp.usage.cached = True
            return resp
        if latest is not None and latest[0].status == "pending":
            self.waiting.add(key)
            raise BatchPending(f"waiting for batch {latest[1].provider_id or latest[1].id}")
        self.wanted.setdefault(key, Wanted(request=request, tag=_TAG.get()))
        raise BatchPending("to be submitted")

    async def token_probs(self, request: TokenProbsRequest):  # noqa: ANN201
        raise LLMError(
            f"{self.spec}: token probabilities cannot be batched (batch results carry no prompt logprobs); "
            "use --simulator-mode json with --batch."
        )


class Submitted(BaseModel):
    provider_id: str
    spec: str
    requests: int


class BatchReport(BaseModel):
    """What a `label --batch` run did with the provider batches."""

    collected: int = 0  # requests whose results came back in this run
    prompt_tokens: int = 0  # what the collected results used, and cost at the batch price (where known)
    completion_tokens: int = 0
    cost_usd: float | None = None
    errored: int = 0  # requests that came back without an answer (resubmitted, or failed for good)
    submitted: list[Submitted] = Field(default_factory=list)
    waiting: int = 0  # requests still in open batches
    open_batches: list[str] = Field(default_factory=list)  # provider ids still running

    @property
    def done(self) -> bool:
        """Nothing submitted and nothing waiting: the run has every answer it needs."""
        return not self.submitted and not self.waiting


class Batcher:
    """The batch side of a run: poll and collect open submissions, wrap LLMs, submit what they noted."""

    def __init__(self, store: Store):
        self.store = store
        self.llms: dict[tuple[str, str], BatchLLM] = {}
        self.report = BatchReport()

    def wrap(self, llm: LLM) -> BatchLLM:
        if not isinstance(llm, CachedLLM) or llm.backend not in ("openai", "anthropic"):
            raise UserError(f"--batch needs openai: or anthropic: models, not {llm.spec}.")
        key = (llm.backend, llm.model)
        if key not in self.llms:
            self.llms[key] = BatchLLM(llm, self.store)
        return self.llms[key]

    async def poll(self) -> None:
        """Check every open submission of the wrapped models; collect those that ended."""
        known = {b.provider_id for b in self.store.batches() if b.provider_id}
        for batch in self.store.open_batches():
            blm = self.llms.get((batch.backend, batch.model))
            if blm is None:
                continue  # another model's batch: polled by a run that uses that model
            if batch.status == "preparing":  # interrupted between asking the provider and noting its id
                found = await blm.api.find(batch.id, batch.n_requests, batch.created_at, known)
                if found is None:
                    self.store.finish_batch(batch.id, "lost", [], "never reached the provider")
                    continue
                self.store.update_batch(batch.id, provider_id=found, status="submitted")
                batch = batch.model_copy(update={"provider_id": found, "status": "submitted"})
            state = await blm.api.state(batch.provider_id)
            if state.state == "in_progress":
                self.report.open_batches.append(batch.provider_id)
                self.store.update_batch(batch.id, detail=state.detail)
                continue
            await self._collect(blm, batch, state.state, state.detail)

    async def _collect(self, blm: BatchLLM, batch: BatchRecord, state: str, detail: str) -> None:
        rows = {r.custom_id: r for r in self.store.batch_requests(batch.id)}
        updates = []
        for out in await blm.api.results(batch.provider_id):
            row = rows.get(out.custom_id)
            if row is None or row.status != "pending":
                continue
            if out.body is not None:
                updates.append(self._succeeded(blm, row, out.body))
                self.report.collected += 1
                continue
            self.report.errored += 1
            final = not out.retry or self.store.batch_attempts(row.key) + 1 >= MAX_ATTEMPTS
            updates.append(
                row.model_copy(update={"status": "failed" if final else "errored", "error": out.error})
            )
        got = {u.custom_id for u in updates}
        lost = [r for r in rows.values() if r.status == "pending" and r.custom_id not in got]
        self.report.errored += len(lost)
        for r in lost:  # no result at all (expired, failed or cancelled batch): resubmitted, a few times
            if self.store.batch_attempts(r.key) + 1 >= MAX_ATTEMPTS:
                updates.append(r.model_copy(update={"status": "failed", "error": f"batch {state}: {detail}"}))
        status = {"ended": "collected"}.get(state, state)
        self.store.finish_batch(batch.id, status, updates, detail)
        log.info("collected batch %s (%s): %d results", batch.provider_id, state, len(updates))

    def _succeeded(self, blm: BatchLLM, row: BatchRequestRecord, body: dict) -> BatchRequestRecord:
        """The stored result; a usable answer is also cached for live runs, at the batch price."""
        request = ChatRequest.model_validate(row.request)
        pt = ct = 0
        cost = None
        try:
            resp = blm.api.response(request, body)
        except (LLMError, ValueError) as e:  # kept as it came: the pipeline records the failure
            log.info("batch result %s is not a usable answer: %s", row.custom_id, e)
        else:
            u = resp.usage
            pt, ct = u.prompt_tokens, u.completion_tokens
            cost = u.cost_usd * DISCOUNT if u.cost_usd is not None else None
            resp.usage.cost_usd = cost
            self.report.prompt_tokens += pt
            self.report.completion_tokens += ct
            if cost is not None:
                self.report.cost_usd = (self.report.cost_usd or 0.0) + cost
            if _cacheable(request, resp):
                self.store.put_llm_call(
                    LLMCallRecord(
                        hash=row.key,
                        backend=blm.backend,
                        model=blm.model,
                        request={"kind": "chat", **request.model_dump()},
                        response=resp.model_dump(),
                        prompt_tokens=pt,
                        completion_tokens=ct,
                        cost_usd=cost,
                    )
                )
        return row.model_copy(
            update={"status": "succeeded", "response": body, "prompt_tokens": pt, "completion_tokens": ct,
                    "cost_usd": cost}
        )  # fmt: skip

    async def submit(self, run_id: str) -> None:
        """Every request the run noted and no open batch holds, per model, in as few submissions as the
        provider's limits allow (`LIMITS`: requests and bytes per batch)."""
        for blm in self.llms.values():
            self.report.waiting += len(blm.waiting)
            max_n, max_bytes = LIMITS[blm.backend]
            chunk: list[tuple[Wanted, dict]] = []
            size = 0
            for w in blm.wanted.values():
                params = blm.api.params(w.request)
                n = len(json.dumps(params)) + 200  # the line's envelope: custom id, method, url
                if chunk and (len(chunk) >= max_n or size + n > max_bytes):
                    await self._submit(blm, chunk, run_id)
                    chunk, size = [], 0
                chunk.append((w, params))
                size += n
            if chunk:
                await self._submit(blm, chunk, run_id)
            blm.wanted.clear()

    async def _submit(self, blm: BatchLLM, chunk: list[tuple[Wanted, dict]], run_id: str) -> None:
        """One submission: noted in the store first (`preparing`), then sent, then its provider id noted."""
        sub = "sub-" + uuid.uuid4().hex[:16]
        rows = [
            BatchRequestRecord(
                custom_id=f"{sub}-{i}",
                batch=sub,
                key=w.request.cache_key(blm.backend, blm.model),
                request=w.request.model_dump(),
                **w.tag.model_dump(),
            )
            for i, (w, _) in enumerate(chunk)
        ]
        batch = BatchRecord(
            id=sub, backend=blm.backend, model=blm.model, status="preparing", n_requests=len(rows),
            run_id=run_id,
        )  # fmt: skip
        self.store.put_batch(batch, rows)  # before the provider hears of it: never sent unnoted
        try:
            provider_id = await blm.api.create(
                sub, [(r.custom_id, params) for r, (_, params) in zip(rows, chunk, strict=True)]
            )
        except LLMError:  # did it reach the provider? The next run's poll looks (`find`), then resubmits
            raise
        self.store.update_batch(sub, provider_id=provider_id, status="submitted")
        self.report.submitted.append(Submitted(provider_id=provider_id, spec=blm.spec, requests=len(rows)))
