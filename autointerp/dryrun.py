"""`label --dry-run`: the prompts a label run would send, counted, and priced, before spending anything.

The run's own `Labeller` builds every request (explainer prompts from the stored examples, simulation
listings of the scorers' windows, judge prompts) against a `DryRunLLM`: it counts each request's tokens
offline (`llm.tokens`) and answers with a placeholder shaped like a real answer (an explanation of
typical length, a JSON list of the right length, uniform probabilities), so every later request is
built as in the run. A request already in the store's LLM cache, or asked twice, costs nothing (as in
the run); a cached explanation is used as the run would use it, so the prompts built from it are
found in the cache too. Completion tokens are given as the requests' `max_tokens` bound and as the placeholder
answers' length (typical). The store is opened read-only; nothing loads but a tokenizer.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, Field

from autointerp.aio import run_sync
from autointerp.errors import UserError
from autointerp.explain import ExplanationError
from autointerp.llm import base, parse_spec
from autointerp.llm.prices import Price, price
from autointerp.llm.tokens import TokenCounter, counter_for, stepwise_tokens
from autointerp.pipeline import Labeller, LabelSettings
from autointerp.sampling import Unlabellable, sample_unit
from autointerp.score import Scorer, ScoreRecord, result
from autointerp.simulate import is_null_read
from autointerp.store import Store
from autointerp.types import Score

TYPICAL_EXPLANATION = "the names of months in dates and schedules"  # 8 words: the explainer's bound


class RoleEstimate(BaseModel):
    """What one LLM role would spend."""

    spec: str
    calls: int = 0
    cached_calls: int = 0  # in the store's cache already, or asked twice: nothing spent
    prompt_tokens: int = 0
    completion_typical: int = 0
    completion_bound: int = 0  # the requests' max_tokens
    counted_by: str = ""  # how the tokens were counted (a tokenizer, or an estimate)
    exact: bool = True
    price: Price | None = None  # USD per million tokens; None: local model or unknown price

    def cost(self, completion: int) -> float | None:
        if self.price is None:
            return None
        return (self.prompt_tokens * self.price.input + completion * self.price.output) / 1e6

    @property
    def cost_typical(self) -> float | None:
        return self.cost(self.completion_typical)

    @property
    def cost_bound(self) -> float | None:
        return self.cost(self.completion_bound)


class DryRunEstimate(BaseModel):
    units: int  # (unit, method) pairs selected
    to_label: int
    already_done: int  # explained and scored with these settings: a run skips them
    unlabellable: int  # never fired
    failed: int = 0  # cannot be explained as asked (e.g. the head method on a neuron)
    roles: dict[str, RoleEstimate] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    def total(self, field: str) -> float | None:
        vals = [getattr(r, field) for r in self.roles.values()]
        if any(v is None for v in vals) and field.startswith("cost"):
            known = [v for v in vals if v is not None]
            return sum(known) if known else None
        return sum(vals)


def dry_answer(request: base.ChatRequest, explanation: str) -> str:
    """A placeholder shaped like the real answer: a JSON list of the length the prompt asks for (the
    JSON simulator's "Give exactly N integers", a judge's numbered examples), else an explanation."""
    last = request.messages[-1].content if request.messages else ""
    if request.json_answer or request.json_schema is not None:
        m = re.search(r"Give exactly (\d+) integers", last)
        if m:
            return "[" + ", ".join(["0"] * int(m.group(1))) + "]"
        block = last.rsplit("Explanation:", 1)[-1]
        n = len(re.findall(r"^Example \d+:", block, flags=re.MULTILINE))
        return "[" + ",".join(["0"] * n) + "]"
    return explanation


class DryRunLLM(base.LLM):
    """Counts what each request would spend and answers with a placeholder; never calls a model."""

    def __init__(
        self,
        spec: str,
        capabilities: base.Capabilities,
        counter: TokenCounter,
        estimate: RoleEstimate,
        seen: set[str],
        store: Store | None,
        explanation: str = TYPICAL_EXPLANATION,
    ):
        s = parse_spec(spec)
        self.spec, self.backend, self.model = spec, s.backend, s.model
        self.capabilities, self.counter, self.estimate = capabilities, counter, estimate
        self.seen, self.store, self.explanation = seen, store, explanation
        self.shared: set[str] = set()

    def _count(self, key: str, prompt: int, bound: int, typical: int, shared: bool = False) -> base.Usage:
        """`shared`: a request that is the same whatever the unit's explanation (the exact simulator's
        null read of a window): asked once per run, not once per unit."""
        seen = self.shared if shared else self.seen
        cached = key in seen or (self.store is not None and self.store.get_llm_call(key) is not None)
        seen.add(key)
        e = self.estimate
        if cached:
            e.cached_calls += 1
        else:
            e.calls += 1
            e.prompt_tokens += prompt
            e.completion_bound += bound
            e.completion_typical += typical
        return base.Usage(prompt_tokens=prompt, completion_tokens=typical, cached=cached)

    def _stored(self, key: str) -> base.ChatResponse | None:
        rec = self.store.get_llm_call(key) if self.store is not None else None
        return base.ChatResponse.model_validate(rec.response) if rec is not None else None

    async def chat(self, request: base.ChatRequest) -> base.ChatResponse:
        key = request.cache_key(self.backend, self.model)
        stored = self._stored(key)  # a cached explanation: the run's later prompts are built from it
        text = stored.text if stored is not None else dry_answer(request, self.explanation)
        typical = min(request.max_tokens, self.counter.text(text))
        usage = self._count(key, self.counter.chat(request), request.max_tokens, typical)
        return base.ChatResponse(text=text, model=self.model, backend=self.backend, usage=usage)

    async def token_probs(self, request: base.TokenProbsRequest) -> base.TokenProbsResponse:
        if not self.capabilities.token_probs:
            raise base.LLMError(f"{self.spec} gives no token probabilities; use --simulator-mode json.")
        key = request.cache_key(self.backend, self.model)
        usage = self._count(key, self.counter.text(request.prompt), 0, 0, shared=is_null_read(request.prompt))
        n = len(request.candidates)
        probs = [dict.fromkeys(request.candidates, 1 / n) for _ in request.positions]
        return base.TokenProbsResponse(
            probs=probs, mass=[1.0] * len(probs), model=self.model, backend=self.backend, usage=usage
        )

    async def stepwise_many(self, requests: list[base.StepwiseRequest]) -> list[base.StepwiseResponse]:
        out = []
        for r in requests:
            key = r.cache_key(self.backend, self.model)
            usage = self._count(key, stepwise_tokens(self.counter, r), len(r.steps), len(r.steps))
            n = len(r.candidates)
            out.append(
                base.StepwiseResponse(
                    probs=[dict.fromkeys(r.candidates, 1 / n) for _ in r.steps],
                    mass=[1.0] * len(r.steps),
                    chosen=[r.candidates[0]] * len(r.steps),
                    model=self.model,
                    backend=self.backend,
                    usage=usage,
                )
            )
        return out


class NotCounted:
    """Stands in for a scorer that calls no LLM (the embedder): same provenance, nothing computed."""

    def __init__(self, scorer: Scorer):
        self.name, self.source, self.prompt = scorer.name, scorer.source, scorer.prompt

    async def __call__(self, record: ScoreRecord) -> Score:
        return result(self, record, math.nan, "not computed in a dry run")


def official(base_url: str | None) -> bool:
    """Whether an openai: model is served by OpenAI itself (priced, no prompt logprobs)."""
    return base_url is None or urlparse(base_url).hostname == "api.openai.com"


def capabilities(spec: str, base_url: str | None = None) -> base.Capabilities:
    """What the backend of `spec` can do, without building a client or loading a model."""
    s = parse_spec(spec)
    if s.backend == "scripted":
        from autointerp.llm.scripted import registered

        return registered(s.model).capabilities
    if s.backend == "local":
        return base.Capabilities(token_probs=True, top_logprobs=True, tools=False, json_schema=False)
    if s.backend == "openai":
        return base.Capabilities(
            token_probs=not official(base_url), top_logprobs=True, tools=True, json_schema=True
        )
    return base.Capabilities(token_probs=False, top_logprobs=False, tools=True, json_schema=True)


def role_estimate(spec: str, base_url: str | None, notes: list[str]) -> tuple[RoleEstimate, TokenCounter]:
    s = parse_spec(spec)
    api = s.backend == "anthropic" or (s.backend == "openai" and official(base_url))
    counter = counter_for(s.backend, s.model, official=official(base_url))
    p = price(s.model) if api else None
    if p is None and api:
        note = f"No price is known for {spec}: tokens only (add it under [prices] in autointerp.toml)."
        if note not in notes:
            notes.append(note)
    est = RoleEstimate(spec=spec, counted_by=counter.how, exact=counter.exact, price=p)
    return est, counter


async def aestimate(
    db: str | Path,
    unit_ids: list[str],
    s: LabelSettings,
    *,
    base_url: str | None = None,
    no_cache: bool = False,
    explanation: str = TYPICAL_EXPLANATION,
) -> DryRunEstimate:
    """What labelling `unit_ids` with settings `s` would send: counted, priced, nothing written."""
    if not Path(db).exists():
        raise UserError(f"No store at {db}; run `autointerp record --db {db} ...` first.")
    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    store = Store.reader(db)
    notes: list[str] = []
    exp_est, exp_counter = role_estimate(s.explainer, base_url, notes)
    sim_est, sim_counter = (
        (exp_est.model_copy(), exp_counter)
        if s.simulator == s.explainer
        else role_estimate(s.simulator, base_url, notes)
    )
    seen: dict[str, set[str]] = {}  # per spec: requests asked already (the run would have them cached)
    cache = None if no_cache else store

    def llm(spec: str, est: RoleEstimate, counter: TokenCounter) -> DryRunLLM:
        caps = capabilities(spec, base_url)
        return DryRunLLM(spec, caps, counter, est, seen.setdefault(spec, set()), cache, explanation)

    labeller = Labeller(
        store, s, llm(s.explainer, exp_est, exp_counter), llm(s.simulator, sim_est, sim_counter)
    )
    for scorers in (labeller.scorers, labeller.head_scorers):
        for name, scorer in list(scorers.items()):
            if not scorer.source.startswith(s.simulator):  # the embedder: no LLM tokens, nothing to count
                scorers[name] = NotCounted(scorer)
                note = f"The {name} scorer uses {scorer.source}, no LLM: not counted."
                if note not in notes:
                    notes.append(note)
    out = DryRunEstimate(units=0, to_label=0, already_done=0, unlabellable=0)
    for uid in unit_ids:
        for method in labeller.methods_for(uid):
            out.units += 1
            try:
                sample = sample_unit(store, uid, s.sample)
            except Unlabellable:
                out.unlabellable += 1
                continue
            exp_id = labeller.exp_id(uid, method, sample)
            if labeller.done(exp_id, sample):
                out.already_done += 1
                continue
            out.to_label += 1
            for seen_before in seen.values():  # the run asks a unit's requests with its own explanation
                seen_before.clear()
            try:
                text, _, _ = await labeller.explain(sample, method)
            except ExplanationError as e:
                out.failed += 1
                if str(e) not in notes:
                    notes.append(str(e))
                continue
            await labeller.score_explanation(exp_id, uid, text, sample)
    out.roles = {"explainer": exp_est, "simulator": sim_est}
    out.notes = notes
    return out


def estimate(db: str | Path, unit_ids: list[str], s: LabelSettings, **kwargs) -> DryRunEstimate:
    """`aestimate` from synchronous code (the CLI)."""
    return run_sync(aestimate(db, unit_ids, s, **kwargs))
