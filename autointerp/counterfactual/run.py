"""Counterfactual generation over many units: resumable per unit (a run record keyed by the settings),
each unit's examples written together. Async core (`agenerate_counterfactuals`), sync wrapper."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from autointerp.aio import run_sync
from autointerp.counterfactual.attribution import attribute, minimal_example
from autointerp.counterfactual.edits import load_prompt
from autointerp.counterfactual.link import counterfactual_of, hard_negative_of, minimal_of, with_attribution
from autointerp.counterfactual.negatives import hard_negatives, quiet_threshold
from autointerp.counterfactual.probe import UnitProbe
from autointerp.counterfactual.proposals import ask, plan_jobs, verify
from autointerp.counterfactual.types import (
    KINDS,
    CounterfactualSettings,
    CounterfactualSummary,
    MinimalResult,
    ProgressEvent,
    UnitCounterfactuals,
)
from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import Example, RunRecord, Unit, UnitRef, now
from autointerp.version import code_version

if TYPE_CHECKING:
    from autointerp.llm import LLM
    from autointerp.subject.model import SubjectModel
    from autointerp.subject.recorder import UnitSource


def settings_key(settings: CounterfactualSettings, llm_spec: str | None) -> str:
    """Hash of the settings, the LLM spec and the prompt versions: names each unit's run."""
    blob = json.dumps(
        {
            "settings": settings.model_dump(),
            "llm": llm_spec,
            "prompts": [load_prompt("counterfactual_off").tag, load_prompt("counterfactual_on").tag],
        },
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


async def process_unit(
    store: Store,
    probe: UnitProbe,
    unit: Unit,
    llm: LLM | None,
    s: CounterfactualSettings,
    key: str,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> tuple[UnitCounterfactuals, list[Example]]:
    """Everything for one unit; returns the summary and the examples to write (nothing is written)."""
    subject = probe.subject
    res = UnitCounterfactuals(unit_id=unit.id)
    tops = store.examples(unit.id, "top")[: s.n_examples]
    tops = [t for t in tops if t.max_act > unit.stats.fire_threshold]
    out: list[Example] = []
    on_stage("attribution")
    for t in tops:
        out.append(with_attribution(t, attribute(probe, t, s.neutral_token), key))
        res.n_attributed += 1
    on_stage("minimal")
    minimals: dict[int, MinimalResult] = {}
    for t in tops:
        m = minimal_example(probe, t, s.keep_frac)
        if m is None:
            continue
        minimals[t.rank] = m
        res.n_minimal += 1
        res.n_minimal_shortened += m.shortened
        res.minimal_kept_len_frac.append(len(m.token_ids) / m.original_length)
        out.append(minimal_of(subject, t, m, s.keep_frac, key))
    if llm is not None and tops:
        on_stage("llm")
        thr = quiet_threshold(unit, s)
        by_context = {
            e.context.id: e for kind in ("negative", "random") for e in store.examples(unit.id, kind)
        }
        negatives = [e for e in by_context.values() if e.max_act <= thr]
        jobs, skipped = plan_jobs(probe, unit, tops, minimals, negatives, s)
        answers = await ask(llm, jobs, s) if jobs else []
        res.candidates.extend(skipped)
        rank = 0
        for cand, ids, acts in verify(probe, unit, jobs, answers, s):
            res.candidates.append(cand)
            if cand.status != "verified":
                continue
            prompt = load_prompt(f"counterfactual_{cand.direction}").tag
            out.append(counterfactual_of(subject, unit.id, rank, cand, ids, acts, llm.spec, prompt, key))
            rank += 1
    if s.n_hard:
        on_stage("hard_negatives")
        for rank, (ex, sim, near) in enumerate(hard_negatives(probe, unit, store, tops, s)):
            out.append(hard_negative_of(ex, rank, sim, near, key))
            res.n_hard_negatives += 1
    return res, out


async def agenerate_counterfactuals(
    store: Store,
    subject: SubjectModel,
    unit_ids: list[str],
    llm: LLM | None = None,
    settings: CounterfactualSettings | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> CounterfactualSummary:
    """Attributions, minimal examples, verified LLM counterfactuals (when `llm` is given) and hard
    negatives for each unit. Resumable: a unit already done with the same settings, LLM and prompt
    versions is skipped. Each unit's examples are written together, then its run record is completed."""
    s = settings or CounterfactualSettings()
    key = settings_key(s, llm.spec if llm else None)
    summary = CounterfactualSummary(settings_key=key)
    t0 = time.perf_counter()
    counts = {"verified": 0, "candidates": 0}
    units = []
    for uid in unit_ids:
        unit = store.get_unit(UnitRef.parse(uid).id)
        if unit is None:
            raise UserError(f"{uid} is not recorded in {store.path}; run `autointerp record` for it first.")
        units.append(unit)

    def emit(unit_id: str, stage: str, i: int) -> None:
        if progress:
            progress(ProgressEvent(unit_id=unit_id, stage=stage, unit_index=i, n_units=len(units), **counts))

    sae_cache: dict[str, UnitSource] = {}
    for i, unit in enumerate(units):
        run_id = f"cf-{key}-{hashlib.sha1(unit.id.encode()).hexdigest()[:10]}"
        done = store.get_run(run_id)
        if done is not None and done.status == "complete":
            summary.skipped.append(unit.id)
            emit(unit.id, "skipped", i)
            continue
        emit(unit.id, "start", i)
        run_settings = {"unit_id": unit.id, "llm": llm.spec if llm else None, **s.model_dump()}
        store.start_run(
            RunRecord(
                id=run_id,
                kind="counterfactual",
                settings=run_settings,
                code_version=code_version(),
                started_at=now(),
            )
        )
        try:
            same_sae = [
                u.ref.index
                for u in units
                if u.ref.sae and (u.ref.hook, u.ref.sae) == (unit.ref.hook, unit.ref.sae)
            ]
            probe = UnitProbe.for_unit(subject, store, unit, s.batch_tokens, sae_cache, same_sae)
            res, examples = await process_unit(
                store, probe, unit, llm, s, key, lambda st, u=unit.id, i=i: emit(u, st, i)
            )
            for kind in KINDS:
                store.delete_examples(unit.id, kind)
            store.add_examples(examples)
        except BaseException as e:
            store.finish_run(run_id, "failed", {"error": f"{type(e).__name__}: {e}"})
            raise
        store.finish_run(run_id, "complete", res.model_dump())
        summary.units.append(res)
        counts["verified"] += len(res.verified)
        counts["candidates"] += sum(c.status != "skipped" for c in res.candidates)
        emit(unit.id, "done", i)
    summary.seconds = time.perf_counter() - t0
    return summary


def generate_counterfactuals(
    store: Store,
    subject: SubjectModel,
    unit_ids: list[str],
    llm: LLM | None = None,
    settings: CounterfactualSettings | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> CounterfactualSummary:
    """`agenerate_counterfactuals` from sync code, also inside a running event loop (e.g. Jupyter)."""
    return run_sync(agenerate_counterfactuals(store, subject, unit_ids, llm, settings, progress))
