"""The providers' batch endpoints: OpenAI's Batch API and Anthropic's Message Batches, one interface.

`create` submits requests (each a custom id and the body the backend would send), `state` polls,
`results` downloads what came back (an ended, expired or cancelled batch included: whatever finished),
`find` looks for a submission whose id we never wrote down (an interrupt right after `create`).
`response` turns a result body into the backend's `ChatResponse`, checked exactly as a live answer is.
SDK errors become `LLMError` naming the fix.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Literal, Protocol

from pydantic import BaseModel

from autointerp.errors import UserError
from autointerp.llm.base import LLM, ChatRequest, ChatResponse, LLMError

State = Literal["in_progress", "ended", "expired", "failed", "cancelled"]
OPENAI_ENDPOINT = "/v1/chat/completions"
SUBMISSION_KEY = "autointerp_submission"  # the metadata key that carries our submission id (OpenAI)


class BatchAPIError(LLMError, UserError):
    """A batch endpoint failed (key, URL, provider down): the run stops with one sentence; rerun later."""


class BatchState(BaseModel):
    state: State
    detail: str = ""  # the provider's own status and counts, or its errors


class Outcome(BaseModel):
    """One request's result: a body (succeeded) or an error (errored, expired, cancelled)."""

    custom_id: str
    body: dict | None = None
    error: str | None = None
    retry: bool = True  # an error worth resubmitting (expired, cancelled, server error)


class BatchAPI(Protocol):
    spec: str

    def params(self, request: ChatRequest) -> dict: ...

    def response(self, request: ChatRequest, body: dict) -> ChatResponse: ...

    async def create(self, submission: str, items: list[tuple[str, dict]]) -> str: ...

    async def state(self, provider_id: str) -> BatchState: ...

    async def results(self, provider_id: str) -> list[Outcome]: ...

    async def find(self, submission: str, n: int, since: str, known: set[str]) -> str | None: ...


def batch_api(llm: LLM) -> BatchAPI:
    """The batch endpoints of an `openai:` or `anthropic:` backend; LLMError for any other."""
    if llm.backend == "openai":
        return OpenAIBatches(llm)
    if llm.backend == "anthropic":
        return AnthropicBatches(llm)
    raise LLMError(f"{llm.spec} has no batch API; use an openai: or anthropic: model with --batch.")


@contextlib.asynccontextmanager
async def _errors(spec: str, doing: str) -> AsyncIterator[None]:
    try:
        yield
    except LLMError:
        raise
    except Exception as e:  # the SDK's APIError family, transport errors, malformed JSON
        status = getattr(e, "status_code", None)
        raise BatchAPIError(
            f"{spec}: {doing} failed ({f'{status}: ' if status else ''}{e}); check the key, --base-url "
            "and the provider's status, then run the same command again."
        ) from e


class OpenAIBatches:
    """A JSONL file of /v1/chat/completions requests (files.create), then batches.create over it."""

    def __init__(self, llm):  # noqa: ANN001 - an OpenAILLM
        self.llm, self.spec = llm, llm.spec

    async def _client(self):  # noqa: ANN202
        return await self.llm._client.aget()

    def params(self, request: ChatRequest) -> dict:
        return self.llm.chat_params(request)

    def response(self, request: ChatRequest, body: dict) -> ChatResponse:
        from openai.types.chat import ChatCompletion

        return self.llm.chat_response(request, ChatCompletion.model_validate(body), 0.0)

    async def create(self, submission: str, items: list[tuple[str, dict]]) -> str:
        lines = [
            json.dumps({"custom_id": cid, "method": "POST", "url": OPENAI_ENDPOINT, "body": body})
            for cid, body in items
        ]
        client = await self._client()
        async with _errors(self.spec, "uploading the batch file"):
            f = await client.files.create(
                file=(f"{submission}.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch"
            )
        async with _errors(self.spec, "creating the batch"):
            b = await client.batches.create(
                input_file_id=f.id,
                endpoint=OPENAI_ENDPOINT,
                completion_window="24h",
                metadata={SUBMISSION_KEY: submission},
            )
        return b.id

    async def state(self, provider_id: str) -> BatchState:
        client = await self._client()
        async with _errors(self.spec, f"polling batch {provider_id}"):
            b = await client.batches.retrieve(provider_id)
        counts = b.request_counts
        detail = f"{b.status}" + (f", {counts.completed}/{counts.total} done" if counts else "")
        if b.errors and b.errors.data:
            detail += ": " + "; ".join(f"{e.code}: {e.message}" for e in b.errors.data[:3])
        state: State = {
            "completed": "ended",
            "expired": "expired",
            "failed": "failed",
            "cancelled": "cancelled",
        }.get(b.status, "in_progress")  # validating, in_progress, finalizing, cancelling
        return BatchState(state=state, detail=detail)

    async def results(self, provider_id: str) -> list[Outcome]:
        client = await self._client()
        async with _errors(self.spec, f"reading batch {provider_id}"):
            b = await client.batches.retrieve(provider_id)
            texts = [
                (await client.files.content(fid)).text for fid in (b.output_file_id, b.error_file_id) if fid
            ]
        out = []
        for text in texts:
            for line in text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                resp, error = row.get("response") or {}, row.get("error")
                status = resp.get("status_code")
                if status == 200 and not error:
                    out.append(Outcome(custom_id=row["custom_id"], body=resp.get("body")))
                    continue
                body = resp.get("body") or {}
                message = (error or body.get("error") or {}).get("message") or f"status {status}"
                retry = status is None or status in (408, 409, 429) or status >= 500
                out.append(Outcome(custom_id=row["custom_id"], error=f"{status}: {message}", retry=retry))
        return out

    async def find(self, submission: str, n: int, since: str, known: set[str]) -> str | None:
        client = await self._client()
        async with _errors(self.spec, "listing batches"):
            page = await client.batches.list(limit=100)
        for b in page.data:
            if (b.metadata or {}).get(SUBMISSION_KEY) == submission:
                return b.id
        return None


class AnthropicBatches:
    """messages.batches.create with one `params` per request (what messages.create would be sent)."""

    def __init__(self, llm):  # noqa: ANN001 - an AnthropicLLM
        self.llm, self.spec = llm, llm.spec

    async def _batches(self):  # noqa: ANN202
        return (await self.llm._client.aget()).messages.batches

    def params(self, request: ChatRequest) -> dict:
        return self.llm.chat_params(request)

    def response(self, request: ChatRequest, body: dict) -> ChatResponse:
        from anthropic.types import Message as AnthropicMessage

        return self.llm.chat_response(request, AnthropicMessage.model_validate(body), 0.0)

    async def create(self, submission: str, items: list[tuple[str, dict]]) -> str:
        batches = await self._batches()
        async with _errors(self.spec, "creating the message batch"):
            b = await batches.create(requests=[{"custom_id": cid, "params": p} for cid, p in items])
        return b.id

    async def state(self, provider_id: str) -> BatchState:
        batches = await self._batches()
        async with _errors(self.spec, f"polling message batch {provider_id}"):
            b = await batches.retrieve(provider_id)
        c = b.request_counts
        detail = (
            f"{b.processing_status}: {c.succeeded} succeeded, {c.errored} errored, {c.expired} expired, "
            f"{c.canceled} canceled, {c.processing} processing"
        )
        return BatchState(state="ended" if b.processing_status == "ended" else "in_progress", detail=detail)

    async def results(self, provider_id: str) -> list[Outcome]:
        batches = await self._batches()
        out = []
        async with _errors(self.spec, f"reading message batch {provider_id}"):
            async for r in await batches.results(provider_id):
                res = r.result
                if res.type == "succeeded":
                    out.append(Outcome(custom_id=r.custom_id, body=res.message.model_dump(mode="json")))
                elif res.type == "errored":
                    err = res.error.error
                    retry = err.type in ("api_error", "overloaded_error", "rate_limit_error", "timeout_error")
                    out.append(
                        Outcome(custom_id=r.custom_id, error=f"{err.type}: {err.message}", retry=retry)
                    )
                else:  # canceled, expired
                    out.append(Outcome(custom_id=r.custom_id, error=res.type))
        return out

    async def find(self, submission: str, n: int, since: str, known: set[str]) -> str | None:
        """A batch of `n` requests created after `since` that we do not know: the one whose id was lost."""
        batches = await self._batches()
        start = datetime.fromisoformat(since) - timedelta(minutes=5)  # clock skew
        async with _errors(self.spec, "listing message batches"):
            page = await batches.list(limit=100)
        for b in page.data:
            c = b.request_counts
            total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
            if b.id not in known and total == n and b.created_at >= start:
                return b.id
        return None
