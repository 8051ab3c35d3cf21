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
from autointerp.errors import UserError
from autointerp.explain import CONTRAST_SHOWN, METHODS, ExplainSettings, ExplanationError, propose
from autointerp.explain import revise as revise_explanation
from autointerp.llm import get_llm
from autointerp.llm.base import LLM, LLMError
from autointerp.llm.stepwise import read_stepwise
from autointerp.llm.util import token_probs_many
from autointerp.sampling import SampleSettings, UnitSample, digest, normalize, sample_unit
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


class TokenMeter:
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
        resps = await token_probs_many(self.llm, requests)
        for r in resps:
            self._count(r.usage)
        return resps

    async def stepwise_many(self, requests):  # noqa: ANN001, ANN201
        resps = await read_stepwise(self.llm, requests)
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
        unknown = [m for m in s.methods if m not in METHODS]
        if unknown:
            raise UserError(f"Unknown explainer method {unknown[0]!r}; use {', '.join(METHODS)}.")
        bad = [x for x in s.scorers if x not in scoring.SCORERS]
        if bad:
            raise UserError(f"Unknown scorer {bad[0]!r}; use {', '.join(scoring.SCORERS)}.")
        self.store, self.s = store, s
        self.explainer, self.sim_llm = TokenMeter(explainer), TokenMeter(simulator)
        self.simulator = make_simulator(self.sim_llm, s.simulator_mode)
        self.run_id = (
            "lab-" + hashlib.sha1(json.dumps(s.model_dump(), sort_keys=True).encode()).hexdigest()[:12]
        )

    def score_fields(self, scorer: str) -> dict:
        if scorer in ("correlation", "counterfactual"):
            return {
                "simulator": f"{self.sim_llm.spec}#{self.simulator.name}",
                "prompt": self.simulator.prompt.id,
            }
        if scorer == "embedding":
            return {"simulator": "local:all-minilm-l6-v2", "prompt": ""}
        from autointerp.prompts import prompt

        return {"simulator": self.sim_llm.spec, "prompt": prompt(f"{scorer}.j2").id}

    def explain_inputs(self, sample: UnitSample, method: str) -> str:
        """Digest of the examples the explainer reads for `method` (its explanation id includes it)."""
        seen = list(sample.explain)
        if method == "contrastive":
            seen += sample.contrast[:CONTRAST_SHOWN]
        if self.s.best_of > 1 or self.s.revise:
            seen += sample.validation
        return digest(seen)

    def exp_id(self, unit_id: str, method: str, sample: UnitSample) -> str:
        from autointerp.prompts import prompt

        inputs = self.explain_inputs(sample, method)
        return explanation_id(unit_id, method, self.s, prompt(METHODS[method]).id, inputs)

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
        es = ExplainSettings(method=method)
        text, prompt_id = await propose(self.explainer, sample, es, self.s.sample.explain_window)
        extra: dict = {}
        if self.s.best_of > 1 and sample.validation:
            candidates = [text]
            for seed in range(1, self.s.best_of):
                try:
                    cand, _ = await propose(
                        self.explainer, sample, es, self.s.sample.explain_window, seed, 0.7
                    )
                    candidates.append(cand)
                except ExplanationError:
                    continue
            val_scores = []
            for cand in candidates:
                sims = await self.simulator.simulate(cand, sample.validation)
                val_scores.append(scoring._corr(sims))
            best = max(
                range(len(candidates)),
                key=lambda i: -1.0 if val_scores[i] != val_scores[i] else val_scores[i],
            )
            text = candidates[best]
            extra = {"candidates": candidates, "validation_correlation": val_scores}
        if self.s.revise and sample.validation:
            extra["revision"] = await self.revision(sample, es, text)
            if extra["revision"]["kept"]:
                text = extra["revision"]["text"]
        return text, prompt_id, extra

    async def revision(self, sample: UnitSample, es: ExplainSettings, text: str) -> dict:
        """Show the explainer the 3 explain examples its explanation predicted worst; keep the revised
        explanation only if it scores better on the validation set."""
        unit_max = sample.unit.stats.max
        sims = await self.simulator.simulate(text, sample.explain)

        def error(sim) -> float:  # noqa: ANN001
            true = normalize(sim.true, unit_max)
            return sum(abs(t - p) for t, p in zip(true, sim.expected, strict=True))

        worst = sorted(zip(sample.explain, sims, strict=True), key=lambda es_: -error(es_[1]))[:3]
        try:
            revised = await revise_explanation(
                self.explainer,
                sample,
                es,
                self.s.sample.explain_window,
                text,
                [(e, sim.expected) for e, sim in worst],
            )
        except ExplanationError as e:
            return {"text": None, "kept": False, "error": str(e)}
        before = scoring._corr(await self.simulator.simulate(text, sample.validation))
        after = scoring._corr(await self.simulator.simulate(revised, sample.validation))
        kept = not math.isnan(after) and (math.isnan(before) or after > before)
        return {"text": revised, "kept": kept, "validation_before": before, "validation_after": after}

    async def score_explanation(
        self, exp_id: str, unit_id: str, text: str, sample: UnitSample
    ) -> list[Score]:
        """Every configured scorer on one explanation, each row carrying this run's provenance."""
        fields = {
            "explanation_id": exp_id,
            "unit_id": unit_id,
            "run_id": self.run_id,
            "settings": {**self.s.score.model_dump(), "inputs": self.score_inputs(sample)},
        }
        return await self.score(text, sample, fields)

    async def score(self, text: str, sample: UnitSample, fields: dict) -> list[Score]:
        out = []
        for scorer in self.s.scorers:
            f = {**fields, **self.score_fields(scorer)}
            t0 = time.perf_counter()
            try:
                if scorer == "correlation":
                    out.append(await scoring.correlation(self.simulator, text, sample, self.s.score, **f))
                elif scorer == "detection":
                    out.append(await scoring.detection(self.sim_llm, text, sample, self.s.score, **f))
                elif scorer == "fuzzing":
                    out.append(await scoring.fuzzing(self.sim_llm, text, sample, self.s.score, **f))
                elif scorer == "counterfactual":
                    out.append(await scoring.counterfactual(self.simulator, text, sample, self.s.score, **f))
                else:
                    out.append(await scoring.embedding(text, sample, self.s.score, **f))
            except LLMError as e:
                out.append(scoring.failed(scorer, e, **f))
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


def label(
    db: str | Path,
    units: list[str] | None = None,
    *,
    limit: int | None = None,
    explainer: str = "local:qwen2.5-coder-1.5b",
    simulator: str | None = None,
    base_url: str | None = None,
    no_cache: bool = False,
    progress: Callable[[UnitResult], None] | None = None,
    counterfactuals: bool = False,
    **settings,
) -> LabelSummary:
    """Explain and score units of a recorded store (the Python API behind `autointerp label`).

    `counterfactuals=True` first generates verified counterfactuals, minimal examples and hard
    negatives for the units (with the explainer LLM), for the contrastive explainer and scorer.
    """
    if not Path(db).exists():
        raise UserError(f"No store at {db}; run `autointerp record --db {db} ...` first.")
    store = Store(db)
    s = LabelSettings(explainer=explainer, simulator=simulator or explainer, **settings)
    unit_ids = resolve_units(store, units, limit)
    exp_llm = get_llm(s.explainer, store, base_url=base_url, concurrency=s.concurrency, no_cache=no_cache)
    sim_llm = (
        exp_llm
        if s.simulator == s.explainer
        else get_llm(s.simulator, store, base_url=base_url, concurrency=s.concurrency, no_cache=no_cache)
    )
    labeller = Labeller(store, s, exp_llm, sim_llm)
    if counterfactuals:
        add_counterfactuals(store, unit_ids, exp_llm)
    return asyncio.run(labeller.run(unit_ids, progress))


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
