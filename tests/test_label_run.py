"""A label run on a scripted LLM: dead units, errors and Ctrl-C end the run's row, unit selection,
honest token counts, failed scores, and progress when the output is not a terminal."""

from __future__ import annotations

import io
import sqlite3
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

from autointerp import label
from autointerp.cli import app, usage_line
from autointerp.errors import UserError
from autointerp.llm.base import LLMError, Usage
from autointerp.pipeline import LabelSummary, RoleUsage, select_units
from autointerp.progress import CountProgress
from autointerp.store import Store
from autointerp.types import Context, Example, Unit, UnitRef, UnitStats
from tests.conftest import months_probs

HOOK = "blocks.0.mlp.hook_post"
UNITS = [f"m/{HOOK}/{i}" for i in range(3)]
DEAD = f"m/{HOOK}/7"


def add_unit(store: Store, index: int, frac: float, hook: str = HOOK, top: bool = True) -> str:
    """A unit firing on `frac` of 1000 tokens (0: a dead latent whose top window peaks at 0)."""
    stats = UnitStats(
        n_tokens=1000, max=4.0 * (frac > 0), mean=0.0, std=0.0, frac_firing=frac, fire_threshold=0.0,
        hist_edges=[0.0, 1.0], hist_counts=[1000],
    )  # fmt: skip
    unit = Unit(ref=UnitRef(model="m", hook=hook, index=index), run_id="r1", stats=stats)
    ctx = Context(id=f"dead{index}", token_ids=[0, 1, 2], tokens=["a", "b", "c"])
    examples = [Example(unit_id=unit.id, kind="top", rank=0, context=ctx, acts=[0.0] * 3)] if top else []
    store.write_units([unit], examples)
    return unit.id


def rows(store: Store) -> list[tuple[str, str]]:
    """(unit, scorer) of every stored score: a duplicate would show up twice."""
    return sorted((x.unit_id, x.scorer) for x in store.scores())


def test_a_dead_unit_among_live_ones_is_skipped_with_its_reason(month_store, scripted):
    add_unit(month_store, 7, 0.0)
    llm = scripted()
    summary = label(month_store.path, [UNITS[0], DEAD, UNITS[1], UNITS[0]], explainer=llm.spec, concurrency=3)
    assert [r.unit_id for r in summary.results] == [UNITS[0], DEAD, UNITS[1]]  # the repeat counted once
    (dead,) = summary.unlabellable
    assert dead.unit_id == DEAD and "never fired" in dead.skip_reason and not summary.failures
    assert rows(month_store) == [(UNITS[0], "correlation"), (UNITS[1], "correlation")]
    run = month_store.runs("label")[0]
    assert run.status == "complete" and "never fired" in run.summary["unlabellable"][DEAD]

    out = CliRunner().invoke(
        app,
        ["label", "--db", str(month_store.path), "--explainer", llm.spec, "--unit", DEAD, "--unit", UNITS[2]],
    )
    flat = " ".join(out.output.split())
    assert out.exit_code == 0, out.output
    assert "1 done (0 already in the store)" in flat and "1 skipped: never fired" in flat
    assert rows(month_store) == [(u, "correlation") for u in UNITS]


def test_an_exception_mid_run_ends_the_run_failed_and_the_rerun_completes(month_store, scripted, monkeypatch):
    llm = scripted()
    put = Store.put_explanation
    calls = []

    def disk_full(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return put(self, *args, **kwargs)

    monkeypatch.setattr(Store, "put_explanation", disk_full)
    with pytest.raises(sqlite3.OperationalError):
        label(month_store.path, explainer=llm.spec, concurrency=1)
    (run,) = month_store.runs("label")
    assert run.status == "failed" and "disk is full" in run.summary["error"]
    assert run.finished_at and rows(month_store) == [(UNITS[0], "correlation")]
    monkeypatch.setattr(Store, "put_explanation", put)
    summary = label(month_store.path, explainer=llm.spec, concurrency=1)
    assert [r.skipped for r in summary.results] == [True, False, False]
    assert rows(month_store) == [(u, "correlation") for u in UNITS]
    assert month_store.runs("label")[0].status == "complete"


def selection_store(tmp_path) -> Store:
    from tests.conftest import build_month_store

    store = build_month_store(tmp_path / "sel.db", n_units=1)  # unit 0 fires on 5%: 50 tokens
    add_unit(store, 1, 0.002)  # 2 tokens
    add_unit(store, 2, 0.0)  # dead
    add_unit(store, 3, 0.010)  # 10 tokens
    add_unit(store, 0, 0.001, hook="blocks.1.hook_resid_post")  # 1 token, another hook
    return store


def test_unit_selection_by_hook_count_and_order(tmp_path):
    store = selection_store(tmp_path)
    ids = [f"m/{HOOK}/{i}" for i in range(4)]
    other = "m/blocks.1.hook_resid_post/0"
    assert select_units(store) == [*ids, other]  # index order: as recorded
    assert select_units(store, hooks=[HOOK], order="selective") == [ids[1], ids[3], ids[0]]  # no dead one
    assert select_units(store, min_count=10) == [ids[0], ids[3]]
    assert select_units(store, order="selective", limit=2) == [other, ids[1]]
    shuffled = select_units(store, order="random")
    assert sorted(shuffled) == sorted(select_units(store)) and shuffled == select_units(store, order="random")
    assert shuffled != select_units(store, order="random", seed=1)
    assert select_units(store, [ids[3], ids[3], ids[0]], order="selective") == [ids[3], ids[0]]
    with pytest.raises(
        UserError, match="No unit is recorded at hook 'blocks.9.typo'.*blocks.0.mlp.hook_post"
    ):
        select_units(store, hooks=["blocks.9.typo"])
    with pytest.raises(UserError, match="--min-count"):
        select_units(store, min_count=100)
    for args in (["--order", "bogus"], ["--limit", "0"], ["--min-count", "-1"], ["--hook", "nope"]):
        out = CliRunner().invoke(
            app, ["label", "--db", str(store.path), "--explainer", "scripted:none", *args]
        )
        flat = " ".join(out.output.split())
        assert out.exit_code == 2 and flat.startswith("error:") and flat.count(". ") == 0, (args, flat)


def test_the_cli_labels_the_selected_units(tmp_path, scripted):
    store = selection_store(tmp_path)
    llm = scripted()
    args = ["--hook", HOOK, "--min-count", "2", "--order", "selective", "--limit", "2"]
    out = CliRunner().invoke(app, ["label", "--db", str(store.path), "--explainer", llm.spec, *args])
    assert out.exit_code == 0, out.output
    run = store.runs("label")[0]  # the rarest-firing ones with 2+ tokens; their windows never fired
    assert sorted(run.summary["unlabellable"]) == [f"m/{HOOK}/1", f"m/{HOOK}/3"]


def test_summary_tokens_equal_the_llm_calls_rows_and_cache_hits_are_apart(month_store, scripted):
    llm = scripted()  # explainer and simulator: one model, metered per role
    summary = label(month_store.path, explainer=llm.spec, scorers=["correlation", "detection"])
    calls = list(month_store.db["llm_calls"].rows)
    assert summary.prompt_tokens == sum(c["prompt_tokens"] for c in calls) > 0
    assert summary.completion_tokens == sum(c["completion_tokens"] for c in calls) > 0
    assert sum(u.calls for u in summary.usage.values()) == len(calls)
    sim = summary.usage["simulator"]
    assert sim.prompt_tokens > summary.usage["explainer"].prompt_tokens > 0  # the simulator is counted
    assert summary.cost_usd is None and "cost" not in usage_line(summary)  # no price known

    month_store.db["scores"].delete_where()  # force a rerun, served by the cache
    month_store.db["explanations"].delete_where()
    again = label(month_store.path, explainer=llm.spec, scorers=["correlation", "detection"])
    asked = sum(u.calls + u.cached_calls for u in summary.usage.values())
    assert again.prompt_tokens == 0 and again.usage["simulator"].cached_calls == sim.calls + sim.cached_calls
    assert f"cache hits: {asked:,} calls" in usage_line(again)


def test_cost_is_summed_where_known():
    u = RoleUsage()
    for cost in (0.01, None, 0.02):
        u.add(Usage(prompt_tokens=10, completion_tokens=2, cost_usd=cost))
    u.add(Usage(prompt_tokens=10, cached=True, cost_usd=5.0))  # a cache hit costs nothing
    assert (u.calls, u.prompt_tokens, u.unpriced_calls, u.cached_calls) == (3, 30, 1, 1)
    line = usage_line(LabelSummary(run_id="r", results=[], seconds=0, usage={"explainer": u}))
    assert "explainer 30 + 6" in line and "cost $0.0300 (+ 1 calls without a price)" in line


def test_a_unit_whose_every_score_failed_fails_the_run(month_store, scripted):
    def probs(prefix: str, candidates: list[str]) -> dict[str, float]:
        if " July" in prefix:
            raise LLMError("401 Unauthorized")
        return {"9": 0.9} if prefix.endswith((" March\t", " June\t")) else {"0": 0.9}

    llm = scripted(probs=probs)
    out = CliRunner().invoke(app, ["label", "--db", str(month_store.path), "--explainer", llm.spec])
    flat = " ".join(out.output.split())
    assert out.exit_code == 1, out.output
    assert "2 ok · 0 nan (undefined) · 1 failed" in flat and "1 unit(s) with every score failed" in flat
    run = month_store.runs("label")[0]
    assert run.status == "failed" and run.summary["score_failures"] == [UNITS[2]]
    assert run.summary["scores"] == {"ok": 2, "nan": 0, "failed": 1}


def test_progress_prints_plain_lines_when_not_a_terminal():
    buf = io.StringIO()
    with CountProgress(Console(file=buf, width=200), "labelling", total=4, every=0.05) as bar:
        bar.advance("x")
        bar.advance("y", failed=True)
        time.sleep(0.3)
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 3 and "\x1b" not in buf.getvalue()  # plain text, no control codes
    assert lines[0].startswith("labelling: 2/4 units (50%) · 1 failed · elapsed 0:00:00 · ETA 0:00:0")
    assert lines[-1].startswith("labelling: 2/4 units (50%)")


def test_label_progress_in_a_pipe_has_a_total(month_store, scripted):
    out = CliRunner().invoke(app, ["label", "--db", str(month_store.path), "--explainer", scripted().spec])
    assert out.exit_code == 0 and "labelling: 3/3 units (100%)" in out.output


@pytest.mark.parametrize("error", [RuntimeError("out of memory"), KeyboardInterrupt()])
def test_a_failing_record_ends_its_run_row_failed_and_the_rerun_completes(tmp_path, char_tokenizer, error):
    from types import SimpleNamespace

    from autointerp.bench.synthetic import SyntheticUnit, TokensRule, synthetic_sources
    from autointerp.subject.model import SubjectModel
    from autointerp.subject.recorder import Recorder
    from autointerp.types import RecordSettings

    subject = SubjectModel(
        "tiny", SimpleNamespace(cfg=SimpleNamespace(default_prepend_bos=True)), char_tokenizer()
    )
    (tmp_path / "c.txt").write_text("a cat sat on a mat. " * 20)
    units = [SyntheticUnit(name="a", explanation="the letter a", rule=TokensRule(tokens=["a"]))]
    s = RecordSettings(
        model="tiny",
        hooks=[units[0].hook],
        corpus=[str(tmp_path / "c.txt")],
        ctx=8,
        max_tokens=160,
        batch_size=4,
    )
    store = Store(tmp_path / "x.db")

    def fail(done: int, total: int) -> None:
        if done > 40:
            raise error

    with pytest.raises(type(error)):
        Recorder(subject, s, synthetic_sources(subject.token_strs, units)).run(store, fail)
    (run,) = store.runs("record")
    assert run.status == "failed" and run.finished_at and store.count_units() == 0
    assert run.summary["error"] == ("interrupted" if isinstance(error, KeyboardInterrupt) else repr(error))
    Recorder(subject, s, synthetic_sources(subject.token_strs, units)).run(store)
    assert store.runs("record")[0].status == "complete" and store.count_units() == 1


def test_best_of_keeps_the_candidate_that_simulates_best(month_store, scripted):
    def respond(request) -> str:  # noqa: ANN001 - ChatRequest
        return ["cats", "months of the year", "dates"][request.seed]

    def probs(prefix: str, candidates: list[str]) -> dict[str, float]:  # knows the months if told so
        return months_probs(prefix, candidates) if "months" in prefix else {"0": 1.0}

    llm = scripted(respond=respond, probs=probs)
    summary = label(month_store.path, ["m/blocks.0.mlp.hook_post/1"], explainer=llm.spec, best_of=3)
    (r,) = summary.results
    assert r.explanation == "months of the year"
    exp = month_store.get_explanation(r.explanation_id)
    assert exp.settings["candidates"] == ["cats", "months of the year", "dates"]
    assert exp.settings["validation_correlation"][1] > 0.9
    assert "batch_id" not in exp.settings


def test_per_quantile_zero_simulates_no_quantile_windows(month_store, scripted):
    def calls(*args: str) -> tuple[int, dict]:
        llm = scripted(name=f"q{len(args)}")
        out = CliRunner().invoke(
            app, ["label", "--db", str(month_store.path), "--explainer", llm.spec, "--unit", UNITS[0], *args]
        )
        assert out.exit_code == 0, out.output
        (score,) = month_store.scores(month_store.explanations(UNITS[0])[-1].id)
        return len(llm.requests), score.details["per_quantile"]

    with_q, per_q = calls()
    without, none = calls("--per-quantile", "0")
    assert per_q and none == {}  # the per-quantile correlations are the only thing dropped
    assert without < with_q
