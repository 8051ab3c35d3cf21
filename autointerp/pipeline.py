"""Bulk labelling: explain, simulate and score many units; async, bounded, resumable, with progress.

A unit's explanation id is the hash of everything that decides it (unit, method, explainer, prompt,
settings), so a unit already explained and scored with the same settings is skipped. An explanation
and its scores are written in one transaction; a failed explanation is counted and reported, never
stored as a result.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from autointerp import score as scoring
from autointerp.aio import run_sync
from autointerp.errors import UserError
from autointerp.explain import EXPLAINERS, Explainer, ExplanationError
from autointerp.llm import CachedLLM, get_llm
from autointerp.llm.base import LLM, LLMError
from autointerp.render import normalize
from autointerp.sampling import SampleSettings, UnitSample, digest, sample_unit
from autointerp.score import SCORERS, ScoreRecord
from autointerp.simulate import make_simulator
from autointerp.store import Store
from autointerp.types import Explanation, RunRecord, Score, UnitRef, now
from autointerp.version import code_version


class LabelSettings(BaseModel):
    explainer: str = "local:qwen2.5-coder-1.5b"
    simulator: str = "local:qwen2.5-coder-1.5b"
    simulator_mode: str = "auto"  # exact (token probabilities), json, or auto
    methods: list[str] = Field(default_factory=lambda: ["highlight"])  # best on the synthetic bench
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
    skipped: bool = False
    error: str | None = None


class LabelSummary(BaseModel):
    run_id: str
    results: list[UnitResult]
    seconds: float
    prompt_tokens: int
    completion_tokens: int

    def stats(self, scorer: str) -> dict[str, float | int | None]:
        vals = [r.scores[scorer] for r in self.results if r.scores.get(scorer) is not None]
        return {
            "n": len(vals),
            "mean": statistics.fmean(vals) if vals else None,
            "median": statistics.median(vals) if vals else None,
        }

    @property
    def failures(self) -> list[UnitResult]:
        return [r for r in self.results if r.error]


class TokenMeter(LLM):
    """Wraps an LLM and adds up the tokens of the calls it actually made (cache hits cost nothing)."""

    def __init__(self, llm: LLM):
        self.llm = llm
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def __getattr__(self, name: str):  # noqa: ANN204 - spec, backend, model, capabilities
        return getattr(self.llm, name)

    def _count(self, usage) -> None:  # noqa: ANN001
        if not usage.cached:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens

    async def chat(self, request):  # noqa: ANN001, ANN201
        resp = await self.llm.chat(request)
        self._count(resp.usage)
        return resp

    async def token_probs(self, request):  # noqa: ANN001, ANN201
        resp = await self.llm.token_probs(request)
        self._count(resp.usage)
        return resp

    async def token_probs_many(self, requests):  # noqa: ANN001, ANN201
        resps = await self.llm.token_probs_many(requests)
        for r in resps:
            self._count(r.usage)
        return resps

    async def stepwise_many(self, requests):  # noqa: ANN001, ANN201
        resps = await self.llm.stepwise_many(requests)
        for r in resps:
            self._count(r.usage)
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


class Labeller:
    def __init__(self, store: Store, s: LabelSettings, explainer: LLM, simulator: LLM):
        EXPLAINERS.check(s.methods)
        SCORERS.check(s.scorers)
        self.store, self.s = store, s
        self.explainer, self.sim_llm = TokenMeter(explainer), TokenMeter(simulator)
        self.simulator = make_simulator(self.sim_llm, s.simulator_mode)
        self.explainers: dict[str, Explainer] = {
            m: EXPLAINERS[m](self.explainer, s.sample.explain_window) for m in s.methods
        }
        self.scorers = {x: SCORERS[x](self.simulator, self.sim_llm) for x in s.scorers}
        self.run_id = (
            "lab-" + hashlib.sha1(json.dumps(s.model_dump(), sort_keys=True).encode()).hexdigest()[:12]
        )

    def score_fields(self, scorer: str) -> dict:
        """What a configured scorer records as its producer: its simulator (or judge) and prompt."""
        sc = self.scorers[scorer]
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
        want = {(sc, f["simulator"], f["prompt"]) for sc in self.s.scorers for f in [self.score_fields(sc)]}
        return self.store.get_explanation(exp_id) is not None and want <= have

    async def explain(self, sample: UnitSample, method: str) -> tuple[str, str, dict]:
        explainer = self.explainers[method]
        text, prompt_id = await explainer(sample), explainer.prompt
        extra: dict = {}
        if self.s.best_of > 1 and sample.validation:
            candidates = [text]
            for seed in range(1, self.s.best_of):
                try:
                    candidates.append(await explainer(sample, seed, 0.7))
                except ExplanationError:
                    continue
            val_scores = []
            for cand in candidates:
                sims = await self.simulator.simulate(cand, sample.validation)
                val_scores.append(scoring.sim_correlation(sims))
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
        sims = await self.simulator.simulate(text, sample.explain)

        def error(sim) -> float:  # noqa: ANN001
            true = normalize(sim.true, unit_max)
            return sum(abs(t - p) for t, p in zip(true, sim.expected, strict=True))

        worst = sorted(zip(sample.explain, sims, strict=True), key=lambda es_: -error(es_[1]))[:3]
        try:
            revised = await explainer.revise(sample, text, [(e, sim.expected) for e, sim in worst])
        except ExplanationError as e:
            return {"text": None, "kept": False, "error": str(e)}
        before = scoring.sim_correlation(await self.simulator.simulate(text, sample.validation))
        after = scoring.sim_correlation(await self.simulator.simulate(revised, sample.validation))
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
        out = []
        for name, scorer in self.scorers.items():
            t0 = time.perf_counter()
            try:
                out.append(await scorer(record))
            except LLMError as e:
                out.append(scoring.failed(name, e, **record.row(scorer)))
            out[-1].details["seconds"] = round(time.perf_counter() - t0, 3)
        return out

    async def label_one(self, unit_id: str, method: str) -> UnitResult:
        sample = sample_unit(self.store, unit_id, self.s.sample)
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
            text, prompt_id, extra = await self.explain(sample, method)
        except LLMError as e:
            return UnitResult(unit_id=unit_id, method=method, error=f"{type(e).__name__}: {e}")
        settings = {
            **self.s.model_dump(exclude={"concurrency"}),
            **extra,
            "code_version": code_version(),
            "seconds": round(time.perf_counter() - t0, 3),
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
        scores = await self.score_explanation(exp_id, unit_id, text, sample)
        self.store.put_explanation(exp, scores)
        return UnitResult(
            unit_id=unit_id,
            method=method,
            explanation=text,
            explanation_id=exp_id,
            scores={x.scorer: x.value for x in scores},
            status={x.scorer: x.status for x in scores},
        )

    async def run(
        self, unit_ids: list[str], progress: Callable[[UnitResult], None] | None = None
    ) -> LabelSummary:
        t0 = time.perf_counter()
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

        async def one(uid: str, method: str) -> UnitResult:
            async with sem:
                result = await self.label_one(uid, method)
            if progress:
                progress(result)
            return result

        results = await asyncio.gather(*(one(u, m) for u in unit_ids for m in self.s.methods))
        summary = LabelSummary(
            run_id=self.run_id,
            results=list(results),
            seconds=time.perf_counter() - t0,
            prompt_tokens=self.explainer.prompt_tokens
            + (self.sim_llm.prompt_tokens if self.sim_llm.llm is not self.explainer.llm else 0),
            completion_tokens=self.explainer.completion_tokens
            + (self.sim_llm.completion_tokens if self.sim_llm.llm is not self.explainer.llm else 0),
        )
        self.store.finish_run(
            self.run_id,
            "complete" if not summary.failures else "failed",
            {
                "units": len(results),
                "failures": [r.model_dump() for r in summary.failures],
                "seconds": summary.seconds,
            },
        )
        return summary


def resolve_units(store: Store, units: list[str] | None, limit: int | None = None) -> list[str]:
    """Unit ids to label: those given (checked), or every recorded unit."""
    if units:
        ids = [UnitRef.parse(u).id for u in units]
        missing = [u for u in ids if store.get_unit(u) is None]
        if missing:
            raise UserError(f"{missing[0]} is not recorded in {store.path}; record its hook first.")
    else:
        ids = [u.id for u in store.units()]
        if not ids:
            raise UserError(f"{store.path} holds no recorded units; run `autointerp record` first.")
    return ids[:limit] if limit else ids


async def alabel(
    db: str | Path,
    units: list[str] | None = None,
    *,
    limit: int | None = None,
    explainer: str = "local:qwen2.5-coder-1.5b",
    simulator: str | None = None,
    base_url: str | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    no_cache: bool = False,
    progress: Callable[[UnitResult], None] | None = None,
    counterfactuals: bool = False,
    **settings,
) -> LabelSummary:
    """Explain and score units of a recorded store: the async core of `label` (await it in async code).

    `counterfactuals=True` first generates verified counterfactuals, minimal examples and hard
    negatives for the units (with the explainer LLM), for the contrastive explainer and scorer.
    `timeout` / `retries`: per API request (see `llm.connection`).
    """
    if not Path(db).exists():
        raise UserError(f"No store at {db}; run `autointerp record --db {db} ...` first.")
    store = Store(db)
    s = LabelSettings(explainer=explainer, simulator=simulator or explainer, **settings)
    unit_ids = resolve_units(store, units, limit)
    llm_options = dict(
        base_url=base_url, concurrency=s.concurrency, no_cache=no_cache, timeout=timeout, retries=retries
    )
    exp_llm = get_llm(s.explainer, store, **llm_options)
    sim_llm = exp_llm if s.simulator == s.explainer else get_llm(s.simulator, store, **llm_options)
    labeller = Labeller(store, s, exp_llm, sim_llm)
    if counterfactuals:
        # The generator is synchronous (it runs its own event loop): a worker thread, with its own
        # connection to the store (sqlite connections stay in their thread) and the same backend.
        await asyncio.to_thread(_counterfactuals_in_thread, store.path, unit_ids, exp_llm)
    return await labeller.run(unit_ids, progress)


def label(db: str | Path, units: list[str] | None = None, **kwargs) -> LabelSummary:
    """Explain and score units of a recorded store (the Python API behind `autointerp label`).

    Keyword arguments as `alabel`; works with or without a running event loop (e.g. in Jupyter).
    """
    return run_sync(alabel(db, units, **kwargs))


def _counterfactuals_in_thread(db: Path, unit_ids: list[str], llm: CachedLLM) -> None:
    store = Store(db)
    add_counterfactuals(store, unit_ids, CachedLLM(llm.inner, store, no_cache=llm.no_cache))


def add_counterfactuals(store: Store, unit_ids: list[str], llm: LLM) -> None:
    """Run the counterfactual generator over the units, grouped by the subject model that recorded them."""
    from autointerp.counterfactual import generate_counterfactuals
    from autointerp.subject.model import load_subject

    by_model: dict[str, list[str]] = {}
    for uid in unit_ids:
        run = store.get_run(store.get_unit(uid).run_id)
        by_model.setdefault(run.settings["model"] if run else UnitRef.parse(uid).model, []).append(uid)
    for model, ids in by_model.items():
        generate_counterfactuals(store, load_subject(model), ids, llm)
