"""Simulators: predict a unit's per-token activations (0-9) from an explanation.

- `exact`: one pass over explanation + tokens; at every token the distribution over "0".."9" after the
  token's TAB gives the expected value. Works with any backend that returns token probabilities at
  prompt positions (the local backend exactly; an OpenAI-compatible server through prompt logprobs).
- `json`: the model writes the activations as a JSON list (APIs without logprobs); checked for length
  and range, retried once, and otherwise a SimulationError, never zeros.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel

from autointerp.llm.base import LLM, ChatRequest, LLMError, TokenProbsRequest
from autointerp.prompts import prompt
from autointerp.types import Example

DIGITS = [str(i) for i in range(10)]
PLACEHOLDER = "unknown"  # what follows each TAB in the all-at-once listing (only the prefix is read)


class SimulationError(LLMError):
    """The simulator's answer could not be turned into activations."""


class Simulation(BaseModel):
    unit_id: str
    kind: str
    rank: int
    expected: list[float]  # predicted activation per token, 0-9 scale
    true: list[float]  # the recorded activations


def show_token(tok: str) -> str:
    return tok.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


class ExactSimulator:
    name = "exact"

    def __init__(self, llm: LLM):
        if not llm.capabilities.token_probs:
            raise LLMError(
                f"{llm.spec} gives no token probabilities at prompt positions; use --simulator-mode json."
            )
        self.llm = llm
        self.prompt = prompt("simulate_exact.j2")

    def request(self, explanation: str, tokens: list[str]) -> TokenProbsRequest:
        text = self.prompt.text(explanation=explanation)
        positions = []
        for tok in tokens:
            text += show_token(tok) + "\t"
            positions.append(len(text))
            text += PLACEHOLDER + "\n"
        return TokenProbsRequest(prompt=text + "<end>\n", positions=positions, candidates=DIGITS)

    async def simulate(self, explanation: str, examples: list[Example]) -> list[Simulation]:
        reqs = [self.request(explanation, e.context.tokens) for e in examples]
        many = getattr(self.llm, "token_probs_many", None)
        if many is not None:
            responses = await many(reqs)
        else:
            responses = [await self.llm.token_probs(r) for r in reqs]
        return [
            Simulation(
                unit_id=e.unit_id,
                kind=e.kind,
                rank=e.rank,
                expected=[sum(int(d) * p for d, p in dist.items()) for dist in resp.probs],
                true=e.acts,
            )
            for e, resp in zip(examples, responses, strict=True)
        ]


def parse_json_activations(text: str, n: int) -> list[float]:
    """The first JSON list in `text`: exactly n numbers in 0..9, else SimulationError."""
    m = re.search(r"\[[^\[\]]*\]", text)
    if not m:
        raise SimulationError(f"no JSON list in the simulator's answer: {text[:80]!r}")
    try:
        values = json.loads(m.group(0))
    except json.JSONDecodeError as e:
        raise SimulationError(f"malformed JSON list in the simulator's answer: {m.group(0)[:80]!r}") from e
    if len(values) != n:
        raise SimulationError(f"the simulator gave {len(values)} activations for {n} tokens")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 9 for v in values):
        raise SimulationError("the simulator gave activations outside 0..9 or non-numbers")
    return [float(v) for v in values]


class JsonSimulator:
    name = "json"

    def __init__(self, llm: LLM, retries: int = 1):
        self.llm = llm
        self.retries = retries
        self.prompt = prompt("simulate_json.j2")

    async def simulate_one(self, explanation: str, example: Example) -> Simulation:
        tokens = [show_token(t) for t in example.context.tokens]
        messages = self.prompt.messages(explanation=explanation, tokens=tokens)
        error: SimulationError | None = None
        for attempt in range(self.retries + 1):
            req = ChatRequest(
                messages=messages,
                temperature=0.0 if attempt == 0 else 0.7,
                seed=attempt,
                max_tokens=4 * len(tokens) + 16,
            )
            resp = await self.llm.chat(req)
            try:
                expected = parse_json_activations(resp.text, len(tokens))
            except SimulationError as e:
                error = e
                continue
            return Simulation(
                unit_id=example.unit_id,
                kind=example.kind,
                rank=example.rank,
                expected=expected,
                true=example.acts,
            )
        raise error or SimulationError("no answer")

    async def simulate(self, explanation: str, examples: list[Example]) -> list[Simulation]:
        return [await self.simulate_one(explanation, e) for e in examples]


def make_simulator(llm: LLM, mode: str = "auto") -> ExactSimulator | JsonSimulator:
    """`exact` where the backend gives token probabilities, `json` otherwise (or as asked)."""
    if mode == "auto":
        mode = "exact" if llm.capabilities.token_probs else "json"
    if mode == "exact":
        return ExactSimulator(llm)
    if mode == "json":
        return JsonSimulator(llm)
    raise LLMError(f"unknown simulator mode {mode!r}; use exact, json or auto")
