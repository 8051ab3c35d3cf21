"""Explainers: turn a unit's examples into a short explanation with an LLM.

An `Explainer` takes one unit's sample and returns one explanation; explainers are registered by name
in `EXPLAINERS` (the `--methods` of `label` and `bench`). Built in (prompt templates in templates/):
`top` (token<TAB>activation records), `highlight` (activating tokens in [[ ]] plus the top tokens with
counts), `contrastive` (activating vs non-activating or counterfactual text), `head` (attention heads:
the destination token in [[ ]], the earlier tokens it attends to in {{ }}). An empty or unusable
answer raises ExplanationError; it is never stored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from autointerp.llm.base import LLM, ChatRequest, LLMError, Message
from autointerp.prompts import Prompt, prompt
from autointerp.registry import Registry
from autointerp.render import (
    MARK_AT,
    crop,
    head_marked,
    head_sources,
    marked,
    marked_errors,
    normalize,
    show_token,
)
from autointerp.sampling import UnitSample
from autointerp.types import Example

METHODS = {
    "top": "explain_top.j2",
    "highlight": "explain_highlight.j2",
    "contrastive": "explain_contrastive.j2",
    "head": "explain_head.j2",  # attention heads: destination [[ ]] and its sources {{ }}
}
CONTRAST_SHOWN = 6  # the contrastive explainer reads this many positives and this many contrasts


class ExplanationError(LLMError):
    """The explainer's answer holds no usable explanation."""


class ExplainSettings(BaseModel):
    method: str = "top"
    temperature: float = 0.0
    max_tokens: int = 24
    best_of: int = 1  # > 1: sample this many at temperature 0.7 and keep the best on the validation set


def parse_explanation(text: str) -> str:
    """First non-empty line, without a leading label, quotes, list marks or a final period."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*[-*\d.)]+\s+", "", line)  # list marks
        line = re.sub(
            r"^(?:explanation|answer|the neuron (?:responds to|fires on))\s*:?\s*", "", line, flags=re.I
        )
        line = line.strip().strip("\"'`*").strip().rstrip(".").strip()
        if line:
            return line[:200]
    raise ExplanationError(f"the explainer's answer holds no explanation: {text[:80]!r}")


def render(method: str, sample: UnitSample, window: int) -> tuple[Prompt, list]:
    """The prompt template and its messages for one method."""
    unit_max = sample.unit.stats.max
    p = prompt(METHODS[method])
    if method == "top":
        examples = []
        for e in sample.explain:
            tokens, acts = crop(e, window)
            examples.append(
                list(zip((show_token(t) for t in tokens), normalize(acts, unit_max), strict=True))
            )
        return p, p.messages(examples=examples)
    if method in ("highlight", "contrastive"):
        counts = Counter(
            t
            for e in sample.explain
            for t, a in zip(*crop(e, window), strict=True)
            if a >= MARK_AT * unit_max
        )
        top_tokens = ", ".join(f"{t!r} x{n}" for t, n in counts.most_common(8)) or "(none)"
        texts = [show_token(marked(e, unit_max, window)) for e in sample.explain]
        if method == "highlight":
            return p, p.messages(top_tokens=top_tokens, examples=texts)
        negatives = [show_token("".join(crop(e, window)[0])) for e in sample.contrast[:CONTRAST_SHOWN]]
        return p, p.messages(top_tokens=top_tokens, positives=texts[:CONTRAST_SHOWN], negatives=negatives)
    if method == "head":
        if any(e.attn is None for e in sample.explain):
            raise ExplanationError(
                f"{sample.unit.id} is not an attention head; the head method explains only "
                "MODEL/blocks.L.attn/head:H units."
            )
        pairs = Counter(
            f"[[{show_token(e.context.tokens[e.max_pos])}]] <- {{{{{show_token(e.context.tokens[src])}}}}}"
            for e in sample.explain
            for src, _ in head_sources(e, e.max_pos)[:1]
        )
        top_pairs = ", ".join(f"{p} x{n}" for p, n in pairs.most_common(6)) or "(none)"
        return p, p.messages(top_pairs=top_pairs, examples=[head_marked(e, window) for e in sample.explain])
    raise ExplanationError(f"unknown explainer method {method!r}; use one of {', '.join(METHODS)}")


async def propose(
    llm: LLM,
    sample: UnitSample,
    s: ExplainSettings,
    window: int,
    seed: int = 0,
    temperature: float | None = None,
) -> tuple[str, str]:
    """One explanation and the prompt id that produced it."""
    p, messages = render(s.method, sample, window)
    temp = s.temperature if temperature is None else temperature
    resp = await llm.chat(
        ChatRequest(messages=messages, temperature=temp, max_tokens=s.max_tokens, seed=seed)
    )
    return parse_explanation(resp.text), p.id


async def revise(
    llm: LLM,
    sample: UnitSample,
    s: ExplainSettings,
    window: int,
    explanation: str,
    wrong: list[tuple[Example, list[float]]],
) -> str:
    """One revision round: the explainer sees its explanation and the examples it predicted worst.

    `wrong` pairs an example with the simulated activations (0-9) of its body (BOS left out). Each is
    shown with the true activating tokens marked [[ ]] and the tokens the simulation expected to fire
    marked {{ }}.
    """
    _, messages = render(s.method, sample, window)
    unit_max = sample.unit.stats.max
    lines = [marked_errors(e, unit_max, window, predicted) for e, predicted in wrong]
    feedback = (
        f"Your explanation was: {explanation}\n"
        "It predicted these examples badly. [[ ]] marks where the neuron really fires; {{ }} marks where "
        "your explanation expected firing that did not happen:\n"
        + "\n".join(f"{i}. {t}" for i, t in enumerate(lines, 1))
        + "\nGive a better explanation: one short phrase, at most 8 words."
    )
    messages = [
        *messages,
        Message(role="assistant", content=explanation),
        Message(role="user", content=feedback),
    ]
    resp = await llm.chat(ChatRequest(messages=messages, temperature=s.temperature, max_tokens=s.max_tokens))
    return parse_explanation(resp.text)


@runtime_checkable
class Explainer(Protocol):
    """One unit's sample in, one explanation out."""

    name: str
    prompt: str  # what produced it (template name@version): part of the explanation's id

    def reads(self, sample: UnitSample) -> list[Example]:
        """The examples it shows the LLM (their digest is part of the explanation's id)."""
        ...

    async def __call__(self, sample: UnitSample, seed: int = 0, temperature: float | None = None) -> str: ...

    async def revise(
        self, sample: UnitSample, explanation: str, wrong: list[tuple[Example, list[float]]]
    ) -> str:
        """A better explanation, given the examples (with their simulations) it predicted worst."""
        ...


ExplainerFactory = Callable[[LLM, int], Explainer]  # (the explainer LLM, tokens shown per example)
EXPLAINERS: Registry[ExplainerFactory] = Registry("explainer method")


class PromptExplainer:
    """A built-in method: one few-shot prompt template, answered with one short phrase."""

    def __init__(self, llm: LLM, window: int, method: str):
        self.llm, self.window, self.name = llm, window, method
        self.settings = ExplainSettings(method=method)
        self.prompt = prompt(METHODS[method]).id

    def reads(self, sample: UnitSample) -> list[Example]:
        if self.name == "contrastive":
            return [*sample.explain, *sample.contrast[:CONTRAST_SHOWN]]
        return list(sample.explain)

    async def __call__(self, sample: UnitSample, seed: int = 0, temperature: float | None = None) -> str:
        return (await propose(self.llm, sample, self.settings, self.window, seed, temperature))[0]

    async def revise(
        self, sample: UnitSample, explanation: str, wrong: list[tuple[Example, list[float]]]
    ) -> str:
        return await revise(self.llm, sample, self.settings, self.window, explanation, wrong)


for _method in METHODS:
    EXPLAINERS.register(_method)(lambda llm, window, m=_method: PromptExplainer(llm, window, m))
