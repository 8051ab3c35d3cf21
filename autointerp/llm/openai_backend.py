"""OpenAI backend (official `openai` SDK): api.openai.com or any OpenAI-compatible server.

Chat with top logprobs, tool calls and JSON-schema answers. `token_probs` reads prompt logprobs
from the legacy completions endpoint (`echo=True`, `logprobs=k`): servers such as llama.cpp return
them, api.openai.com does not (capability off there). Requests are bounded by a semaphore; the SDK
retries 408/409/429/5xx, timeouts and connection errors with exponential backoff (`max_retries`
times, `timeout` seconds per request); 400/401/403/404 and an exhausted quota fail at once.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from urllib.parse import urlparse

from autointerp.errors import UserError
from autointerp.llm.base import (
    LLM,
    Capabilities,
    ChatRequest,
    ChatResponse,
    LLMError,
    Message,
    OutOfCreditError,
    TokenLogprob,
    TokenProbsRequest,
    TokenProbsResponse,
    ToolCall,
    Usage,
)
from autointerp.llm.prices import cost_usd
from autointerp.llm.util import PerLoop, parse_json_answer

try:
    import openai
except ImportError as e:  # pragma: no cover - depends on the install
    raise UserError(
        "The openai backend needs the openai package; run `pip install autointerp[openai]`."
    ) from e


class _Client(openai.AsyncOpenAI):
    """The SDK's client, except that an exhausted quota (a 429 too) is not retried as rate limiting."""

    def _should_retry(self, response) -> bool:  # noqa: ANN001 - the SDK's httpx response
        return not _out_of_quota(response) and super()._should_retry(response)


def _out_of_quota(response) -> bool:  # noqa: ANN001 - the SDK's httpx response
    """A 429 whose error says `insufficient_quota` ("You exceeded your current quota")."""
    if response.status_code != 429:
        return False
    try:
        error = response.json().get("error") or {}
    except Exception:  # not read, not JSON, not an object: an ordinary rate limit
        return False
    return isinstance(error, dict) and "insufficient_quota" in (error.get("code"), error.get("type"))


class OpenAILLM(LLM):
    """`openai:MODEL`. With `base_url`, any server that speaks the OpenAI API (llama.cpp, vLLM, ...)."""

    backend = "openai"

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 120.0,
        prompt_logprobs: int = 10,
        http_client=None,  # noqa: ANN001 - an httpx.AsyncClient, for tests at the HTTP boundary
    ):
        self.model = model
        self.spec = f"openai:{model}"
        self.base_url = base_url
        self.timeout, self.max_retries = timeout, max_retries
        official = base_url is None or urlparse(base_url).hostname == "api.openai.com"
        self.official = official
        self.prompt_logprobs = prompt_logprobs
        self._mode: str | None = None  # echo alignment, probed on first token_probs
        self.capabilities = Capabilities(
            token_probs=not official, top_logprobs=True, tools=True, json_schema=True
        )
        kwargs = dict(
            api_key=api_key or "not-needed", base_url=base_url, max_retries=max_retries, timeout=timeout
        )
        self._client = PerLoop(lambda: _Client(**kwargs, http_client=http_client))
        self._sem = PerLoop(lambda: asyncio.Semaphore(concurrency))

    async def chat(self, request: ChatRequest) -> ChatResponse:
        t0 = time.perf_counter()
        resp = await self._request(
            (await self._client.aget()).chat.completions.create, self.chat_params(request)
        )
        return self.chat_response(request, resp, time.perf_counter() - t0)

    def chat_params(self, request: ChatRequest) -> dict:
        """The body of a /v1/chat/completions request (also what a batch line carries)."""
        params: dict = {
            "model": self.model,
            "messages": [_message(m) for m in request.messages],
            "temperature": request.temperature,
        }
        params["max_completion_tokens" if self.official else "max_tokens"] = request.max_tokens
        if request.stop:
            params["stop"] = request.stop
        if request.seed is not None:
            params["seed"] = request.seed
        if request.top_logprobs > 0:
            params["logprobs"] = True
            params["top_logprobs"] = request.top_logprobs
        if request.tools:
            params["tools"] = [{"type": "function", "function": t.model_dump()} for t in request.tools]
        if request.json_schema is not None:
            if self.official:
                params["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "schema": request.json_schema},
                }
            else:  # llama.cpp and most compatible servers: a grammar from the schema
                params["response_format"] = {"type": "json_object", "schema": request.json_schema}
        return params

    def chat_response(self, request: ChatRequest, resp, latency: float) -> ChatResponse:  # noqa: ANN001
        """Our answer from the SDK's ChatCompletion; LLMError when it holds none we can use."""
        if not resp.choices:
            raise LLMError(f"{self.spec} returned no choices; check the model name and the server.")
        choice = resp.choices[0]
        text = choice.message.content or ""
        calls = []
        for tc in choice.message.tool_calls or []:
            try:
                args = json.loads(tc.function.arguments or "{}")
            except json.JSONDecodeError as e:
                raise LLMError(f"{self.spec} sent malformed tool arguments for {tc.function.name}.") from e
            calls.append(ToolCall(id=tc.id, name=tc.function.name, arguments=args))
        if request.json_schema is not None:
            parse_json_answer(text, request.json_schema, self.spec)
        logprobs = None
        if request.top_logprobs > 0:
            if choice.logprobs is None or choice.logprobs.content is None:
                raise LLMError(
                    f"{self.spec}: the server returned no logprobs; use a server that supports them."
                )
            logprobs = [
                TokenLogprob(
                    token=t.token, logprob=t.logprob, top={a.token: a.logprob for a in t.top_logprobs}
                )
                for t in choice.logprobs.content
            ]
        return ChatResponse(
            text=text,
            tool_calls=calls,
            logprobs=logprobs,
            finish_reason=choice.finish_reason,
            model=self.model,
            backend=self.backend,
            usage=self._usage(resp.usage, latency),
        )

    async def token_probs(self, request: TokenProbsRequest) -> TokenProbsResponse:
        if not self.capabilities.token_probs:
            raise LLMError(
                f"{self.spec} does not return prompt logprobs; use a local: model or an OpenAI-compatible "
                "server (e.g. llama.cpp) for exact simulation."
            )
        mode = await self._echo_mode()
        resp, latency = await self._prompt_logprobs(request.prompt, echo=True)
        at = _distributions(resp.choices[0].logprobs, mode, request.prompt, self.spec)
        probs, mass = [], []
        for p in request.positions:
            if p not in at:
                raise LLMError(
                    f"Position {p} of the prompt is not on a token boundary for {self.spec}; end each "
                    "prefix with a separator such as a tab."
                )
            raw = {c: math.exp(at[p][c]) if c in at[p] else 0.0 for c in request.candidates}
            total = sum(raw.values())
            if total <= 0:
                raise LLMError(
                    f"{self.spec}: none of the candidates is among the top {self.prompt_logprobs} tokens at "
                    f"position {p}; raise prompt_logprobs or use a local: model."
                )
            probs.append({c: v / total for c, v in raw.items()})
            mass.append(total)
        return TokenProbsResponse(
            probs=probs,
            mass=mass,
            model=self.model,
            backend=self.backend,
            usage=self._usage(resp.usage, latency),
        )

    # -- internals ------------------------------------------------------------------------------
    async def _prompt_logprobs(self, prompt: str, echo: bool):  # noqa: ANN202
        params = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": echo,
            "logprobs": max(self.prompt_logprobs, 1),
        }
        t0 = time.perf_counter()
        try:
            resp = await self._request((await self._client.aget()).completions.create, params)
        except LLMError as e:
            if echo and "echo" in str(e).lower():  # llama.cpp's C++ llama-server: "Only no echo is supported"
                raise LLMError(
                    f"{self.spec}: the server does not echo prompt logprobs ({e}); for exact simulation "
                    "serve the model with vLLM or llama-cpp-python's server, or use --simulator-mode json."
                ) from e
            raise
        lp = resp.choices[0].logprobs if resp.choices else None
        if lp is None or not lp.text_offset or lp.top_logprobs is None:
            raise LLMError(
                f"{self.spec}: the server returned no prompt logprobs; start it with logits for every "
                "token (llama.cpp: --logits_all true)."
            )
        return resp, time.perf_counter() - t0

    async def _echo_mode(self) -> str:
        """How the server aligns echoed prompt logprobs, probed once.

        "standard" (OpenAI): entry i is the distribution of token i given the tokens before it.
        "shifted" (llama-cpp-python): entry i is the distribution of the token after token i.
        The probe compares the echoed entries with the (unambiguous) distribution of the first
        generated token of the same prompt without echo.
        """
        if self._mode is not None:
            return self._mode
        probe = "1, 2, 3, 4, 5, 6, 7,"
        echoed, _ = await self._prompt_logprobs(probe, echo=True)
        plain, _ = await self._prompt_logprobs(probe, echo=False)
        truth = plain.choices[0].logprobs.top_logprobs[0] or {}
        for mode in ("shifted", "standard"):
            got = _distributions(echoed.choices[0].logprobs, mode, probe, self.spec)
            got = got.get(len(probe))
            if got and truth and _same(got, truth):
                self._mode = mode
                return mode
        raise LLMError(
            f"{self.spec}: the server's echoed prompt logprobs match neither known alignment; "
            "use a local: model for token_probs."
        )

    def _usage(self, u, latency: float) -> Usage:  # noqa: ANN001 - the SDK's usage object
        pt = getattr(u, "prompt_tokens", 0) or 0
        ct = getattr(u, "completion_tokens", 0) or 0
        details = getattr(u, "prompt_tokens_details", None)
        reused = getattr(details, "cached_tokens", 0) or 0
        cost = cost_usd(self.model, pt, ct) if self.official else None
        return Usage(
            prompt_tokens=pt,
            completion_tokens=ct,
            reused_prompt_tokens=reused,
            latency_s=latency,
            cost_usd=cost,
        )

    async def _request(self, create, params: dict):  # noqa: ANN001, ANN202
        """One call under the concurrency bound; SDK errors become LLMError with the fix named."""
        where = self.base_url or "api.openai.com"
        not_openai = (
            f"{self.spec}: {where} did not send an OpenAI-compatible answer ({{}}); check that --base-url "
            "points at an OpenAI-compatible API (it usually ends in /v1)."
        )
        async with self._sem.get():
            try:
                resp = await create(**params)
            except openai.AuthenticationError as e:
                raise LLMError(
                    f"{self.spec}: {where} rejected the API key (401); check OPENAI_API_KEY."
                ) from e
            except openai.PermissionDeniedError as e:
                raise LLMError(f"{self.spec}: the API key may not use this model (403); pick another.") from e
            except openai.NotFoundError as e:
                raise LLMError(f"{self.spec}: {where} does not know this model or endpoint (404).") from e
            except openai.BadRequestError as e:
                raise LLMError(f"{self.spec}: request rejected (400): {e.message}") from e
            except openai.RateLimitError as e:
                if "insufficient_quota" in (e.code, e.type):
                    raise OutOfCreditError(
                        f"{self.spec}: {where} refused the call for lack of credit ({_message_of(e)}); "
                        "add credit to the account or use another key."
                    ) from e
                raise LLMError(
                    f"{self.spec}: still rate-limited after {self.max_retries} retries (429); "
                    "lower --concurrency or raise --retries."
                ) from e
            except openai.APITimeoutError as e:
                raise LLMError(
                    f"{self.spec}: {where} did not answer within {self.timeout:g} s "
                    f"({self.max_retries} retries); raise --timeout or check the server."
                ) from e
            except openai.APIConnectionError as e:
                raise LLMError(f"{self.spec}: cannot reach {where}; check the server and --base-url.") from e
            except openai.APIStatusError as e:
                raise LLMError(
                    f"{self.spec}: {where} answered {e.status_code} after retries: {e.message}"
                ) from e
            except json.JSONDecodeError as e:
                raise LLMError(not_openai.format(f"malformed JSON: {e.msg}")) from e
        if isinstance(resp, str) or not isinstance(resp, openai.BaseModel):
            raise LLMError(not_openai.format(f"not JSON: {str(resp)[:60]!r}"))
        return resp


def _message_of(e: openai.APIStatusError) -> str:
    """The provider's own error message (the body's error.message), else the SDK's summary."""
    body = e.body.get("error", e.body) if isinstance(e.body, dict) else None
    return str(body["message"] if isinstance(body, dict) and body.get("message") else e.message)


def _message(m: Message) -> dict:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    out: dict = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in m.tool_calls
        ]
    return out


def _distributions(lp, mode: str, prompt: str, spec: str) -> dict[int, dict[str, float]]:  # noqa: ANN001
    """Char offset p -> top logprobs of the next token after prompt[:p], from the echoed logprobs `lp`
    (the SDK's) of `prompt`.

    Where the offsets just add up the tokens' lengths (vLLM, llama-cpp-python), they may count a BOS
    token the prompt does not hold (vLLM): they are moved back by its length; and the tokens must spell
    the prompt (a character split across tokens decodes to U+FFFD and would shift every later offset:
    refused, never misread).
    """
    offsets = list(lp.text_offset)
    if _cumulative(offsets, lp.tokens):
        joined = "".join(lp.tokens)
        shift = next((n for n in (0, len(lp.tokens[0])) if joined[n:].startswith(prompt)), None)
        if shift is None:
            raise LLMError(
                f"{spec}: the server's echoed tokens do not spell the prompt (a character split across "
                "tokens?), so their offsets cannot be trusted; keep the examples to plain text or use a "
                "local: model."
            )
        offsets = [o - shift for o in offsets]
    at: dict[int, dict[str, float]] = {}
    for i, (off, tok, top) in enumerate(zip(offsets, lp.tokens, lp.top_logprobs, strict=False)):
        if top is None or off < 0:
            continue
        after = offsets[i + 1] if i + 1 < len(offsets) else off + len(tok)  # where the token ends
        at.setdefault(off if mode == "standard" else after, top)
    return at


def _cumulative(offsets: list[int], tokens: list[str]) -> bool:
    """Offsets that start at 0 and add up the tokens' lengths (how vLLM writes them)."""
    return (
        bool(offsets)
        and offsets[0] == 0
        and all(offsets[i + 1] == offsets[i] + len(tokens[i]) for i in range(len(offsets) - 1))
    )


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Two top-logprob dicts describe the same distribution (same best token, close logprobs)."""
    best = max(b, key=b.get)
    return best in a and abs(a[best] - b[best]) < 0.05 and max(a, key=a.get) == best
