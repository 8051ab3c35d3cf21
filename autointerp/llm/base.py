"""The one LLM protocol every explainer, simulator and scorer talks to.

Backends (local, openai, anthropic) implement `LLM`. Every call is cached in the store by the hash of
its canonical request and logged with token counts and latency. A failed call raises `LLMError`; it is
never turned into an empty answer, a default or a score.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class LLMError(Exception):
    """An LLM call failed (after retries, where retrying makes sense). The message names the fix."""


class OutOfCreditError(LLMError):
    """The provider refused the call for lack of credit or quota (never retried); carries its message."""


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None


class Tool(BaseModel):
    """A function the model may call: name, description, JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: dict


class ChatRequest(BaseModel):
    messages: list[Message]
    temperature: float = 0.0
    max_tokens: int = 256
    stop: list[str] | None = None
    json_schema: dict | None = None  # ask for a JSON answer matching this schema, where supported
    # The caller parses JSON out of the answer itself (no schema): an answer holding none is not cached.
    # Not sent to the backend and not part of the cache key.
    json_answer: bool = False
    tools: list[Tool] | None = None
    top_logprobs: int = 0  # > 0: return that many alternatives per generated token, where supported
    seed: int | None = None

    def cache_key(self, backend: str, model: str) -> str:
        req = self.model_dump(exclude={"json_answer"})
        blob = json.dumps({"backend": backend, "model": model, "req": req}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    top: dict[str, float] = Field(default_factory=dict)  # alternative token -> logprob


class Usage(BaseModel):
    """What one call spent. `cached`: served from the store's cache (nothing was spent this time)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # prompt tokens whose key/values were not computed for this call: a shared or cached prefix of the
    # local backend, or the provider's cached input tokens (OpenAI `cached_tokens`, Anthropic cache reads)
    reused_prompt_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float | None = None
    cached: bool = False


class ChatResponse(BaseModel):
    text: str
    tool_calls: list[ToolCall] = Field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    model: str
    backend: str
    usage: Usage = Field(default_factory=Usage)


class TokenProbsRequest(BaseModel):
    """Distribution over `candidates` as the next token after each prefix `prompt[:p]`, p in `positions`.

    Positions are character offsets into `prompt` that fall on token boundaries of the backend's
    tokenizer (the caller ends each prefix with a separator such as a tab). What an exact simulator
    needs: one pass over the prompt gives every position's distribution.
    """

    prompt: str
    positions: list[int]
    candidates: list[str]  # e.g. ["0", ..., "9"]; each must be a single token for the backend

    def cache_key(self, backend: str, model: str) -> str:
        blob = json.dumps({"backend": backend, "model": model, "tp": self.model_dump()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


class TokenProbsResponse(BaseModel):
    probs: list[dict[str, float]]  # one per position: candidate -> probability, renormalised over candidates
    mass: list[float]  # probability the model put on the candidates at all, before renormalising
    model: str
    backend: str
    usage: Usage = Field(default_factory=Usage)


class StepwiseRequest(BaseModel):
    """Read a distribution over `candidates` after each step, continuing with the model's own choice.

    The model reads `prompt + steps[0]` and gives the next-token distribution over the candidates; its
    most likely candidate and `after` are appended, then `steps[1]`, and so on (teacher forcing on the
    model's own answers). The read-out never follows a placeholder the model could learn to copy, so
    the probability it puts on the candidates (`mass`) stays high: what an exact simulator needs.
    """

    prompt: str
    steps: list[str]
    candidates: list[str]  # each a single token for the backend, e.g. the digits "0".."9"
    after: str = "\n"  # appended after each chosen candidate

    def cache_key(self, backend: str, model: str) -> str:
        blob = json.dumps({"backend": backend, "model": model, "sw": self.model_dump()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def prefix(self, chosen: list[str]) -> str:
        """The text read before step len(chosen), given the candidates chosen at the earlier steps."""
        done = "".join(f"{step}{c}{self.after}" for step, c in zip(self.steps, chosen, strict=False))
        return self.prompt + done + self.steps[len(chosen)]


class StepwiseResponse(BaseModel):
    probs: list[dict[str, float]]  # one per step: candidate -> probability, renormalised over candidates
    mass: list[float]  # probability the model put on the candidates at all, before renormalising
    chosen: list[str]  # the candidate continued with at each step (the most likely one)
    model: str
    backend: str
    usage: Usage = Field(default_factory=Usage)


class Capabilities(BaseModel):
    token_probs: bool  # exact distributions at prompt positions (local; servers with prompt logprobs)
    top_logprobs: bool  # alternatives for generated tokens
    tools: bool
    json_schema: bool


@runtime_checkable
class LLM(Protocol):
    """What every backend offers. `spec` is the string that built it, e.g. `local:smollm2-135m`.

    A backend that subclasses `LLM` inherits the defaults of `token_probs_many` and `stepwise_many`
    and overrides them where it can batch.
    """

    spec: str
    backend: str
    model: str
    capabilities: Capabilities

    async def chat(self, request: ChatRequest) -> ChatResponse: ...

    async def token_probs(self, request: TokenProbsRequest) -> TokenProbsResponse:
        """Raises LLMError when capabilities.token_probs is False."""
        ...

    async def token_probs_many(self, requests: list[TokenProbsRequest]) -> list[TokenProbsResponse]:
        """Many `token_probs` requests; this default sends them concurrently."""
        return list(await asyncio.gather(*(self.token_probs(r) for r in requests)))

    async def stepwise_many(self, requests: list[StepwiseRequest]) -> list[StepwiseResponse]:
        """Stepwise read-outs; this default reads every request's step t in one `token_probs_many`."""
        from autointerp.llm.stepwise import stepwise_via_token_probs

        return await stepwise_via_token_probs(self, requests)


Message.model_rebuild()
