"""A scripted LLM (no model): queued chat answers and rule-given token probabilities, for tests and dry runs.

Like the `llm` CLI's mock model: chat answers come from a queue (`enqueue`), each a string, a function
of the request, or an exception to raise; when the queue is empty, `respond(request)` answers (if
given). Token probabilities come from `probs(prefix, candidates)` (a dict, renormalised over the
candidates; uniform without it), with `mass` as the probability on the candidates; a listing under the
exact simulator's null explanation (its calibration read) gets all of it on "0", as a model would
predict nothing for an explanation that says nothing (`null_probs` to script it). Every request is
kept in `requests`. `get_llm("scripted:NAME")` serves the instance registered as NAME (`register`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from autointerp.errors import UserError
from autointerp.llm.base import (
    LLM,
    Capabilities,
    ChatRequest,
    ChatResponse,
    LLMError,
    TokenProbsRequest,
    TokenProbsResponse,
    Usage,
)

Answer = str | Callable[[ChatRequest], str] | BaseException
Probs = Callable[[str, list[str]], dict[str, float]]

_REGISTERED: dict[str, ScriptedLLM] = {}


class ScriptedLLM(LLM):
    backend = "scripted"

    def __init__(
        self,
        name: str = "scripted",
        answers: Iterable[Answer] = (),
        *,
        respond: Callable[[ChatRequest], str] | None = None,
        probs: Probs | None = None,
        mass: float = 1.0,
        token_probs: bool = True,
        null_probs: Probs | None = None,
    ):
        self.model, self.spec = name, f"scripted:{name}"
        self.answers: deque[Answer] = deque(answers)
        self.respond, self.probs, self.mass = respond, probs, mass
        self.null_probs = null_probs or (lambda _prefix, candidates: {candidates[0]: 1.0})
        self.capabilities = Capabilities(
            token_probs=token_probs, top_logprobs=False, tools=False, json_schema=False
        )
        self.requests: list[ChatRequest | TokenProbsRequest] = []

    def enqueue(self, *answers: Answer) -> None:
        self.answers.extend(answers)

    def register(self) -> str:
        """Serve this instance for the spec `scripted:NAME`; returns the spec."""
        _REGISTERED[self.model] = self
        return self.spec

    def unregister(self) -> None:
        _REGISTERED.pop(self.model, None)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        answer = self.answers.popleft() if self.answers else self.respond
        if answer is None:
            raise LLMError(f"{self.spec} has no scripted answer left; enqueue one.")
        if isinstance(answer, BaseException):
            raise answer
        text = answer if isinstance(answer, str) else answer(request)
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(text.split()))
        return ChatResponse(
            text=text, finish_reason="stop", model=self.model, backend=self.backend, usage=usage
        )

    async def token_probs(self, request: TokenProbsRequest) -> TokenProbsResponse:
        if not self.capabilities.token_probs:
            raise LLMError(f"{self.spec} gives no token probabilities; use --simulator-mode json.")
        from autointerp.simulate import is_null_read

        self.requests.append(request)
        rule = self.null_probs if is_null_read(request.prompt) else self.probs
        probs = []
        for p in request.positions:
            given = rule(request.prompt[:p], request.candidates) if rule else {}
            weights = [given.get(c, 0.0) for c in request.candidates]
            total = sum(weights)
            n = len(weights)
            probs.append(
                {c: w / total if total else 1 / n for c, w in zip(request.candidates, weights, strict=True)}
            )
        usage = Usage(prompt_tokens=len(request.prompt.split()))
        return TokenProbsResponse(
            probs=probs, mass=[self.mass] * len(probs), model=self.model, backend=self.backend, usage=usage
        )


def registered(name: str) -> ScriptedLLM:
    """The scripted LLM registered as `name`; UserError if none is."""
    if name not in _REGISTERED:
        raise UserError(f"No scripted LLM is registered as {name!r}; call ScriptedLLM(...).register() first.")
    return _REGISTERED[name]
