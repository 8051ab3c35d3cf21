"""Bulk labelling: explain, simulate and score many units; async, bounded, resumable, with progress.

A unit's explanation id is the hash of everything that decides it (unit, method, explainer, prompt,
settings), so a unit already explained and scored with the same settings is skipped. An explanation
and its scores are written in one transaction; a failed explanation is counted and reported, never
stored as a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from autointerp import score as scoring
from autointerp.aio import run_sync
from autointerp.errors import UserError
from autointerp.explain import EXPLAINERS, Explainer, ExplanationError
from autointerp.llm import batch, get_llm
from autointerp.llm.base import LLM, LLMError, OutOfCreditError, Usage
from autointerp.llm.batch import BatchReport
from autointerp.render import normalize
from autointerp.sampling import SampleSettings, UnitSample, Unlabellable, digest, sample_unit
from autointerp.score import SCORERS, Scorer, ScoreRecord
from autointerp.simulate import Simulator, make_simulator
from autointerp.store import Store
from autointerp.types import Explanation, RunRecord, Score, Unit, UnitRef, now
from autointerp.units import match_unit_ids
from autointerp.version import code_version

if TYPE_CHECKING:
    from autointerp.agent.bulk import AgentBudget
DEFAULT_METHOD = "highlight"  # best on the synthetic bench
HEAD_METHOD = "head"


class LabelSettings(BaseModel):
    explainer: str = "local:qwen2.5-coder-1.5b"
    simulator: str = "local:qwen2.5-coder-1.5b"
    # a simulator name, or auto: exact (head-exact for heads) with token probabilities, else json
    simulator_mode: str = "auto"
    # None: by unit kind, `DEFAULT_METHOD` for neurons and latents, `HEAD_METHOD` for attention heads
    methods: list[str] | None = None
    scorers: list[str] = Field(default_factory=lambda: ["correlation"])
    best_of: int = 1
    revise: bool = False  # one revision round with the examples the explanation predicted worst
    concurrency: int = 4
    sample: SampleSettings = Field(default_factory=SampleSettings)
    score: scoring.ScoreSettings = Field(default_factory=scoring.ScoreSettings)


class UnitResult(BaseModel):
    unit_id: str
    method: str
    explanation: str | None = None
    explanation_id: str | None = None  # its row in `explanations` (None when explaining failed)
    scores: dict[str, float | None] = Field(default_factory=dict)
    status: dict[str, str] = Field(default_factory=dict)  # scorer -> ok / nan / failed
    skipped: bool = False  # already explained and scored in the store
    skip_reason: str | None = None  # why the unit cannot be labelled (it never fired, ...)
    error: str | None = None
    pending: str | None = None  # --batch: what the unit waits for (its explanation, its scores)
    usage: dict[str, RoleUsage] = Field(default_factory=dict)  # what labelling it spent, by LLM role

    @property
    def scores_failed(self) -> bool:
        """Explained, but every score failed (nothing measured it)."""
        return bool(self.status) and all(v == "failed" for v in self.status.values())


class RoleUsage(BaseModel):
    """What one LLM role spent: calls made and their tokens and cost; cache hits apart (they cost nothing)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused_prompt_tokens: int = 0  # of prompt_tokens: served from a shared or cached prefix (Usage)
    cost_usd: float | None = None  # the summed cost of the calls that reported one
    unpriced_calls: int = 0  # calls without a known price (local models, unknown API models)
    cached_calls: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0

    def add(self, u: Usage) -> None:
        if u.cached:
            self.cached_calls += 1
            self.cached_prompt_tokens += u.prompt_tokens
            self.cached_completion_tokens += u.completion_tokens
            return
        self.calls += 1
        self.prompt_tokens += u.prompt_tokens
        self.completion_tokens += u.completion_tokens
        self.reused_prompt_tokens += u.reused_prompt_tokens
        if u.cost_usd is None:
            self.unpriced_calls += 1
        else:
            self.cost_usd = (self.cost_usd or 0.0) + u.cost_usd

    def merge(self, other: RoleUsage) -> RoleUsage:
        """The sum of two usages (a new object)."""
        out = {}
        for k, v in self.model_dump().items():
            w = getattr(other, k)
            out[k] = None if v is None and w is None else (v or 0) + (w or 0)
        return RoleUsage(**out)


def total_usage(usage: dict[str, RoleUsage]) -> RoleUsage:
    """Every role's usage added up."""
    out = RoleUsage()
    for u in usage.values():
        out = out.merge(u)
    return out


class PerUnit(BaseModel):
    """Mean LLM spend per unit labelled in a run (units resumed from the store or never fired excluded)."""

    units: int
    calls: float
    prompt_tokens: float
    completion_tokens: float
    cost_usd: float | None


_SPENT: ContextVar[tuple[dict[str, RoleUsage], ...]] = ContextVar("autointerp_spent", default=())


@contextlib.contextmanager
def metered() -> Iterator[dict[str, RoleUsage]]:
    """What the metered LLM calls made inside this block spend (in this task and the tasks it starts),
    by role. Blocks nest: a call counts in every enclosing block."""
    spent: dict[str, RoleUsage] = {}
    token = _SPENT.set((*_SPENT.get(), spent))
    try:
        yield spent
    finally:
        _SPENT.reset(token)


def usage_dump(usage: dict[str, RoleUsage]) -> dict:
    """Usage by role as stored in an explanation's settings or a score's details."""
    return {role: u.model_dump() for role, u in usage.items()}


class LabelSummary(BaseModel):
    run_id: str
    results: list[UnitResult]
    seconds: float
    usage: dict[str, RoleUsage] = Field(default_factory=dict)  # role (explainer, simulator, ...) -> spent
    batch: BatchReport | None = None  # --batch: what was collected, submitted and is still waiting

    @property
    def pending(self) -> list[UnitResult]:
        """Units waiting for a provider batch (--batch)."""
        return [r for r in self.results if r.pending]

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of the calls actually made by every role (cache hits excluded)."""
        return sum(u.prompt_tokens for u in self.usage.values())

    @property
    def completion_tokens(self) -> int:
        return sum(u.completion_tokens for u in self.usage.values())

    @property
    def cost_usd(self) -> float | None:
        known = [u.cost_usd for u in self.usage.values() if u.cost_usd is not None]
        return sum(known) if known else None

    @property
    def total(self) -> RoleUsage:
        """Every role's usage added up."""
        return total_usage(self.usage)

    @property
    def per_unit(self) -> PerUnit | None:
        """Mean spend per unit labelled in this run (None when no unit was)."""
        done = [r for r in self.results if not (r.skipped or r.skip_reason)]
        if not done:
            return None
        t, n = total_usage({r.unit_id + r.method: total_usage(r.usage) for r in done}), len(done)
        return PerUnit(
            units=n,
            calls=t.calls / n,
            prompt_tokens=t.prompt_tokens / n,
            completion_tokens=t.completion_tokens / n,
            cost_usd=None if t.cost_usd is None else t.cost_usd / n,
        )

    def stats(self, scorer: str) -> dict[str, float | int | None]:
        vals = [r.scores[scorer] for r in self.results if r.scores.get(scorer) is not None]
        return {
            "n": len(vals),
            "mean": statistics.fmean(vals) if vals else None,
            "median": statistics.median(vals) if vals else None,
        }

    @property
    def failures(self) -> list[UnitResult]:
        """Units whose explanation failed (LLM error, unusable answer)."""
        return [r for r in self.results if r.error]

    @property
    def unlabellable(self) -> list[UnitResult]:
        """Units skipped because they cannot be labelled (never fired), with their reason."""
        return [r for r in self.results if r.skip_reason]

    @property
    def score_failures(self) -> list[UnitResult]:
        """Explained units every score of which failed."""
        return [r for r in self.results if r.scores_failed]

    def score_counts(self) -> dict[str, int]:
        """How many scores ended ok, nan (undefined) and failed."""
        counts = {"ok": 0, "nan": 0, "failed": 0}
        for r in self.results:
            for v in r.status.values():
                counts[v] = counts.get(v, 0) + 1
        return counts

    @property
    def ok(self) -> bool:
        """No explanation failed and every explained unit has at least one score that did not fail."""
        return not self.failures and not self.score_failures

    def record(self) -> dict:
        """What the run's row keeps as its summary."""
        return {
            "units": len(self.results),
            "labelled": sum(not (r.error or r.skip_reason or r.skipped or r.pending) for r in self.results),
            "pending": {r.unit_id: r.pending for r in self.pending},
            "resumed": sum(r.skipped for r in self.results),
            "unlabellable": {r.unit_id: r.skip_reason for r in self.unlabellable},
            "failures": [r.model_dump() for r in self.failures],
            "score_failures": [r.unit_id for r in self.score_failures],
            "scores": self.score_counts(),
            "usage": {k: v.model_dump() for k, v in self.usage.items()},
            "per_unit": self.per_unit.model_dump() if self.per_unit else None,
            "seconds": self.seconds,
        } | ({"batch": self.batch.model_dump()} if self.batch else {})


class TokenMeter(LLM):
    """Wraps an LLM and adds up what its calls spent (`RoleUsage`); cache hits are counted apart.

    Each call is also counted, under `role`, in every enclosing `metered()` block.
    """

    def __init__(self, llm: LLM, role: str = "llm"):
        self.llm, self.role = llm, role
        self.usage = RoleUsage()

    def add(self, u: Usage) -> None:
        self.usage.add(u)
        for spent in _SPENT.get():
            spent.setdefault(self.role, RoleUsage()).add(u)

    def __getattr__(self, name: str):  # noqa: ANN204 - spec, backend, model, capabilities
        return getattr(self.llm, name)

    @property
    def prompt_tokens(self) -> int:
        return self.usage.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.usage.completion_tokens

    async def chat(self, request):  # noqa: ANN001, ANN201
        resp = await self.llm.chat(request)
        self.add(resp.usage)
        return resp

    async def token_probs(self, request):  # noqa: ANN001, ANN201
        resp = await self.llm.token_probs(request)
        self.add(resp.usage)
        return resp

    async def token_probs_many(self, requests):  # noqa: ANN001, ANN201
        resps = await self.llm.token_probs_many(requests)
        for r in resps:
            self.add(r.usage)
        return resps

    async def stepwise_many(self, requests):  # noqa: ANN001, ANN201
        resps = await self.llm.stepwise_many(requests)
        for r in resps:
            self.add(r.usage)
        return resps


def explanation_id(unit_id: str, method: str, s: LabelSettings, prompt_id: str, inputs: str = "") -> str:
    """Hash of everything that decides an explanation; `inputs`: digest of what the explainer reads."""
    key = {
        "unit": unit_id,
        "method": method,
        "explainer": s.explainer,
        "prompt": prompt_id,
        "best_of": s.best_of,
        "revise": s.revise,
        "sample": s.sample.model_dump(),
        "inputs": inputs,
    }
    return "exp-" + hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


AGENT = "agent"  # the method that investigates each unit (agent/bulk.py) instead of explaining at once


class Labeller:
    def __init__(
        self,
        store: Store,
        s: LabelSettings,
        explainer: LLM,
        simulator: LLM,
        batcher: batch.Batcher | None = None,
        agent: AgentBudget | None = None,
    ):
        """`batcher`: a --batch run (the LLMs are its `BatchLLM`s): poll first, submit at the end.
        `agent`: the budget of the `agent` method's investigations (default: AgentBudget())."""
        EXPLAINERS.check([m for m in s.methods or [] if m != AGENT])
        SCORERS.check(s.scorers)
        self.store, self.s, self.batcher = store, s, batcher
        # One meter per role, also when both roles are served by the same model: nothing is dropped.
        self.explainer = TokenMeter(explainer, "explainer")
        self.sim_llm = TokenMeter(simulator, "simulator")
        self.meters: dict[str, TokenMeter] = {"explainer": self.explainer, "simulator": self.sim_llm}
        self.simulator = make_simulator(self.sim_llm, s.simulator_mode)
        self.head_simulator = self.simulator
        if s.simulator_mode == "auto" and self.sim_llm.capabilities.token_probs:
            self.head_simulator = make_simulator(self.sim_llm, "head-exact")
        methods = s.methods if s.methods is not None else [DEFAULT_METHOD, HEAD_METHOD]
        self.explainers: dict[str, Explainer] = {
            m: EXPLAINERS[m](self.explainer, s.sample.explain_window) for m in methods if m != AGENT
        }
        self.agent_budget = agent
        self.readers = None  # the agent method's activation readers, made on first use
        self.scorers = {x: SCORERS[x](self.simulator, self.sim_llm) for x in s.scorers}
        self.head_scorers = {x: SCORERS[x](self.head_simulator, self.sim_llm) for x in s.scorers}
        self.run_id = (
            "lab-" + hashlib.sha1(json.dumps(s.model_dump(), sort_keys=True).encode()).hexdigest()[:12]
        )

    def methods_for(self, unit_id: str) -> list[str]:
        """The explainer methods a unit gets: those configured, or by its kind when none were chosen."""
        if self.s.methods is not None:
            return self.s.methods
        return [HEAD_METHOD if UnitRef.parse(unit_id).is_head else DEFAULT_METHOD]

    def simulator_for(self, unit: Unit) -> Simulator:
        """The simulator of a unit: under `auto`, attention heads get `head-exact` (with probabilities)."""
        return self.head_simulator if unit.ref.is_head else self.simulator

    def scorers_for(self, unit: Unit | None) -> dict[str, Scorer]:
        return self.head_scorers if unit is not None and unit.ref.is_head else self.scorers

    def score_fields(self, scorer: str, unit: Unit | None = None) -> dict:
        """What a configured scorer records as its producer (for `unit`): its simulator (or judge), prompt."""
        sc = self.scorers_for(unit)[scorer]
        return {"simulator": sc.source, "prompt": sc.prompt}

    def explain_inputs(self, sample: UnitSample, method: str) -> str:
        """Digest of the examples the explainer reads for `method` (its explanation id includes it)."""
        seen = list(self.explainers[method].reads(sample))
        if self.s.best_of > 1 or self.s.revise:
            seen += sample.validation
        return digest(seen)

    def exp_id(self, unit_id: str, method: str, sample: UnitSample) -> str:
        inputs = self.explain_inputs(sample, method)
        return explanation_id(unit_id, method, self.s, self.explainers[method].prompt, inputs)

    @staticmethod
    def score_inputs(sample: UnitSample) -> str:
        """Digest of every example a scorer may read; a stored score made from other examples is stale."""
        pairs = [e for pair in sample.counterfactual_pairs for e in pair]
        return digest(sample.test + sample.quantile + sample.negatives + pairs)

    def done(self, exp_id: str, sample: UnitSample) -> bool:
        """Explained, and scored by every configured scorer on the sample's current examples and settings."""
        inputs = self.score_inputs(sample)
        want_settings = self.s.score.model_dump()
        default = scoring.ScoreSettings().model_dump()  # rows older than a setting hold its default
        have = {
            (x.scorer, x.simulator, x.prompt)
            for x in self.store.scores(exp_id)
            if x.status != "failed"
            and x.settings.get("inputs") == inputs
            and all(x.settings.get(k, default[k]) == v for k, v in want_settings.items())
        }
        want = {
            (sc, f["simulator"], f["prompt"])
            for sc in self.s.scorers
            for f in [self.score_fields(sc, sample.unit)]
        }
        return self.store.get_explanation(exp_id) is not None and want <= have

    async def explain(self, sample: UnitSample, method: str) -> tuple[str, str, dict]:
        """The explanation, its prompt id and what else decided it; `batch_id` where a batch answered."""
        with batch.served() as ids:
            text, prompt_id, extra = await self._explain(sample, method)
        return text, prompt_id, extra | batch.batch_ids(ids)

    async def _explain(self, sample: UnitSample, method: str) -> tuple[str, str, dict]:
        explainer = self.explainers[method]
        prompt_id = explainer.prompt
        extra: dict = {}
        best_of = self.s.best_of if sample.validation else 1

        async def candidate(seed: int) -> str | None:
            with batch.tagged(candidate=f"{method}#{seed}" if best_of > 1 else method):
                if seed == 0:
                    return await explainer(sample)
                try:
                    return await explainer(sample, seed, 0.7)
                except ExplanationError:
                    return None

        texts = await batch.in_turn(candidate(seed) for seed in range(best_of))
        text = texts[0]
        if best_of > 1:
            candidates = [t for t in texts if t is not None]
            simulator = self.simulator_for(sample.unit)
            with batch.tagged(phase="validation"):
                sims = await batch.in_turn(simulator.simulate(c, sample.validation) for c in candidates)
            val_scores = [scoring.sim_correlation(x) for x in sims]
            best = max(
                range(len(candidates)),
                key=lambda i: -1.0 if val_scores[i] != val_scores[i] else val_scores[i],
            )
            text = candidates[best]
            extra = {"candidates": candidates, "validation_correlation": val_scores}
        if self.s.revise and sample.validation:
            extra["revision"] = await self.revision(sample, explainer, text)
            if extra["revision"]["kept"]:
                text = extra["revision"]["text"]
        return text, prompt_id, extra

    async def revision(self, sample: UnitSample, explainer: Explainer, text: str) -> dict:
        """Show the explainer the 3 explain examples its explanation predicted worst; keep the revised
        explanation only if it scores better on the validation set."""
        unit_max = sample.unit.stats.max
        simulator = self.simulator_for(sample.unit)
        sims = await simulator.simulate(text, sample.explain)

        def error(sim) -> float:  # noqa: ANN001
            true = normalize(sim.true, unit_max)
            return sum(abs(t - p) for t, p in zip(true, sim.expected, strict=True))

        worst = sorted(zip(sample.explain, sims, strict=True), key=lambda es_: -error(es_[1]))[:3]
        try:
            revised = await explainer.revise(sample, text, [(e, sim.expected) for e, sim in worst])
        except ExplanationError as e:
            return {"text": None, "kept": False, "error": str(e)}
        before = scoring.sim_correlation(await simulator.simulate(text, sample.validation))
        after = scoring.sim_correlation(await simulator.simulate(revised, sample.validation))
        kept = not math.isnan(after) and (math.isnan(before) or after > before)
        return {"text": revised, "kept": kept, "validation_before": before, "validation_after": after}

    async def score_explanation(
        self, exp_id: str, unit_id: str, text: str, sample: UnitSample
    ) -> list[Score]:
        """Every configured scorer on one explanation, each row carrying this run's provenance."""
        record = ScoreRecord(
            explanation=text,
            sample=sample,
            settings=self.s.score,
            explanation_id=exp_id,
            unit_id=unit_id,
            run_id=self.run_id,
            recorded={**self.s.score.model_dump(), "inputs": self.score_inputs(sample)},
        )
        return await self.score(record)

    async def score(self, record: ScoreRecord) -> list[Score]:
        """Every scorer on the record. In a --batch run a scorer whose answers are not back yet is
        passed over, the others still run (their requests join the batch), then BatchPending is raised."""
        out, pending = [], None
        for name, scorer in self.scorers_for(record.sample.unit).items():
            t0 = time.perf_counter()
            with (
                metered() as spent,
                batch.served() as ids,
                batch.tagged(phase=name, candidate=record.explanation_id),
            ):
                try:
                    out.append(await scorer(record))
                except OutOfCreditError:
                    raise  # every further call would fail the same way: stop the run (see `run`)
                except batch.BatchPending as e:
                    pending = e
                    continue
                except LLMError as e:
                    out.append(scoring.failed(name, e, **record.row(scorer)))
            out[-1].details["seconds"] = round(time.perf_counter() - t0, 3)
            out[-1].details["usage"] = usage_dump(spent)
            out[-1].details |= batch.batch_ids(ids)
        if pending is not None:
            raise pending
        return out

    async def label_one(self, unit_id: str, method: str) -> UnitResult:
        with batch.tagged(unit_id=unit_id, phase="explain", candidate=method):
            return await self._label_one(unit_id, method)

    async def _label_one(self, unit_id: str, method: str) -> UnitResult:
        try:
            sample = sample_unit(self.store, unit_id, self.s.sample)
        except Unlabellable as e:
            return UnitResult(unit_id=unit_id, method=method, skip_reason=str(e))
        if method == AGENT:
            return await self.investigate(sample)
        exp_id = self.exp_id(unit_id, method, sample)
        if self.done(exp_id, sample):
            exp = self.store.get_explanation(exp_id)
            stored = self.store.scores(exp_id)
            return UnitResult(
                unit_id=unit_id,
                method=method,
                explanation=exp.text,
                explanation_id=exp_id,
                scores={x.scorer: x.value for x in stored},
                status={x.scorer: x.status for x in stored},
                skipped=True,
            )
        t0 = time.perf_counter()
        try:
            with metered() as spent:
                text, prompt_id, extra = await self.explain(sample, method)
        except OutOfCreditError:
            raise
        except batch.BatchPending:
            return UnitResult(unit_id=unit_id, method=method, pending="explanation")
        except LLMError as e:
            return UnitResult(unit_id=unit_id, method=method, error=f"{type(e).__name__}: {e}")
        settings = {
            **self.s.model_dump(exclude={"concurrency"}),
            **extra,
            "code_version": code_version(),
            "seconds": round(time.perf_counter() - t0, 3),
            "usage": usage_dump(spent),
        }
        exp = Explanation(
            id=exp_id,
            unit_id=unit_id,
            text=text,
            method=method,
            model=self.explainer.spec,
            prompt=prompt_id,
            settings=settings,
            run_id=self.run_id,
        )
        try:
            scores = await self.score_explanation(exp_id, unit_id, text, sample)
        except batch.BatchPending:  # stored with its scores once they are back
            return UnitResult(
                unit_id=unit_id, method=method, explanation=text, explanation_id=exp_id, pending="scores"
            )
        self.store.put_explanation(exp, scores)
        return UnitResult(
            unit_id=unit_id,
            method=method,
            explanation=text,
            explanation_id=exp_id,
            scores={x.scorer: x.value for x in scores},
            status={x.scorer: x.status for x in scores},
        )

    async def investigate(self, sample: UnitSample) -> UnitResult:
        """The `agent` method: an investigation of the unit, resumed or reused when one exists."""
        from autointerp.agent.bulk import AgentBudget, Readers, label_agent

        budget = self.agent_budget or AgentBudget()
        if self.readers is None:
            self.readers = Readers(budget.units_file)
        return await label_agent(self, sample, self.readers, budget)

    async def run(
        self,
        unit_ids: list[str],
        progress: Callable[[UnitResult], None] | None = None,
        shard: str | None = None,
    ) -> LabelSummary:
        """Label the units (each once, in order); the run's row ends `complete` or `failed`, whatever
        happens: an exception or Ctrl-C marks it `failed` with the error, and the rerun resumes.
        An `OutOfCreditError` stops the whole run at once (the units in flight are cancelled) and is
        raised with the provider's message: every further call would fail the same way.
        `shard` ("i/n"): the units are that shard's; its summary says so (what `merge` checks)."""
        extra = {"shard": shard} if shard else {}
        t0 = time.perf_counter()
        unit_ids = list(dict.fromkeys(unit_ids))  # a unit given twice is labelled and counted once
        self.store.start_run(
            RunRecord(
                id=self.run_id,
                kind="label",
                settings=self.s.model_dump(),
                code_version=code_version(),
                started_at=now(),
            )
        )
        sem = asyncio.Semaphore(self.s.concurrency)
        finished: list[UnitResult] = []

        stop: list[OutOfCreditError] = []  # set once the provider refuses for lack of credit

        async def one(uid: str, method: str) -> UnitResult:
            async with sem:
                if stop:  # the run is stopping: start nothing new
                    raise stop[0]
                try:
                    with metered() as spent:
                        result = await self.label_one(uid, method)
                except OutOfCreditError as e:
                    stop.append(e)
                    raise
                result.usage = spent
            finished.append(result)
            if progress:
                progress(result)
            return result

        tasks: list[asyncio.Future] = []
        try:
            if self.batcher:  # collect what ended before anything asks for it
                await self.batcher.poll()
            tasks = [asyncio.ensure_future(one(u, m)) for u in unit_ids for m in self.methods_for(u)]
            results = await asyncio.gather(*tasks)
            if self.batcher:  # every request the units now wait for, as one batch per model
                await self.batcher.submit(self.run_id)
        except BaseException as e:  # an unexpected error, Ctrl-C (cancellation): stop, and say so
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            error = "interrupted" if isinstance(e, KeyboardInterrupt | asyncio.CancelledError) else repr(e)
            self.store.finish_run(
                self.run_id,
                "failed",
                {"error": error, "finished_units": len(finished), "usage": self.usage_dump(), **extra},
            )
            raise
        summary = LabelSummary(
            run_id=self.run_id,
            results=list(results),
            seconds=time.perf_counter() - t0,
            usage={role: m.usage for role, m in self.meters.items()},
            batch=self.batcher.report if self.batcher else None,
        )
        status = "waiting" if summary.ok and summary.pending else "complete" if summary.ok else "failed"
        self.store.finish_run(self.run_id, status, summary.record() | extra)
        return summary

    def usage_dump(self) -> dict:
        return usage_dump({role: m.usage for role, m in self.meters.items()})


Order = Literal["index", "selective", "random"]
ORDERS: tuple[str, ...] = ("index", "selective", "random")


def firing_count(unit: Unit) -> int:
    """How many recorded tokens the unit fired on (delphi's `min_examples` counts these)."""
    return round(unit.stats.frac_firing * unit.stats.n_tokens)


def select_units(
    store: Store,
    units: list[str] | None = None,
    *,
    hooks: list[str] | None = None,
    min_count: int = 0,
    order: str = "index",
    limit: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Unit ids to label: those `units` name (ids, their ends, heads `L.H`, patterns: `match_unit_ids`)
    or every recorded unit, at the `hooks`, that fired on at
    least `min_count` tokens, in `order` (index: as recorded; selective: lowest firing frequency first,
    among units that fire; random: shuffled by `seed`), at most `limit`. A repeated unit counts once."""
    if order not in ORDERS:
        raise UserError(f"--order {order!r} is not one of {', '.join(ORDERS)}; pick one.")
    if min_count < 0:
        raise UserError(f"--min-count must be 0 or more, not {min_count}; fix the value.")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be 1 or more, not {limit}; leave it out to label every unit.")
    recorded_hooks = store.hooks()
    for h in hooks or []:
        if h not in recorded_hooks:
            raise UserError(
                f"No unit is recorded at hook {h!r} in {store.path}; recorded hooks: "
                f"{', '.join(recorded_hooks) or 'none'}."
            )
    if units:
        pool = [store.get_unit(uid) for uid in match_unit_ids(store, units)]
    else:
        pool = store.units()
        if not pool:
            raise UserError(f"{store.path} holds no recorded units; run `autointerp record` first.")
    chosen = [
        u
        for u in pool
        if (not hooks or u.ref.hook in hooks) and (not min_count or firing_count(u) >= min_count)
    ]
    if order == "selective":
        chosen = sorted((u for u in chosen if firing_count(u) > 0), key=lambda u: u.stats.frac_firing)
    elif order == "random":
        random.Random(seed).shuffle(chosen)
    if not chosen:
        raise UserError(
            f"No unit of {store.path} matches --hook, --min-count and --order; lower --min-count or "
            "record more tokens."
        )
    return [u.id for u in chosen][:limit]


async def alabel(
    db: str | Path,
    units: list[str] | None = None,
    *,
    limit: int | None = None,
    hooks: list[str] | None = None,
    min_count: int = 0,
    order: str = "index",
    explainer: str = "local:qwen2.5-coder-1.5b",
    simulator: str | None = None,
    base_url: str | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    no_cache: bool = False,
    progress: Callable[[UnitResult], None] | None = None,
    counterfactuals: bool = False,
    shard: str | None = None,
    batch_api: bool = False,
    agent: AgentBudget | None = None,
    **settings,
) -> LabelSummary:
    """Explain and score units of a recorded store: the async core of `label` (await it in async code).

    Units: those given, or every recorded one, chosen by `select_units` (`hooks`, `min_count`, `order`,
    `limit`). `counterfactuals=True` first generates verified counterfactuals, minimal examples and hard
    negatives for the units (with the explainer LLM), for the contrastive explainer and scorer.
    `timeout` / `retries`: per API request (see `llm.connection`). `shard` ("i/n"): label only the
    selected units that fall in that shard (`ShardSpec.has_unit`: shards partition any selection).
    `batch_api=True` (`label --batch`): chat calls go through the provider's batch API (`llm.batch`);
    the run submits what it needs and returns; a later run collects, records and submits the next phase.
    `agent`: the budget of each investigation of the `agent` method.
    """
    from autointerp.scale.shards import ShardSpec

    spec = ShardSpec.parse(shard) if shard else None
    if not Path(db).exists():
        raise UserError(f"No store at {db}; run `autointerp record --db {db} ...` first.")
    store = Store(db)
    s = LabelSettings(explainer=explainer, simulator=simulator or explainer, **settings)
    if batch_api:
        check_batch(s, counterfactuals=counterfactuals, no_cache=no_cache)
        s.simulator_mode = "json" if s.simulator_mode == "auto" else s.simulator_mode
    if spec and units is not None and not units:  # a shard that got none of the selected units
        unit_ids = []
    else:
        unit_ids = select_units(store, units, hooks=hooks, min_count=min_count, order=order, limit=limit)
    if spec:
        unit_ids = [u for u in unit_ids if spec.has_unit(u)]
    llm_options = dict(
        base_url=base_url, concurrency=s.concurrency, no_cache=no_cache, timeout=timeout, retries=retries
    )
    exp_llm = get_llm(s.explainer, store, **llm_options)
    sim_llm = exp_llm if s.simulator == s.explainer else get_llm(s.simulator, store, **llm_options)
    batcher = None
    if batch_api:
        batcher = batch.Batcher(store)
        exp_llm, sim_llm = batcher.wrap(exp_llm), batcher.wrap(sim_llm)
    labeller = Labeller(store, s, exp_llm, sim_llm, batcher, agent)
    if counterfactuals:
        live = [u for u in unit_ids if firing_count(store.get_unit(u)) > 0]  # never-fired ones are skipped
        meter = TokenMeter(exp_llm, "counterfactuals")
        await add_counterfactuals(store, live, meter)
        labeller.meters["counterfactuals"] = meter
    if batcher is None:
        return await labeller.run(unit_ids, progress, str(spec) if spec else None)
    with store.claim_run("llm-batches", "collecting or submitting provider batches for"):
        return await labeller.run(unit_ids, progress, str(spec) if spec else None)


def check_batch(s: LabelSettings, *, counterfactuals: bool = False, no_cache: bool = False) -> None:
    """UserError unless the settings can run through provider batches (`label --batch`)."""
    from autointerp.llm import parse_spec

    for role, spec in (("explainer", s.explainer), ("simulator", s.simulator)):
        if parse_spec(spec).backend not in ("openai", "anthropic"):
            raise UserError(
                f"--batch needs an openai: or anthropic: {role}, not {spec}; drop --batch to run it live."
            )
    if s.simulator_mode in batch.EXACT_MODES:
        raise UserError(
            f"--simulator-mode {s.simulator_mode} reads token probabilities, which batch results do not "
            "carry; use --simulator-mode json with --batch."
        )
    if counterfactuals:
        raise UserError(
            "--counterfactuals runs the subject model live; generate them in a run without --batch."
        )
    if no_cache:
        raise UserError("--no-cache cannot be used with --batch: batch answers are read back from the store.")


def label(db: str | Path, units: list[str] | None = None, **kwargs) -> LabelSummary:
    """Explain and score units of a recorded store (the Python API behind `autointerp label`).

    Keyword arguments as `alabel`; works with or without a running event loop (e.g. in Jupyter).
    """
    return run_sync(alabel(db, units, **kwargs))


async def add_counterfactuals(store: Store, unit_ids: list[str], llm: LLM) -> None:
    """Run the counterfactual generator over the units, grouped by the subject model that recorded them."""
    from autointerp.counterfactual import agenerate_counterfactuals
    from autointerp.subject.model import load_subject

    by_model: dict[str, list[str]] = {}
    for uid in unit_ids:
        run = store.get_run(store.get_unit(uid).run_id)
        by_model.setdefault(run.settings["model"] if run else UnitRef.parse(uid).model, []).append(uid)
    for model, ids in by_model.items():
        await agenerate_counterfactuals(store, load_subject(model), ids, llm)
