"""The agent's tools: pydantic-typed arguments and results, each call one stored experiment.

The agent sees only the explain split: every recorded example of the unit that no scorer reads
(`agent_examples`). The held-out test set, the quantile windows and the negatives the scorers read, and
counterfactual pairs that score, are never reachable through a tool, so the final explanation is scored
on examples the agent never saw. `score` simulates on explain-split examples, never on the test set.
Tools run fixed code on typed arguments: nothing the model writes is ever executed.
"""

from __future__ import annotations

import asyncio
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autointerp.agent.reader import ActReader
from autointerp.llm.base import Tool
from autointerp.render import MARK_AT, body, marked, show_token
from autointerp.sampling import UnitSample
from autointerp.score import sim_correlation
from autointerp.simulate import Simulator
from autointerp.types import Example

MAX_TEXTS = 8  # texts per activations call
MAX_CHARS = 400  # characters per text


class ToolError(Exception):
    """A tool could not run on valid-looking arguments (e.g. out of score budget); told to the agent."""


class ActionError(ToolError):
    """An action the agent cannot take: unknown tool, malformed or invalid arguments."""


def _text(v: str) -> str:
    if not v.strip():
        raise ValueError("a text is empty; write the text to read")
    if len(v) > MAX_CHARS:
        raise ValueError(f"a text is longer than {MAX_CHARS} characters; shorten it")
    return v


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExamplesArgs(Args):
    kind: Literal["top", "random", "quantile", "negative"] = Field(
        "top", description="top: strongest windows; random: uniform windows; negative: non-firing windows"
    )
    n: int = Field(5, ge=1, le=20, description="how many examples")
    quantile: int | None = Field(None, ge=0, description="kind quantile only: which activation quantile")


class ActivationsArgs(Args):
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS, description="texts you write, 1 to 8")

    @field_validator("texts")
    @classmethod
    def _texts(cls, v: list[str]) -> list[str]:
        return [_text(t) for t in v]


class CompareArgs(Args):
    text: str = Field(description="the original text")
    edited_text: str = Field(description="the same text with a small edit")

    @field_validator("text", "edited_text")
    @classmethod
    def _texts(cls, v: str) -> str:
        return _text(v)


class ScoreArgs(Args):
    explanation: str = Field(min_length=1, max_length=200, description="a short hypothesis to test")


class FinishArgs(Args):
    explanation: str = Field(min_length=1, max_length=200, description="the final short explanation")
    supporting: list[str] = Field(default_factory=list, description="experiment ids that support it")
    refuting: list[str] = Field(default_factory=list, description="experiment ids that speak against it")


class AnswerArgs(Args):
    text: str = Field(min_length=1, description="your answer to the person")
    hypothesis: str | None = Field(None, description="your current explanation, if you have one")


class TokenAct(BaseModel):
    token: str
    act: float


class ShownExample(BaseModel):
    kind: str
    rank: int
    max_act: float
    text: str  # the window around the peak, tokens at >= 40% of the unit's max in [[ ]]
    active: list[TokenAct]  # the marked tokens with their activations


class ExamplesResult(BaseModel):
    examples: list[ShownExample]

    def brief(self) -> str:
        if not self.examples:
            return "no examples"
        return "\n".join(f"{e.kind} #{e.rank} (max {e.max_act:.2f}): {e.text}" for e in self.examples)


class TextActs(BaseModel):
    text: str
    tokens: list[str]
    acts: list[float]
    max_act: float
    peak_token: str | None  # the token at the maximum (None when the unit stays at 0)

    def brief(self, unit_max: float) -> str:
        firing = [
            f"{show_token(t)!r} {a:.2f}"
            for t, a in zip(self.tokens, self.acts, strict=True)
            if a > 0 and a >= 0.1 * unit_max
        ]
        fires = ", ".join(firing[:10]) or "nothing"
        return f"{self.text[:80]!r}: max {self.max_act:.2f}; fires on {fires}"


class ActivationsResult(BaseModel):
    unit_max: float  # the unit's recorded maximum, for scale
    results: list[TextActs]

    def brief(self) -> str:
        return "\n".join(r.brief(self.unit_max) for r in self.results)


class CompareResult(BaseModel):
    unit_max: float
    before: TextActs
    after: TextActs
    change: float  # after.max_act - before.max_act

    def brief(self) -> str:
        return (
            f"before {self.before.brief(self.unit_max)}\nafter {self.after.brief(self.unit_max)}\n"
            f"change of max: {self.change:+.2f}"
        )


class ScoreResult(BaseModel):
    explanation: str
    correlation: float | None  # None when undefined (constant prediction or truth)
    n_examples: int
    scores_left: int

    def brief(self) -> str:
        value = "undefined" if self.correlation is None else f"{self.correlation:.3f}"
        return (
            f"correlation {value} of the simulation of {self.explanation!r} with the unit on "
            f"{self.n_examples} explain-split examples; {self.scores_left} score calls left"
        )


class FinishResult(BaseModel):
    explanation: str
    supporting: list[str]
    refuting: list[str]

    def brief(self) -> str:
        return f"final explanation: {self.explanation!r}"


class AnswerResult(BaseModel):
    text: str
    hypothesis: str | None

    def brief(self) -> str:
        return self.text


TOOL_ARGS: dict[str, type[Args]] = {
    "examples": ExamplesArgs,
    "activations": ActivationsArgs,
    "compare": CompareArgs,
    "score": ScoreArgs,
    "finish": FinishArgs,
    "answer": AnswerArgs,
}
DESCRIPTIONS = {
    "examples": "Recorded examples of the unit (explain split), activating tokens in [[ ]].",
    "activations": "The unit's activation at every token of texts you write, on the live model.",
    "compare": "Activations on a text and on an edited copy of it: does the edit switch the unit on or off?",
    "score": "Simulate the unit from a short explanation and correlate with its real activations.",
    "finish": "End the investigation with the final explanation and the experiment ids behind it.",
    "answer": "Reply to the person (chat): your answer and your current hypothesis.",
}


def agent_examples(sample: UnitSample, stored: list[Example]) -> dict[str, list[Example]]:
    """The explain split by kind: every stored example of the unit that no scorer reads.

    Left out: the correlation test set, the quantile windows and negatives (read by the correlation,
    detection, fuzzing and embedding scorers) and both sides of the counterfactual pairs that score.
    """
    scored = sample.test + sample.quantile + sample.negatives
    scored += [e for pair in sample.counterfactual_pairs for e in pair]
    held = {(e.kind, e.rank) for e in scored}
    out: dict[str, list[Example]] = {}
    for e in stored:
        if (e.kind, e.rank) not in held:
            out.setdefault(e.kind, []).append(e)
    return out


def text_acts(text: str, tokens: list[str], acts: list[float]) -> TextActs:
    peak = max(range(len(acts)), key=acts.__getitem__) if acts else None
    top = acts[peak] if peak is not None else 0.0
    return TextActs(
        text=text,
        tokens=tokens,
        acts=[round(a, 4) for a in acts],
        max_act=round(top, 4),
        peak_token=tokens[peak] if peak is not None and top > 0 else None,
    )


class Toolbox:
    """The tools on one unit: its explain split, its activation reader and the run's simulator."""

    def __init__(
        self,
        sample: UnitSample,
        stored: list[Example],
        reader: ActReader,
        simulator: Simulator,
        *,
        max_scores: int = 5,
        n_score: int = 10,
        window: int = 24,
    ):
        self.sample, self.reader, self.simulator = sample, reader, simulator
        self.pool = agent_examples(sample, stored)
        self.unit_max = sample.unit.stats.max
        self.scores_left, self.n_score, self.window = max_scores, n_score, window

    def specs(self, names: list[str]) -> list[Tool]:
        """The named tools as JSON-schema function specs (what a tool-calling backend is sent)."""
        return [
            Tool(name=n, description=DESCRIPTIONS[n], parameters=TOOL_ARGS[n].model_json_schema())
            for n in names
        ]

    @staticmethod
    def parse(name: str, arguments: dict, allowed: list[str]) -> Args:
        """Validated arguments of an allowed tool; ActionError naming what is wrong."""
        if name not in allowed:
            raise ActionError(f"there is no tool {name!r}; use one of {', '.join(allowed)}")
        try:
            return TOOL_ARGS[name].model_validate(arguments)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "arguments"
            raise ActionError(f"bad arguments for {name}: {where}: {first['msg']}") from None

    async def run(self, name: str, args: Args) -> BaseModel:
        """Run a tool on validated arguments; ToolError when it cannot."""
        if isinstance(args, ExamplesArgs):
            return self.examples(args)
        if isinstance(args, ActivationsArgs):
            read = await asyncio.to_thread(self.reader.read, args.texts)
            return ActivationsResult(
                unit_max=self.unit_max,
                results=[text_acts(t, *r) for t, r in zip(args.texts, read, strict=True)],
            )
        if isinstance(args, CompareArgs):
            (b, a) = await asyncio.to_thread(self.reader.read, [args.text, args.edited_text])
            before, after = text_acts(args.text, *b), text_acts(args.edited_text, *a)
            return CompareResult(
                unit_max=self.unit_max,
                before=before,
                after=after,
                change=round(after.max_act - before.max_act, 4),
            )
        if isinstance(args, ScoreArgs):
            return await self.score(args.explanation)
        if isinstance(args, FinishArgs):
            return FinishResult(**args.model_dump())
        if isinstance(args, AnswerArgs):
            return AnswerResult(**args.model_dump())
        raise ActionError(f"there is no tool {name!r}")  # pragma: no cover - parse refuses it first

    def examples(self, args: ExamplesArgs) -> ExamplesResult:
        pool = self.pool.get(args.kind, [])
        if args.quantile is not None:
            if args.kind != "quantile":
                raise ActionError("quantile applies only to kind 'quantile'")
            pool = [e for e in pool if e.quantile == args.quantile]
        if not pool:
            kinds = ", ".join(k for k in ("top", "random", "quantile", "negative") if self.pool.get(k))
            raise ToolError(f"no {args.kind} examples in the explain split; kinds there: {kinds or 'none'}")
        shown = []
        for e in pool[: args.n]:
            b = body(e)  # BOS is no activation of interest
            active = [
                TokenAct(token=t, act=round(a, 3))
                for t, a in zip(b.context.tokens, b.acts, strict=True)
                if self.unit_max > 0 and a >= MARK_AT * self.unit_max
            ]
            shown.append(
                ShownExample(
                    kind=e.kind,
                    rank=e.rank,
                    max_act=round(b.max_act, 3),
                    text=show_token(marked(e, self.unit_max, self.window)),
                    active=active,
                )
            )
        return ExamplesResult(examples=shown)

    def score_examples(self) -> list[Example]:
        """The explain-split examples `score` simulates: firing (top) and other (random, negative) windows."""
        firing = self.pool.get("top", [])[: (self.n_score + 1) // 2]
        other = (self.pool.get("random", []) + self.pool.get("negative", []))[: self.n_score - len(firing)]
        return firing + other

    async def score(self, explanation: str) -> ScoreResult:
        if self.scores_left <= 0:
            raise ToolError("no score calls left; finish with your best explanation")
        examples = self.score_examples()
        if not examples:
            raise ToolError("the explain split holds no examples to score on")
        self.scores_left -= 1
        value = sim_correlation(await self.simulator.simulate(explanation, examples))
        return ScoreResult(
            explanation=explanation,
            correlation=None if math.isnan(value) else round(value, 4),
            n_examples=len(examples),
            scores_left=self.scores_left,
        )


SIGNATURES = {
    "examples": 'kind: "top"|"random"|"quantile"|"negative" = "top", n: int = 5, quantile: int | null',
    "activations": "texts: list of 1-8 strings",
    "compare": "text: string, edited_text: string",
    "score": "explanation: string",
    "finish": "explanation: string, supporting: list of ids, refuting: list of ids",
    "answer": "text: string, hypothesis: string | null",
}
RESULTS: dict[str, type[BaseModel]] = {
    "examples": ExamplesResult,
    "activations": ActivationsResult,
    "compare": CompareResult,
    "score": ScoreResult,
    "finish": FinishResult,
    "answer": AnswerResult,
}


def brief(tool: str, result: dict) -> str:
    """A stored tool result as the short text the agent was shown."""
    return RESULTS[tool].model_validate(result).brief()  # type: ignore[attr-defined]
