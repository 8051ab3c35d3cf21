"""Labelling and bench orchestration on a scripted LLM: resume, failures, the sync edge, a user's scorer."""

from __future__ import annotations

import asyncio
import json
import math
import re
from types import SimpleNamespace

import pytest

from autointerp import label
from autointerp.llm.base import LLM, ChatRequest, LLMError
from autointerp.pipeline import alabel
from autointerp.score import SCORERS, ScoreRecord, result
from autointerp.simulate import Simulator
from autointerp.store import Store
from autointerp.types import Score

UNITS = [f"m/blocks.0.mlp.hook_post/{i}" for i in range(3)]


@SCORERS.register("peak")
class PeakScorer:
    """A user's scorer: the share of held-out top windows whose simulated peak is the true peak."""

    name = "peak"

    def __init__(self, simulator: Simulator, llm: LLM):
        self.simulator = simulator
        self.source, self.prompt = f"{llm.spec}#{simulator.name}", simulator.prompt.id

    async def __call__(self, record: ScoreRecord) -> Score:
        tops = [e for e in record.sample.test if e.kind == "top"]
        sims = await self.simulator.simulate(record.explanation, tops)
        hits = [s.expected.index(max(s.expected)) == s.true.index(max(s.true)) for s in sims]
        value = sum(hits) / len(hits) if hits else math.nan
        return result(self, record, value, "no held-out top windows", {"hits": hits})


def rows(store: Store) -> list[tuple[str, str, str]]:
    """(unit, explanation text, scorer) of every stored score: duplicates would show up twice."""
    texts = {e.id: (e.unit_id, e.text) for e in store.explanations()}
    return sorted((*texts[x.explanation_id], x.scorer) for x in store.scores())


def test_label_with_a_scripted_llm_and_a_users_scorer(month_store, scripted):
    llm = scripted()
    summary = label(month_store.path, explainer=llm.spec, scorers=["correlation", "peak"], concurrency=2)
    assert not summary.failures and [r.explanation for r in summary.results] == ["months of the year"] * 3
    for uid in UNITS:
        (exp,) = month_store.explanations(uid)
        assert exp.model == "scripted:test" and exp.prompt == "explain-highlight@1"
        scores = {x.scorer: x for x in month_store.scores(exp.id)}
        assert scores["correlation"].status == "ok" and scores["correlation"].value > 0.9
        peak = scores["peak"]
        assert (peak.value, peak.status, peak.simulator) == (1.0, "ok", "scripted:test#exact")
        assert peak.prompt == scores["correlation"].prompt and peak.details["hits"] == [True] * 6
    asked = len(llm.requests)
    again = label(month_store.path, explainer=llm.spec, scorers=["correlation", "peak"])
    assert all(r.skipped for r in again.results) and len(llm.requests) == asked  # resumed, no calls
    assert len(rows(month_store)) == 6


def test_resume_after_an_interruption_loses_and_duplicates_nothing(month_store, scripted):
    def explain(request: ChatRequest) -> str:
        if "[[ July]]" in request.messages[-1].content:
            raise KeyboardInterrupt  # Ctrl-C while the third unit is being explained
        return "months of the year"

    interrupted = scripted(respond=explain)
    with pytest.raises(KeyboardInterrupt):
        label(month_store.path, explainer=interrupted.spec, concurrency=1)
    assert rows(month_store) == [(u, "months of the year", "correlation") for u in UNITS[:2]]
    (run,) = month_store.runs("label")
    assert (run.status, run.summary["error"], run.summary["finished_units"]) == ("failed", "interrupted", 2)
    interrupted.unregister()

    resumed = scripted()  # the same spec, now answering every unit
    summary = label(month_store.path, explainer=resumed.spec, concurrency=1)
    assert [r.skipped for r in summary.results] == [True, True, False] and not summary.failures
    assert rows(month_store) == [(u, "months of the year", "correlation") for u in UNITS]
    chats = [r for r in resumed.requests if isinstance(r, ChatRequest)]
    assert len(chats) == 1 and "[[ July]]" in chats[0].messages[-1].content  # only the missing unit
    assert Store(month_store.path).runs("label")[0].status == "complete"


def test_a_failing_unit_does_not_stop_the_run(month_store, scripted):
    def explain(request: ChatRequest) -> str:
        if "[[ June]]" in request.messages[-1].content:
            raise LLMError("the scripted explainer refuses June")
        return "months of the year"

    llm = scripted(respond=explain)
    summary = label(month_store.path, explainer=llm.spec, concurrency=3)
    (failed,) = summary.failures
    assert failed.unit_id == UNITS[1] and "refuses June" in failed.error and failed.explanation_id is None
    assert [u for u, _, _ in rows(month_store)] == [UNITS[0], UNITS[2]]  # the others are stored
    assert month_store.explanations(UNITS[1]) == []  # a failure is never stored as a result
    run = month_store.runs("label")[0]
    assert run.status == "failed" and run.summary["failures"][0]["unit_id"] == UNITS[1]


def test_a_failing_scorer_is_a_failed_row_not_a_stopped_run(month_store, scripted):
    def probs(prefix: str, candidates: list[str]) -> dict[str, float]:
        if " July" in prefix:
            raise LLMError("the scripted simulator is down for July")
        return {"9": 0.9} if prefix.endswith((" March\t", " June\t")) else {"0": 0.9}

    summary = label(month_store.path, explainer=scripted(probs=probs).spec)
    assert [r.status["correlation"] for r in summary.results] == ["ok", "ok", "failed"]
    assert not summary.failures  # explained and stored; only the score failed, with its reason
    assert [r.unit_id for r in summary.score_failures] == [UNITS[2]] and not summary.ok
    assert month_store.runs("label")[0].status == "failed"  # not reported as a plain success
    (exp,) = month_store.explanations(UNITS[2])
    (score,) = month_store.scores(exp.id)
    assert score.value is None and "down for July" in score.reason


def test_the_python_api_inside_a_running_event_loop(month_store, scripted):
    llm = scripted()

    async def notebook_cell():  # Jupyter runs cells inside an event loop
        synced = label(month_store.path, [UNITS[0]], explainer=llm.spec)
        awaited = await alabel(month_store.path, [UNITS[1]], explainer=llm.spec)
        return synced, awaited

    synced, awaited = asyncio.run(notebook_cell())
    assert synced.results[0].explanation == awaited.results[0].explanation == "months of the year"
    assert [u for u, _, _ in rows(month_store)] == UNITS[:2]


def test_bench_with_a_scripted_llm(tmp_path, scripted, char_tokenizer):
    from autointerp.bench.run import run_bench
    from autointerp.subject.model import SubjectModel

    digit = {"kind": "regex", "pattern": "\\d"}
    spec = [
        {"name": "digits", "explanation": "digits", "near_miss": "letters", "rule": digit},
        {"name": "x", "explanation": "the letter x", "rule": {"kind": "tokens", "tokens": ["x"]}},
    ]
    (tmp_path / "suite.json").write_text(json.dumps(spec))
    (tmp_path / "c.txt").write_text("In 1999 the tax was 12 dollars, not 13; xylophones cost 7. " * 40)
    no_forward = SimpleNamespace(cfg=SimpleNamespace(default_prepend_bos=True))  # synthetic units only
    subject = SubjectModel("tiny", no_forward, char_tokenizer())

    def probs(prefix: str, candidates: list[str]) -> dict[str, float]:
        return {"9": 0.9, "0": 0.1} if prefix[-2:-1].isdigit() else {"0": 0.9, "9": 0.1}

    llm = scripted(respond=lambda request: "digits", probs=probs)
    r = run_bench(
        tmp_path / "bench.db", suite=str(tmp_path / "suite.json"), methods=["top", "highlight"],
        explainer=llm.spec, tokens=1500, ctx=16, corpus=[str(tmp_path / "c.txt")], subject=subject,
    )  # fmt: skip
    assert not r.skipped_units and [u.name for u in r.units] == ["digits", "x"]
    methods = {m.method: m for m in r.methods}
    assert {"top", "highlight", "true", "distractor:negated", "distractor:other", "random"} <= set(methods)
    assert methods["top"].failures == 0 and methods["top"].stats["correlation"].n >= 1
    digits = r.units[0]
    assert digits.scores["true"]["correlation"] > 0.9 and digits.explanations["gen:top"] == "digits"
    assert Store(tmp_path / "bench.db").get_run(r.run_id).status == "complete"


def test_bench_meta_evaluates_a_yes_saying_judges_auc_when_its_balanced_accuracy_is_nan(
    tmp_path, scripted, char_tokenizer
):
    from autointerp.bench.run import run_bench
    from autointerp.subject.model import SubjectModel

    spec = [
        {
            "name": "digits",
            "explanation": "digits",
            "near_miss": "letters",
            "rule": {"kind": "regex", "pattern": "\\d"},
        }
    ]
    (tmp_path / "suite.json").write_text(json.dumps(spec))
    (tmp_path / "c.txt").write_text("In 1999 the tax was 12 dollars, not 13; xylophones cost 7. " * 40)
    no_forward = SimpleNamespace(cfg=SimpleNamespace(default_prepend_bos=True))
    subject = SubjectModel("tiny", no_forward, char_tokenizer())

    def probs(prefix: str, candidates: list[str]) -> dict[str, float]:
        if candidates == ["1", "0"]:  # the judge: "1" for every text, surer where the text has a digit
            query, so_far = prefix.rpartition("Explanation: ")[2].rsplit("Answer: [", 1)
            text = re.findall(r"^Example \d+: (.*)$", query, re.MULTILINE)[so_far.count(",")]
            return {"1": 0.9 if any(ch.isdigit() for ch in text) else 0.6, "0": 0.1}
        return {"9": 0.9, "0": 0.1} if prefix[-2:-1].isdigit() else {"0": 0.9, "9": 0.1}

    llm = scripted(respond=lambda request: "digits", probs=probs)
    r = run_bench(
        tmp_path / "bench.db", suite=str(tmp_path / "suite.json"), methods=["top"], explainer=llm.spec,
        scorers=["correlation", "detection"], tokens=1500, ctx=16, corpus=[str(tmp_path / "c.txt")],
        subject=subject,
    )  # fmt: skip
    (unit,) = r.units
    assert unit.scores["true"]["detection"] is None and unit.status["true"]["detection"] == "nan"
    assert unit.aucs["true"]["detection"] > 0.5  # its P("1") still ranks digit windows higher
    assert [m.scorer for m in r.meta.scorers] == ["correlation", "detection", "detection AUC"]
    auc = r.meta.scorers[2]
    assert auc.n_units == 1 and auc.mean_by_kind["true"] == unit.aucs["true"]["detection"]
    assert r.meta.scorers[1].n_units == 0  # no balanced accuracy to rank: nothing averaged in
