"""Anthropic backend (official `anthropic` SDK): chat, tools, JSON answers through a forced tool.

No logprobs: `top_logprobs` requests and `token_probs` raise LLMError. Requests are bounded by a
semaphore; the SDK retries 408/409/429/5xx/529, timeouts and connection errors with exponential
backoff (honouring retry-after; `max_retries` times, `timeout` seconds per request);
400/401/402/403/404 fail at once with the fix named, a low credit balance as OutOfCreditError.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time

from autointerp.errors import UserError
from autointerp.llm.base import (
    LLM,
    Capabilities,
    ChatRequest,
    ChatResponse,
    LLMError,
    Message,
    OutOfCreditError,
    TokenProbsRequest,
    TokenProbsResponse,
    ToolCall,
    Usage,
)
from autointerp.llm.prices import cost_usd
from autointerp.llm.util import PerLoop

try:
    import anthropic
except ImportError as e:  # pragma: no cover - depends on the install
    raise UserError(
        "The anthropic backend needs the anthropic package; run `pip install autointerp[anthropic]`."
    ) from e

_ACCEPTS_TEMPERATURE = (
    "temperature" in inspect.signature(anthropic.resources.messages.AsyncMessages.create).parameters
)
ANSWER_TOOL = "json_answer"  # the forced tool that carries a JSON-schema answer


class AnthropicLLM(LLM):
    """`anthropic:MODEL`, e.g. `anthropic:claude-3-5-haiku-latest`."""

    backend = "anthropic"
    capabilities = Capabilities(token_probs=False, top_logprobs=False, tools=True, json_schema=True)

    def __init__(
        self,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 120.0,
        http_client=None,  # noqa: ANN001 - an httpx.AsyncClient, for tests at the HTTP boundary
    ):
        self.model = model
        self.spec = f"anthropic:{model}"
        self.timeout, self.max_retries = timeout, max_retries
        kwargs = dict(api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout)
        self._client = PerLoop(lambda: anthropic.AsyncAnthropic(**kwargs, http_client=http_client))
        self._sem = PerLoop(lambda: asyncio.Semaphore(concurrency))

    async def chat(self, request: ChatRequest) -> ChatResponse:
        params = self.chat_params(request)
        t0 = time.perf_counter()
        resp = await self._request(params)
        return self.chat_response(request, resp, time.perf_counter() - t0)

    def chat_params(self, request: ChatRequest) -> dict:
        """The parameters of a messages.create call (also what a message batch request carries)."""
        if request.top_logprobs > 0:
            raise LLMError(f"{self.spec} returns no logprobs; use a local: or openai: model for them.")
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        params: dict = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": _messages([m for m in request.messages if m.role != "system"]),
        }
        if _ACCEPTS_TEMPERATURE:  # recent SDKs dropped sampling settings: the API chooses them
            params["temperature"] = request.temperature
        if system:
            params["system"] = system
        if request.stop:
            params["stop_sequences"] = request.stop
        tools = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools or []
        ]
        if request.json_schema is not None:
            tools.append(
                {
                    "name": ANSWER_TOOL,
                    "description": "Give the answer as JSON.",
                    "input_schema": request.json_schema,
                }
            )
            params["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}
        if tools:
            params["tools"] = tools
        return params

    def chat_response(self, request: ChatRequest, resp, latency: float) -> ChatResponse:  # noqa: ANN001
        """Our answer from the SDK's Message; LLMError when a JSON answer was asked for and not given."""
        texts, calls = [], []
        for block in resp.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use" and block.name == ANSWER_TOOL and request.json_schema is not None:
                texts = [json.dumps(block.input)]
            elif block.type == "tool_use":
                calls.append(ToolCall(id=block.id, name=block.name, arguments=dict(block.input)))
        if request.json_schema is not None and not any(
            b.type == "tool_use" and b.name == ANSWER_TOOL for b in resp.content
        ):
            raise LLMError(f"{self.spec} did not give a JSON answer; retry the call.")
        u = resp.usage
        reused = getattr(u, "cache_read_input_tokens", 0) or 0  # cache reads and writes come apart
        written = getattr(u, "cache_creation_input_tokens", 0) or 0
        pt, ct = u.input_tokens + reused + written, u.output_tokens
        billed = u.input_tokens + round(1.25 * written + 0.1 * reused)  # Anthropic's cache multipliers
        return ChatResponse(
            text="".join(texts),
            tool_calls=calls,
            finish_reason=resp.stop_reason,
            model=self.model,
            backend=self.backend,
            usage=Usage(
                prompt_tokens=pt,
                completion_tokens=ct,
                reused_prompt_tokens=reused,
                latency_s=latency,
                cost_usd=cost_usd(self.model, billed, ct),
            ),
        )

    async def token_probs(self, request: TokenProbsRequest) -> TokenProbsResponse:
        raise LLMError(
            f"{self.spec} returns no token probabilities; simulate with a local: model or an "
            "OpenAI-compatible server that returns prompt logprobs."
        )

    async def _request(self, params: dict):  # noqa: ANN202
        not_anthropic = (
            f"{self.spec}: the server did not send an Anthropic API answer ({{}}); check "
            "ANTHROPIC_BASE_URL / --base-url."
        )
        async with self._sem.get():
            try:
                resp = await (await self._client.aget()).messages.create(**params)
            except anthropic.APIStatusError as e:
                if _out_of_credit(e):
                    raise OutOfCreditError(
                        f"{self.spec}: the API refused the call for lack of credit ({_detail(e)}); "
                        "add credit under Plans & Billing or use another key."
                    ) from e
                raise LLMError(self._status_message(e)) from e
            except anthropic.APITimeoutError as e:
                raise LLMError(
                    f"{self.spec}: the API did not answer within {self.timeout:g} s "
                    f"({self.max_retries} retries); raise --timeout or try again later."
                ) from e
            except anthropic.APIConnectionError as e:
                raise LLMError(f"{self.spec}: cannot reach the Anthropic API; check the network.") from e
            except json.JSONDecodeError as e:
                raise LLMError(not_anthropic.format(f"malformed JSON: {e.msg}")) from e
        if isinstance(resp, str) or not isinstance(resp, anthropic.BaseModel):
            raise LLMError(not_anthropic.format(f"not JSON: {str(resp)[:60]!r}"))
        return resp

    def _status_message(self, e: anthropic.APIStatusError) -> str:
        """One sentence for an error status, naming the fix."""
        if isinstance(e, anthropic.AuthenticationError):
            return f"{self.spec}: the API rejected the key (401: {_detail(e)}); check ANTHROPIC_API_KEY."
        if isinstance(e, anthropic.PermissionDeniedError):
            return f"{self.spec}: the key may not use this model (403: {_detail(e)})."
        if isinstance(e, anthropic.NotFoundError):
            return f"{self.spec}: unknown model or endpoint (404: {_detail(e)})."
        if isinstance(e, anthropic.BadRequestError):
            return f"{self.spec}: request rejected (400: {_detail(e)})."
        if isinstance(e, anthropic.RateLimitError):
            return (
                f"{self.spec}: still rate-limited after {self.max_retries} retries (429); "
                "lower --concurrency or raise --retries."
            )
        return f"{self.spec}: the API answered {e.status_code} after retries ({_detail(e)})."


def _out_of_credit(e: anthropic.APIStatusError) -> bool:
    """A 402 billing error, or the 400 "Your credit balance is too low to access the Anthropic API"."""
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    return e.status_code == 402 or err.get("type") == "billing_error" or "credit balance" in _detail(e)


def _detail(e: anthropic.APIStatusError) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    return str(err.get("message") or e.message)


def _messages(messages: list[Message]) -> list[dict]:
    """Our messages in Anthropic's shape: tool results are user turns, tool calls are tool_use blocks."""
    out: list[dict] = []
    for m in messages:
        if m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        elif m.role == "assistant" and m.tool_calls:
            blocks: list[dict] = [{"type": "text", "text": m.content}] if m.content else []
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in m.tool_calls
            ]
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({"role": m.role, "content": m.content})
    return out
