"""`label --batch` with the real openai / anthropic SDKs against a local replay of the batch endpoints.

The run submits the explanations, waits, collects them, submits the simulations that score them,
collects those, and records what a live run records (plus the batch id). Expired batches and failed
requests are resubmitted, nothing else; an unparsable answer is recorded as failed; an interrupt
between the provider's answer and our note of its id loses nothing and sends nothing twice.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from autointerp.cli import app
from autointerp.llm.base import ChatRequest
from autointerp.pipeline import label
from autointerp.store import Store
from tests.batch_replay import BatchReplay, months_answer

OPENAI, ANTHROPIC = "openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"


@pytest.fixture
def replay():
    server = BatchReplay()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-never-sent-anywhere")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


def run(store: Store, replay: BatchReplay, spec: str = OPENAI, **kwargs):  # noqa: ANN201 - LabelSummary
    base = replay.url + "/v1" if spec.startswith("openai") else replay.url
    # simulator mode `auto`: json under --batch (the replay's base_url would otherwise mean exact)
    return label(store.path, explainer=spec, base_url=base, batch_api=True, **kwargs)


def phases(replay: BatchReplay, store: Store, batch_id: str) -> set[str]:
    sub = next(b for b in store.batches() if b.provider_id == batch_id)
    return {r.phase for r in store.batch_requests(sub.id)}


@pytest.mark.parametrize("spec", [OPENAI, ANTHROPIC])
def test_submit_wait_collect_next_phase_and_record(month_store, replay, spec):
    first = run(month_store, replay, spec)
    assert [r.pending for r in first.results] == ["explanation"] * 3
    assert len(replay.submitted()) == 1 and len(replay.requests(replay.submitted()[0])) == 3
    assert month_store.get_run(first.run_id).status == "waiting"
    rows = month_store.batch_requests(month_store.batches()[0].id)
    assert {(r.unit_id, r.phase, r.candidate) for r in rows} == {
        (u.id, "explain", "highlight") for u in month_store.units()
    }

    waiting = run(month_store, replay, spec)  # still in progress: polled, nothing sent again
    assert len(replay.submitted()) == 1 and waiting.batch.waiting == 3 and not waiting.batch.submitted
    assert waiting.batch.open_batches == replay.submitted()

    replay.finish()
    second = run(month_store, replay, spec)  # explanations collected, simulations submitted
    assert second.batch.collected == 3 and [r.pending for r in second.results] == ["scores"] * 3
    sims = replay.submitted()[1]
    assert phases(replay, month_store, sims) == {"correlation"}
    n_examples = len(replay.requests(sims))
    assert n_examples >= 3 * 10  # every test and quantile window of every unit, in one batch
    assert month_store.explanations() == []  # an explanation is stored with its scores

    replay.finish()
    third = run(month_store, replay, spec)
    assert third.batch.done and not third.pending and third.ok
    assert month_store.get_run(third.run_id).status == "complete"
    for r in third.results:
        assert r.explanation == "months of the year" and r.scores["correlation"] > 0.9
        exp = month_store.get_explanation(r.explanation_id)
        assert exp.settings["batch_id"] == replay.submitted()[0]
        (score,) = month_store.scores(r.explanation_id)
        assert score.status == "ok" and score.details["batch_id"] == sims

    again = run(month_store, replay, spec)  # done: nothing submitted, nothing re-recorded
    assert all(r.skipped for r in again.results) and len(replay.submitted()) == 2


def test_batch_results_score_exactly_as_a_live_run(month_store, replay, scripted):
    def respond(request: ChatRequest) -> str:
        return months_answer({"messages": [m.model_dump() for m in request.messages]})

    live_llm = scripted("live", respond=respond, token_probs=False)
    live = label(month_store.path, explainer=live_llm.spec, simulator_mode="json")
    for _ in range(2):
        run(month_store, replay)
        replay.finish()
    batched = run(month_store, replay)
    assert [(r.explanation, r.scores) for r in batched.results] == [
        (r.explanation, r.scores) for r in live.results
    ]
    live_score = month_store.scores(live.results[0].explanation_id)[0]
    batch_score = month_store.scores(batched.results[0].explanation_id)[0]
    assert batch_score.details.pop("batch_id") and batch_score.details.pop("seconds") is not None
    live_score.details.pop("seconds")
    # what was spent differs by design: batch answers are read back from the store, a live run calls
    assert batch_score.details.pop("usage")["simulator"]["calls"] == 0
    assert live_score.details.pop("usage")["simulator"]["calls"] > 0
    assert batch_score.details == live_score.details
    assert (batch_score.simulator, batch_score.prompt) == (f"{OPENAI}#json", live_score.prompt)


def test_an_expired_batch_is_resubmitted_without_what_came_back(month_store, replay):
    run(month_store, replay)
    first = replay.submitted()[0]
    replay.finish(expire_after=1)
    summary = run(month_store, replay)
    assert summary.batch.collected == 1 and summary.batch.errored == 2
    resent = replay.requests(replay.submitted()[1])
    sent_first = replay.requests(first)
    # the two lost explanations again (same bodies), plus the simulations of the one that came back
    assert [b for _, b in resent if b in [b for _, b in sent_first[1:]]] == [b for _, b in sent_first[1:]]
    assert sent_first[0][1] not in [b for _, b in resent]
    assert [r.pending for r in summary.results].count("explanation") == 2
    assert {b.status for b in month_store.batches()} == {"expired", "submitted"}


def test_only_failed_requests_are_resubmitted(month_store, replay):
    run(month_store, replay, ANTHROPIC)
    sent = replay.requests(replay.submitted()[0])
    replay.finish(errored={1})
    summary = run(month_store, replay, ANTHROPIC)
    assert summary.batch.collected == 2 and summary.batch.errored == 1
    resent = [b for _, b in replay.requests(replay.submitted()[1])]
    explains = [b for b in resent if b in [s for _, s in sent]]
    assert explains == [sent[1][1]]  # the failed explanation only; the others are now being scored
    errored = [r for r in month_store.batch_requests(month_store.batches()[0].id) if r.status == "errored"]
    assert len(errored) == 1 and "api_error" in errored[0].error


def test_a_request_failing_every_time_is_recorded_failed(month_store, replay):
    for _ in range(3):
        run(month_store, replay, limit=1)
        replay.finish(errored={0})
    summary = run(month_store, replay, limit=1)
    assert len(replay.submitted()) == 3  # MAX_ATTEMPTS submissions, then no more
    (r,) = summary.results
    assert r.error and "failed: 500" in r.error and not r.pending


def test_an_unparsable_answer_is_recorded_failed_and_not_sent_again(month_store, replay):
    run(month_store, replay, limit=1)
    replay.finish()
    run(month_store, replay, limit=1)  # the simulations go out
    replay.finish(answer=lambda body: "I would rather not say.")
    run(month_store, replay, limit=1)  # no JSON list: the simulator's retry (temperature 0.7) goes out
    replay.finish(answer=lambda body: "I would rather not say.")
    summary = run(month_store, replay, limit=1)
    (r,) = summary.results
    assert r.status == {"correlation": "failed"} and not r.pending
    (score,) = month_store.scores(r.explanation_id)
    assert "no JSON list" in score.reason and score.details["batch_id"]
    n = len(replay.submitted())
    rerun = run(month_store, replay, limit=1).results[0]  # re-scored from the stored answers
    assert rerun.status == {"correlation": "failed"} and len(replay.submitted()) == n

    empty = run(month_store, replay, limit=1, methods=["top"])  # a new explanation, answered blank
    replay.finish(answer=lambda body: "   ")
    empty = run(month_store, replay, limit=1, methods=["top"])
    assert "holds no explanation" in empty.results[0].error
    assert run(month_store, replay, limit=1, methods=["top"]).results[0].error
    assert len(replay.submitted()) == n + 1  # recorded as failed: never resubmitted


def test_an_interrupt_after_submitting_loses_nothing_and_sends_nothing_twice(
    month_store, replay, monkeypatch
):
    real = Store.update_batch

    def crash(self, batch_id, **fields):  # noqa: ANN001, ANN202
        if fields.get("provider_id"):
            raise KeyboardInterrupt
        return real(self, batch_id, **fields)

    monkeypatch.setattr(Store, "update_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        run(month_store, replay)
    monkeypatch.setattr(Store, "update_batch", real)
    (sub,) = month_store.batches()
    assert sub.status == "preparing" and sub.provider_id is None
    summary = run(month_store, replay)  # finds it by its metadata, adopts it, sends nothing new
    assert len(replay.submitted()) == 1 and summary.batch.waiting == 3
    assert month_store.batches()[0].provider_id == replay.submitted()[0]


def test_batch_refuses_what_cannot_be_batched(month_store):
    def invoke(*args: str):  # noqa: ANN202
        return CliRunner().invoke(app, ["label", "--db", str(month_store.path), "--batch", *args])

    exact = invoke("--explainer", OPENAI, "--simulator-mode", "exact")
    assert exact.exit_code == 2 and "--simulator-mode json" in exact.output
    local = invoke("--explainer", "local:smollm2-135m")
    assert local.exit_code == 2 and "openai: or anthropic:" in local.output
    assert month_store.batches() == []


def test_a_v10_store_migrates_to_batch_tables(tmp_path):
    import sqlite_utils

    from autointerp.store import MIGRATIONS, SCHEMA_VERSION

    db = sqlite_utils.Database(tmp_path / "old.db")
    for v in range(10):
        MIGRATIONS[v](db)
    db["meta"].insert({"key": "schema_version", "value": "10"}, pk="key")
    db.conn.commit()
    store = Store(tmp_path / "old.db")
    assert store.schema_version() == SCHEMA_VERSION == 11
    assert {"llm_batches", "llm_batch_requests"} <= set(store.db.table_names())
    assert store.open_batches() == [] and store.latest_batch_request("k") is None
    assert json.loads(json.dumps([c.name for c in store.db["llm_batch_requests"].columns]))[:3] == [
        "custom_id",
        "batch",
        "key",
    ]


def test_the_cli_submits_then_says_to_run_it_again(month_store, replay):
    args = ["label", "--db", str(month_store.path), "--batch", "--explainer", OPENAI,
            "--base-url", replay.url + "/v1", "--simulator-mode", "json"]  # fmt: skip
    first = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert first.exit_code == 0, first.output
    assert f"submitted 3 requests to {OPENAI} as {replay.submitted()[0]}" in first.output
    assert "3 unit(s) wait for batch results; run the same command later" in first.output
    replay.finish()
    second = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert "batch: 3 results collected (120+12 tokens) · submitted 36 requests" in second.output


def test_a_phase_larger_than_the_providers_limit_goes_out_in_several_batches(
    month_store, replay, monkeypatch
):
    from autointerp.llm import batch

    monkeypatch.setitem(batch.LIMITS, "openai", (2, 10**9))
    summary = run(month_store, replay)
    assert [s.requests for s in summary.batch.submitted] == [2, 1]
    assert [len(replay.requests(b)) for b in replay.submitted()] == [2, 1]
    replay.finish()
    assert run(month_store, replay).batch.collected == 3


def test_an_unreachable_batch_endpoint_is_one_sentence_and_nothing_is_lost(month_store, replay):
    replay.close()  # the provider is unreachable
    args = ["label", "--db", str(month_store.path), "--batch", "--explainer", OPENAI,
            "--base-url", replay.url + "/v1", "--simulator-mode", "json", "--retries", "0"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2 and "uploading the batch file failed" in out.output
    assert "Traceback" not in out.output
    (sub,) = month_store.batches()
    assert sub.status == "preparing"  # did it reach the provider? The next run looks first
    back = BatchReplay()
    try:
        summary = run(month_store, back)
    finally:
        back.close()
    assert [b.status for b in month_store.batches()] == ["lost", "submitted"]
    assert [s.requests for s in summary.batch.submitted] == [3]
    assert month_store.batch_attempts(month_store.batch_requests(sub.id)[0].key) == 0


def seeded_answer(body: dict) -> str:
    """Explanations by seed (0: "cats", 1: "months of the year"); simulations that know the months only
    when the explanation says months (otherwise all 0: an undefined correlation)."""
    answer = months_answer(body)
    if not answer.startswith("["):
        return "months of the year" if body.get("seed") == 1 else "cats"
    last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return answer if "Explanation: months" in last else json.dumps([0] * len(json.loads(answer)))


def test_best_of_candidates_and_their_validation_go_out_as_phases(month_store, replay):
    replay.answer = seeded_answer
    kinds = []
    for _ in range(3):
        run(month_store, replay, limit=1, best_of=2)
        rows = [r for b in month_store.batches()[len(kinds) :] for r in month_store.batch_requests(b.id)]
        kinds.append({(r.phase, r.candidate.split("#")[-1] if r.phase == "explain" else "") for r in rows})
        replay.finish()
    assert kinds == [{("explain", "0"), ("explain", "1")}, {("validation", "")}, {("correlation", "")}]
    summary = run(month_store, replay, limit=1, best_of=2)
    (r,) = summary.results
    assert r.explanation == "months of the year" and r.scores["correlation"] > 0.9
    exp = month_store.get_explanation(r.explanation_id)
    assert exp.settings["candidates"] == ["cats", "months of the year"]
    assert len(exp.settings["batch_id"]) == 2  # the candidates' batch and their validation's
