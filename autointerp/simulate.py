"""Simulators: predict a unit's per-token activations (0-9) from an explanation.

A `Simulator` is registered by name in `SIMULATORS` (the `--simulator-mode` of `label`). Built in:
- `exact`: the explanation, then the example's tokens one per line as `token<TAB>digit`, every digit
  written as the sparse prior "0"; in one forward pass the distribution over "0".."9" after each TAB
  gives that token's expected value. The filler is on the scale, so the probability the model puts on
  the scale (`mass`, kept per token) stays near 1, and a simulation whose median mass is below
  `MASS_FLOOR` is reported as failed, never as a score. (An off-scale filler such as `unknown` is
  copied: measured, ~4e-5 of the mass left on the digits.) Chunked: a window is listed a few tokens at
  a time (`listing_pieces`: at least `CHUNK` (2), at most `MAX_CHUNK` (4), cut only before a token that
  can start a word, so trailing punctuation stays with its word: "self" and its ".", "1990" and its
  ","), each chunk a listing of its own right after the prompt (the prompt and the explanation are
  computed once per batch and shared): along a listing of zeros the model copies "0" more and more and
  stops reading the explanation (" son" 0.1 in a window's 15th line for "family relations like father,
  son, wife"; " not" 0.0 for "negation words like not and no"); measured on the synthetic suite
  (truth's mean correlation): whole windows 0.51, fixed chunks of 8, 4, 2 tokens 0.64, 0.70, 0.70,
  2-4 tokens cut at word starts 0.73 (and the truth first on 12 of 12 units, against 11); the
  forward tokens stay those of the listing. Calibrated: every chunk is read once more under the null
  explanation `NULL_EXPLANATION`, and a token's prediction is its expected value under the
  explanation minus under the null. That takes out what the model predicts whatever the explanation
  says: tokens it finds salient anyway (" Wright" 6.3 for "names of months").
  Measured on the synthetic suite (eval/bench_simulator.py, docs/benchmarks.md). Works with any
  backend that returns token probabilities at prompt positions (the local backend; OpenAI-compatible
  servers via prompt logprobs).
- `exact-raw`: `exact` without the null read (half the forward passes; the uncalibrated figures).
- `exact-whole`: `exact` with each window in one listing (`simulate-exact@4`'s read).
- `exact-follow`: the same listing, but after each TAB the model continues with its own most likely
  digit (teacher-forced, one forward step per token with the key/value cache). Measured worse on the
  synthetic suite: a wrong high digit makes the next ones high too (eval/bench_simulator.py).
- `head-exact`: `exact-raw` with a prompt for attention heads (activation: how strongly the head attends
  from a token to an earlier one).
- `json`: the model writes the activations as a JSON list (APIs without logprobs); checked for length
  and range, retried once, and otherwise a SimulationError, never zeros.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from autointerp.llm.base import (
    LLM,
    ChatRequest,
    LLMError,
    StepwiseRequest,
    StepwiseResponse,
    TokenProbsRequest,
    TokenProbsResponse,
    Usage,
)
from autointerp.llm.batch import in_turn
from autointerp.llm.stepwise import read_stepwise
from autointerp.prompts import Prompt, prompt
from autointerp.registry import Registry
from autointerp.render import crop, show_token
from autointerp.types import Example

DIGITS = [str(i) for i in range(10)]
PRIOR = "0"  # the digit written after every TAB of the exact listing: most tokens of a unit are 0
CHUNK = 2  # fewest tokens per listing in `exact` (a window's last listing may have fewer)
MAX_CHUNK = 4  # most tokens per listing: past it a listing is cut even inside a word
WORD_OPENERS = "\"'#([{<"  # punctuation that can open a listing (any other continues the token before)
NULL_EXPLANATION = "N/A"  # `exact` reads each listing under it too and subtracts (calibration)


class SimulationError(LLMError):
    """The simulator's answer could not be turned into activations."""


class Simulation(BaseModel):
    unit_id: str
    kind: str
    rank: int
    expected: list[float]  # predicted activation per token, 0-9 scale (a leading BOS is left out);
    # calibrated (`exact`): the expected value under the explanation minus under the null, -9..9
    true: list[float]  # the recorded activations of the same tokens
    mass: list[float] | None = None  # exact mode: probability on the scale tokens at each token (the
    # lower of the two reads where calibrated)
    raw: list[float] | None = None  # calibrated: the expected value under the explanation alone


def check_explanation(explanation: str) -> None:
    if not explanation.strip():
        raise SimulationError("The explanation is empty; there is nothing to simulate.")


def is_null_read(prompt: str) -> bool:
    """Whether an exact listing is the calibration read under `NULL_EXPLANATION`."""
    return prompt.rpartition("Explanation: ")[2].startswith(NULL_EXPLANATION + "\n")


def opens_listing(token: str) -> bool:
    """Whether a listing may start at `token`: whitespace, a letter or digit, or an opening mark. Other
    punctuation stays with the token before it (the "." after "self", the "," after "1990")."""
    head = token[:1]
    return not head or head.isspace() or head.isalnum() or head in WORD_OPENERS


def listing_pieces(tokens: list[str], least: int = CHUNK, most: int = MAX_CHUNK) -> list[list[str]]:
    """`tokens` cut into listings of `least` to `most` tokens, each cut before a token that opens one
    (a listing that reaches `most` is cut anyway)."""
    pieces: list[list[str]] = []
    for tok in tokens:
        if pieces and len(pieces[-1]) < most and (len(pieces[-1]) < least or not opens_listing(tok)):
            pieces[-1].append(tok)
        else:
            pieces.append([tok])
    return pieces or [[]]


def expected_value(dist: dict[str, float]) -> float:
    return sum(int(d) * p for d, p in dist.items())


class ExactSimulator:
    """Reads the scale at every token of a window, each TAB followed by the prior "0", in listings of a
    few tokens (`listing_pieces`); calibrated by the same reads under the null explanation."""

    name = "exact"
    filler = PRIOR  # after every TAB
    calibrated = True
    chunk: int | None = CHUNK  # fewest tokens per listing (`listing_pieces`); None: the whole window in one

    def __init__(self, llm: LLM):
        if not llm.capabilities.token_probs:
            raise LLMError(
                f"{llm.spec} gives no token probabilities at prompt positions; use --simulator-mode json."
            )
        self.llm = llm
        self.prompt = prompt("simulate_exact.j2")

    def request(self, explanation: str, tokens: list[str]) -> TokenProbsRequest:
        """One listing of `tokens`, read at every TAB."""
        text, positions = self.prompt.text(explanation=explanation), []
        for tok in tokens:
            text += show_token(tok) + "\t"
            positions.append(len(text))
            text += self.filler + "\n"
        return TokenProbsRequest(prompt=text, positions=positions, candidates=DIGITS)

    def pieces(self, tokens: list[str]) -> list[list[str]]:
        """A window's tokens cut into the listings it is read in."""
        if self.chunk is None:
            return [tokens]
        return listing_pieces(tokens, self.chunk, max(self.chunk, MAX_CHUNK))

    async def read(self, explanation: str, windows: list[list[str]]) -> list[TokenProbsResponse]:
        """The scale distribution (and its mass) at every token of every window: every chunk is one
        request, all in one batch (they share the prompt and explanation: one prefix computed once),
        joined back into one response per window."""
        requests, spans = [], []
        for tokens in windows:
            start = len(requests)
            requests += [self.request(explanation, piece) for piece in self.pieces(tokens)]
            spans.append((start, len(requests)))
        answers = await self.llm.token_probs_many(requests)
        return [join_responses(answers[a:b]) for a, b in spans]

    async def simulate(self, explanation: str, examples: list[Example]) -> list[Simulation]:
        check_explanation(explanation)
        shown = [crop(e, 0) for e in examples]
        windows = [toks for toks, _ in shown]
        responses = await self.read(explanation, windows)
        nulls: list = await self.read(NULL_EXPLANATION, windows) if self.calibrated else [None] * len(windows)
        out = []
        for e, (_, acts), resp, null in zip(examples, shown, responses, nulls, strict=True):
            raw = [expected_value(dist) for dist in resp.probs]
            expected, mass, kept = raw, resp.mass, None
            if null is not None:  # calibrated: minus the null read, on the lower of the two masses
                base = [expected_value(dist) for dist in null.probs]
                expected = [r - b for r, b in zip(raw, base, strict=True)]
                mass = [min(a, b) for a, b in zip(resp.mass, null.mass, strict=True)]
                kept = raw
            out.append(
                Simulation(
                    unit_id=e.unit_id,
                    kind=e.kind,
                    rank=e.rank,
                    expected=expected,
                    true=acts,
                    mass=mass,
                    raw=kept,
                )
            )
        return out


def sum_usage(parts: list[Usage]) -> Usage:
    """What several calls spent together (cached only if every one was)."""
    costs = [u.cost_usd for u in parts if u.cost_usd is not None]
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in parts),
        completion_tokens=sum(u.completion_tokens for u in parts),
        reused_prompt_tokens=sum(u.reused_prompt_tokens for u in parts),
        latency_s=sum(u.latency_s for u in parts),
        cost_usd=sum(costs) if costs else None,
        cached=all(u.cached for u in parts),
    )


def join_responses(parts: list[TokenProbsResponse]) -> TokenProbsResponse:
    """The responses to a window's chunks as one response: positions in order, usage summed."""
    first = parts[0]
    return TokenProbsResponse(
        probs=[d for p in parts for d in p.probs],
        mass=[m for p in parts for m in p.mass],
        model=first.model,
        backend=first.backend,
        usage=sum_usage([p.usage for p in parts]),
    )


class RawSimulator(ExactSimulator):
    """`exact` without the null read: half the forward passes, the uncalibrated prediction."""

    name = "exact-raw"
    calibrated = False


class WholeSimulator(ExactSimulator):
    """`exact` with every window in one listing (`simulate-exact@4`'s read)."""

    name = "exact-whole"
    chunk = None


class HeadSimulator(ExactSimulator):
    """`exact` for attention heads: the listing asks, per token, how strongly the head attends from it
    (as the destination) to an earlier token."""

    name = "head-exact"
    calibrated = False  # not validated for heads (eval/heads_validation.py measured the raw read)
    chunk = None  # likewise: the whole window in one listing, as validated

    def __init__(self, llm: LLM):
        super().__init__(llm)
        self.prompt = prompt("simulate_head.j2")


class FollowingSimulator(ExactSimulator):
    """The exact listing read stepwise: after each TAB the model's own most likely digit follows."""

    name = "exact-follow"
    calibrated = False

    def request(self, explanation: str, tokens: list[str]) -> StepwiseRequest:  # type: ignore[override]
        return StepwiseRequest(
            prompt=self.prompt.text(explanation=explanation),
            steps=[show_token(t) + "\t" for t in tokens],
            candidates=DIGITS,
        )

    async def read(self, explanation: str, windows: list[list[str]]) -> list[StepwiseResponse]:  # type: ignore[override]
        return await read_stepwise(self.llm, [self.request(explanation, toks) for toks in windows])


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
        check_explanation(explanation)
        tokens, acts = crop(example, 0)
        tokens = [show_token(t) for t in tokens]
        messages = self.prompt.messages(explanation=explanation, tokens=tokens)
        error: SimulationError | None = None
        for attempt in range(self.retries + 1):
            req = ChatRequest(
                messages=messages,
                temperature=0.0 if attempt == 0 else 0.7,
                seed=attempt,
                max_tokens=4 * len(tokens) + 16,
                json_answer=True,
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
                true=acts,
            )
        raise error or SimulationError("no answer")

    async def simulate(self, explanation: str, examples: list[Example]) -> list[Simulation]:
        """One chat per example, in turn (a --batch run notes every example's request at once)."""
        return await in_turn(self.simulate_one(explanation, e) for e in examples)


@runtime_checkable
class Simulator(Protocol):
    """An explanation and examples in, one simulation per example out."""

    name: str
    prompt: Prompt  # recorded with every score made from its simulations

    async def simulate(self, explanation: str, examples: list[Example]) -> list[Simulation]: ...


SIMULATORS: Registry[Callable[[LLM], Simulator]] = Registry("simulator mode")
SIMULATORS.register("exact")(ExactSimulator)
SIMULATORS.register("exact-raw")(RawSimulator)
SIMULATORS.register("exact-whole")(WholeSimulator)
SIMULATORS.register("exact-follow")(FollowingSimulator)
SIMULATORS.register("json")(JsonSimulator)
SIMULATORS.register("head-exact")(HeadSimulator)


def make_simulator(llm: LLM, mode: str = "auto") -> Simulator:
    """`exact` where the backend gives token probabilities, `json` otherwise (or as asked)."""
    if mode == "auto":
        mode = "exact" if llm.capabilities.token_probs else "json"
    if mode not in SIMULATORS:
        raise LLMError(f"unknown simulator mode {mode!r}; use {', '.join(SIMULATORS.names())} or auto")
    return SIMULATORS[mode](llm)
