"""The agent's tools: pydantic-typed arguments and results, each call one stored experiment.

The agent sees only the explain split: every recorded example of the unit that no scorer reads
(`agent_examples`). The held-out test set, the quantile windows and the negatives the scorers read, and
counterfactual pairs that score, are never reachable through a tool, so the final explanation is scored
on examples the agent never saw. `score` simulates on explain-split examples, never on the test set,
and `search` matches its pattern only in explain-split windows (no window a scorer reads).
`output_effect`, `steer` and `ablate` need the unit in the model; a synthetic unit (a rule) answers
them with a tool error. Tools run fixed code on typed arguments: nothing the model writes is ever
executed (a search pattern is a regular expression, matched with a timeout).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autointerp.agent.reader import ActReader, EffectUnavailable
from autointerp.llm.base import Tool
from autointerp.render import MARK_AT, body, crop, marked, marked_at, show_token
from autointerp.sampling import UnitSample
from autointerp.score import sim_correlation
from autointerp.simulate import Simulator
from autointerp.subject.effects import NextTokenChange, TokenValue
from autointerp.types import Example

MAX_TEXTS = 8  # texts per activations call
MAX_CHARS = 400  # characters per text
MAX_STRENGTH = 20.0  # steer: at most this many times the unit's recorded maximum
SEARCH_TIMEOUT = 0.05  # seconds per window a search pattern may take
MISS_FIRING = 4.0  # score misses: a token the unit fires on at >= this (0-9 scale of its max) ...
MISS_LOW = 2.0  # ... predicted below this; a false alarm: predicted >= MISS_HIGH where the truth < 1
MISS_HIGH = 3.0
EFFECT_TOOLS = ("output_effect", "steer", "ablate")  # need the unit in the model


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


class TokensArgs(Args):
    n: int = Field(20, ge=1, le=50, description="top explain-split windows counted")


class ScoreArgs(Args):
    explanation: str = Field(min_length=1, max_length=200, description="a short hypothesis to test")


class FinishArgs(Args):
    explanation: str = Field(min_length=1, max_length=200, description="the final short explanation")
    supporting: list[str] = Field(default_factory=list, description="experiment ids that support it")
    refuting: list[str] = Field(default_factory=list, description="experiment ids that speak against it")


class AnswerArgs(Args):
    text: str = Field(min_length=1, description="your answer to the person")
    hypothesis: str | None = Field(None, description="your current explanation, if you have one")


class OutputEffectArgs(Args):
    k: int = Field(10, ge=1, le=30, description="how many tokens each way")


class SteerArgs(Args):
    prompt: str = Field(description="the text whose next token is predicted")
    strength: float = Field(
        ge=-MAX_STRENGTH,
        le=MAX_STRENGTH,
        description="the unit is set to strength x its highest recorded activation at every position",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return _text(v)


class AblateArgs(Args):
    prompt: str = Field(description="the text whose next token is predicted, with the unit zeroed")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return _text(v)


class SearchArgs(Args):
    pattern: str = Field(min_length=1, max_length=200, description="a regular expression (Python syntax)")
    n: int = Field(8, ge=1, le=20, description="how many matching windows to show")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            regex.compile(v)
        except regex.error as e:
            raise ValueError(f"not a valid regular expression ({e})") from None
        return v


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


def _tokens(values: list[TokenValue]) -> str:
    return ", ".join(f"{show_token(t.token)!r} {t.value:+.2f}" for t in values)


class OutputEffectResult(BaseModel):
    promoted: list[TokenValue]  # direction @ W_U, highest first
    suppressed: list[TokenValue]  # lowest first

    def brief(self) -> str:
        return f"promotes {_tokens(self.promoted)}\nsuppresses {_tokens(self.suppressed)}"


class NextTokenResult(BaseModel):
    prompt: str
    strength: float | None  # steer: the multiple of the unit's max; ablate: None (zeroed)
    change: NextTokenChange

    def brief(self) -> str:
        c = self.change
        how = "zeroed" if self.strength is None else f"set to {c.value:g} (strength {self.strength:g})"

        def shifts(xs: list) -> str:  # noqa: ANN001 - TokenShift
            shown = ", ".join(f"{show_token(x.token)!r} {x.before:.3f}->{x.after:.3f}" for x in xs[:5])
            return shown or "none"

        def top(xs: list[TokenValue]) -> str:
            return ", ".join(f"{show_token(x.token)!r} {x.value:.3f}" for x in xs[:5])

        return (
            f"next token after {self.prompt[-60:]!r} with the unit {how}: KL {c.kl:.4f}\n"
            f"up: {shifts(c.up)}\ndown: {shifts(c.down)}\n"
            f"top before: {top(c.top_before)}\ntop after: {top(c.top_after)}"
        )


class SearchHit(BaseModel):
    kind: str
    rank: int
    match: str  # the matched text
    match_act: float  # the unit's highest activation on the tokens the match covers
    max_act: float  # the window's highest activation
    text: str  # the match with 12 tokens each side, activating tokens in [[ ]]


class SearchResult(BaseModel):
    pattern: str
    n_windows: int  # explain-split windows searched
    n_matched: int  # windows with a match
    match_mean: float | None  # the unit's mean activation on matched tokens
    other_mean: float | None  # on the other tokens of the matching windows
    hits: list[SearchHit]  # the strongest matches first

    def brief(self) -> str:
        if not self.n_matched:
            return f"{self.pattern!r} matches none of {self.n_windows} explain-split windows"
        head = (
            f"{self.pattern!r} matches {self.n_matched} of {self.n_windows} windows; mean activation on "
            f"matched tokens {self.match_mean:.2f}, on the rest {self.other_mean or 0:.2f}"
        )
        lines = [f"{h.match!r} {h.match_act:.2f} in {h.kind} #{h.rank}: {h.text}" for h in self.hits]
        return "\n".join([head, *lines])


class TokenCount(BaseModel):
    token: str
    count: int
    mean: float | None = None  # the unit's mean activation on it (the `tokens` tool's firing tokens)


def _counts(xs: list[TokenCount]) -> str:
    return ", ".join(f"{show_token(x.token)!r} x{x.count}" for x in xs) or "none"


class TokensResult(BaseModel):
    n_windows: int  # top explain-split windows counted
    firing: list[TokenCount]  # tokens at >= 40% of the unit's max, most frequent first
    before: list[TokenCount]  # the token right before each of them

    def brief(self) -> str:
        return (
            f"in {self.n_windows} top windows the unit fires on: {_counts(self.firing)}\n"
            f"the token before: {_counts(self.before)}"
        )


class ScoreResult(BaseModel):
    explanation: str
    correlation: float | None  # None when undefined (constant prediction or truth)
    n_examples: int
    scores_left: int
    missed: list[TokenCount] = Field(default_factory=list)  # fired, the simulation predicted low
    false_alarms: list[TokenCount] = Field(default_factory=list)  # predicted high, did not fire

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


class HypothesesResult(BaseModel):
    """A guided investigation's LLM turn: hypotheses it proposed or revised (`name`: the firing tokens'
    category, alone and after their usual preceding token; `propose`; `revise`; `highlight`: the
    one-shot highlight explainer's answer)."""

    hypotheses: list[str]
    specific: list[str] = Field(default_factory=list)  # those built by code from measured evidence

    def brief(self) -> str:
        return "\n".join(f"- {h}" for h in self.hypotheses) or "no hypothesis"


class AnswerResult(BaseModel):
    text: str
    hypothesis: str | None

    def brief(self) -> str:
        return self.text


TOOL_ARGS: dict[str, type[Args]] = {
    "examples": ExamplesArgs,
    "activations": ActivationsArgs,
    "compare": CompareArgs,
    "output_effect": OutputEffectArgs,
    "steer": SteerArgs,
    "ablate": AblateArgs,
    "search": SearchArgs,
    "score": ScoreArgs,
    "finish": FinishArgs,
    "answer": AnswerArgs,
    "tokens": TokensArgs,
}
DESCRIPTIONS = {
    "examples": "Recorded examples of the unit (explain split), activating tokens in [[ ]].",
    "activations": "The unit's activation at every token of texts you write, on the live model.",
    "compare": "Activations on a text and on an edited copy of it: does the edit switch the unit on or off?",
    "output_effect": "Tokens the unit's output direction promotes and suppresses (through the unembedding).",
    "steer": "How the next-token distribution after a prompt changes with the unit clamped to a strength.",
    "ablate": "How the next-token distribution after a prompt changes with the unit zeroed.",
    "search": "Recorded windows matching a regular expression, with the unit's activation on the matches.",
    "score": "Simulate the unit from a short explanation and correlate with its real activations.",
    "finish": "End the investigation with the final explanation and the experiment ids behind it.",
    "answer": "Reply to the person (chat): your answer and your current hypothesis.",
    "tokens": "The tokens the unit fires on most in its top windows, with counts, and the token before.",
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


def search_windows(sample: UnitSample, pool: dict[str, list[Example]]) -> list[Example]:
    """The windows `search` reads: the explain split, each window once, and none whose tokens any scored
    example shows (the same window can be both an explain-split random and a held-out top example)."""
    scored = sample.test + sample.quantile + sample.negatives
    scored += [e for pair in sample.counterfactual_pairs for e in pair]
    held = {e.context.id for e in scored}
    out, seen = [], set()
    for kind in ("top", "quantile", "random", "negative"):
        for e in pool.get(kind, []):
            if e.context.id not in held | seen:
                seen.add(e.context.id)
                out.append(e)
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
        self.windows = search_windows(sample, self.pool)
        self.scores_left, self.n_score, self.window = max_scores, n_score, window

    def available(self, names: list[str]) -> list[str]:
        """The tools this unit supports: a synthetic unit (no effects in the model) has no effect tools."""
        return [n for n in names if self.reader.effects is not None or n not in EFFECT_TOOLS]

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
        if isinstance(args, SearchArgs):
            return await asyncio.to_thread(self.search, args)
        if isinstance(args, OutputEffectArgs | SteerArgs | AblateArgs):
            return await asyncio.to_thread(self.effect, name, args)
        if isinstance(args, ScoreArgs):
            return await self.score(args.explanation)
        if isinstance(args, TokensArgs):
            return self.tokens(args)
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

    def tokens(self, args: TokensArgs, k: int = 10) -> TokensResult:
        """Counts of the activating tokens (and the token before each) in the top explain-split windows."""
        windows = self.pool.get("top", [])[: args.n]
        if not windows:
            raise ToolError("no top examples in the explain split")
        firing: Counter[str] = Counter()
        before: Counter[str] = Counter()
        total: dict[str, float] = {}  # summed activation per firing token
        for e in windows:
            b = body(e)
            toks = b.context.tokens
            for i, a in enumerate(b.acts):
                if self.unit_max > 0 and a > 0 and a >= MARK_AT * self.unit_max:
                    firing[toks[i]] += 1
                    total[toks[i]] = total.get(toks[i], 0.0) + a
                    if i > 0:
                        before[toks[i - 1]] += 1

        def top(c: Counter[str], means: bool = False) -> list[TokenCount]:
            return [
                TokenCount(token=t, count=n, mean=round(total[t] / n, 4) if means else None)
                for t, n in c.most_common(k)
            ]

        return TokensResult(n_windows=len(windows), firing=top(firing, True), before=top(before))

    def effect(self, name: str, args: OutputEffectArgs | SteerArgs | AblateArgs) -> BaseModel:
        """output_effect, steer or ablate on the subject model; ToolError when the unit has no such effect."""
        effects = self.reader.effects
        uid = self.sample.unit.id
        if effects is None:
            raise ToolError(
                f"{name} needs the unit's direction in the model, and {uid} is a synthetic unit (a rule "
                "over tokens); use activations, compare or search"
            )
        try:
            if isinstance(args, OutputEffectArgs):
                promoted, suppressed = effects.output_effect(args.k)
                return OutputEffectResult(promoted=promoted, suppressed=suppressed)
            strength = args.strength if isinstance(args, SteerArgs) else None
            value = 0.0 if strength is None else strength * self.unit_max
            change = effects.next_token(args.prompt, value, 8)
            return NextTokenResult(prompt=args.prompt, strength=strength, change=change)
        except EffectUnavailable as e:
            raise ToolError(f"{name} cannot run on {uid}: {e}") from None

    def search(self, args: SearchArgs) -> SearchResult:
        """Explain-split windows whose text matches the pattern, with the unit's activation on the tokens the
        first match covers; the strongest matches first."""
        pattern = regex.compile(args.pattern)
        hits: list[SearchHit] = []
        matched_acts: list[float] = []
        other_acts: list[float] = []
        for e in self.windows:
            b = body(e)
            tokens, acts = b.context.tokens, b.acts
            text = "".join(tokens)
            try:
                m = pattern.search(text, timeout=SEARCH_TIMEOUT)
            except TimeoutError:
                raise ToolError(f"the pattern {args.pattern!r} is too slow to match; simplify it") from None
            if m is None or m.end() == m.start():
                continue
            starts = [0]
            for t in tokens:
                starts.append(starts[-1] + len(t))
            covered = [i for i in range(len(tokens)) if starts[i] < m.end() and starts[i + 1] > m.start()]
            matched_acts += [acts[i] for i in covered]
            other_acts += [a for i, a in enumerate(acts) if i not in covered]
            hits.append(
                SearchHit(
                    kind=e.kind,
                    rank=e.rank,
                    match=m.group(0),
                    match_act=round(max(acts[i] for i in covered), 3),
                    max_act=round(b.max_act, 3),
                    text=self.around(tokens, acts, covered[0], covered[-1]),
                )
            )

        def mean(xs: list[float]) -> float | None:
            return round(sum(xs) / len(xs), 3) if xs else None

        return SearchResult(
            pattern=args.pattern,
            n_windows=len(self.windows),
            n_matched=len(hits),
            match_mean=mean(matched_acts),
            other_mean=mean(other_acts),
            hits=sorted(hits, key=lambda h: -h.match_act)[: args.n],
        )

    def around(self, tokens: list[str], acts: list[float], first: int, last: int) -> str:
        """The tokens from `first` to `last` with `window // 2` on each side, activating ones in [[ ]]."""
        lo, hi = max(0, first - self.window // 2), min(len(tokens), last + 1 + self.window // 2)
        marks = {i - lo for i in range(lo, hi) if acts[i] > 0 and acts[i] >= MARK_AT * self.unit_max}
        return marked_at(tokens[lo:hi], marks)

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
        sims = await self.simulator.simulate(explanation, examples)
        value = sim_correlation(sims)
        missed: Counter[str] = Counter()
        false_alarms: Counter[str] = Counter()
        scale = 9 / self.unit_max if self.unit_max > 0 else 0.0
        for e, sim in zip(examples, sims, strict=True):
            tokens = crop(e, 0)[0]
            for tok, true, pred in zip(tokens, sim.true, sim.expected, strict=False):
                if true * scale >= MISS_FIRING and pred < MISS_LOW:
                    missed[tok] += 1
                elif true * scale < 1 and pred >= MISS_HIGH:
                    false_alarms[tok] += 1
        return ScoreResult(
            explanation=explanation,
            correlation=None if math.isnan(value) else round(value, 4),
            n_examples=len(examples),
            scores_left=self.scores_left,
            missed=[TokenCount(token=t, count=n) for t, n in missed.most_common(8)],
            false_alarms=[TokenCount(token=t, count=n) for t, n in false_alarms.most_common(8)],
        )


SIGNATURES = {
    "examples": 'kind: "top"|"random"|"quantile"|"negative" = "top", n: int = 5, quantile: int | null',
    "activations": "texts: list of 1-8 strings",
    "compare": "text: string, edited_text: string",
    "output_effect": "k: int = 10",
    "steer": "prompt: string, strength: number (-20 to 20, times the unit's max)",
    "ablate": "prompt: string",
    "search": "pattern: regular expression, n: int = 8",
    "score": "explanation: string",
    "finish": "explanation: string, supporting: list of ids, refuting: list of ids",
    "answer": "text: string, hypothesis: string | null",
    "tokens": "n: int = 20",
}
RESULTS: dict[str, type[BaseModel]] = {
    "examples": ExamplesResult,
    "activations": ActivationsResult,
    "compare": CompareResult,
    "output_effect": OutputEffectResult,
    "steer": NextTokenResult,
    "ablate": NextTokenResult,
    "search": SearchResult,
    "score": ScoreResult,
    "finish": FinishResult,
    "answer": AnswerResult,
    "tokens": TokensResult,
    "name": HypothesesResult,
    "propose": HypothesesResult,
    "highlight": HypothesesResult,
    "revise": HypothesesResult,
}


def brief(tool: str, result: dict) -> str:
    """A stored tool result as the short text the agent was shown."""
    return RESULTS[tool].model_validate(result).brief()  # type: ignore[attr-defined]
