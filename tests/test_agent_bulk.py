"""`label --methods agent` and `bench --methods ...,agent`: an investigation per unit, resumable like any
method, scored by the same scorers on the same held-out examples (scripted LLM, synthetic months unit)."""

from __future__ import annotations

import json

import pytest

from autointerp.agent.bulk import AgentBudget
from autointerp.llm.base import ChatRequest, LLMError
from autointerp.pipeline import label
from autointerp.store import Store
from tests.test_agent import UNIT, WordTokenizer, act, invoke


@pytest.fixture
def synth_store(tmp_path, monkeypatch) -> Store:
    from tests.conftest import build_month_store

    monkeypatch.setattr("autointerp.agent.reader.load_tokenizer", lambda model: WordTokenizer())
    return build_month_store(tmp_path / "synth.db", n_units=1, hook="synthetic.months")


def is_agent(req: ChatRequest) -> bool:
    return "You investigate one unit" in req.messages[0].content


def turn(req: ChatRequest) -> int:
    return sum(m.role == "assistant" for m in req.messages)


def scripted_agent(scripted, actions: list, name: str = "agent"):  # noqa: ANN001, ANN201
    """A scripted LLM: the agent's turn i answers actions[i] (an exception is raised); the one-shot
    explainers answer "months of the year"."""

    def respond(req: ChatRequest) -> str:
        if not is_agent(req):
            return "months of the year"
        a = actions[min(turn(req), len(actions) - 1)]
        if isinstance(a, BaseException):
            raise a
        return a

    return scripted(name, respond=respond)


def agent_calls(llm) -> int:  # noqa: ANN001
    return sum(isinstance(r, ChatRequest) and is_agent(r) for r in llm.requests)


FREE = AgentBudget(agent_mode="free")  # the free loop: the scripted LLM answers JSON actions
FINISHING = [
    act("examples", kind="top", n=3),
    act("search", pattern="March|June"),
    act("finish", explanation="names of months", supporting=["e1", "e2"]),
]


def test_label_methods_agent_stores_method_agent_scored_on_the_same_test_set_as_highlight(
    synth_store, scripted
):
    llm = scripted_agent(scripted, FINISHING)
    summary = label(
        synth_store.path,
        [UNIT],
        explainer=llm.spec,
        methods=["highlight", "agent"],
        concurrency=1,
        agent=FREE,
    )
    assert summary.ok, [r.error for r in summary.results]
    by = {r.method: r for r in summary.results}
    assert by["agent"].explanation == "names of months" and by["agent"].scores["correlation"] > 0.9
    store = Store(synth_store.path)
    (exp,) = store.explanations(UNIT, method="agent")
    (hl,) = store.explanations(UNIT, method="highlight")
    assert exp.id == by["agent"].explanation_id and exp.settings["steps"] == 3
    (agent_score,), (hl_score,) = store.scores(exp.id), store.scores(hl.id)
    assert agent_score.details["examples"] == hl_score.details["examples"]  # the same held-out windows
    assert agent_score.run_id == summary.run_id == exp.run_id
    (inv,) = store.investigations(UNIT)
    assert inv.status == "finished" and inv.explanation_id == exp.id and inv.settings["max_steps"] == 16
    assert summary.usage["explainer"].prompt_tokens > 0  # the agent's tokens are counted as the explainer's


def test_an_interrupted_agent_label_run_resumes_its_investigation_and_duplicates_nothing(
    synth_store, scripted
):
    actions = [act("examples", n=2), LLMError("server went away"), FINISHING[2]]
    llm = scripted_agent(scripted, actions)
    first = label(synth_store.path, [UNIT], explainer=llm.spec, methods=["agent"], agent=FREE)
    (r,) = first.results
    assert not first.ok and "failed" in r.error and "server went away" in r.error
    store = Store(synth_store.path)
    (inv,) = store.investigations(UNIT)
    assert inv.status == "failed" and [e.id for e in store.experiments(inv.id)] == ["e1"]
    actions[1] = act("activations", texts=["We met in May."])  # the server is back
    second = label(synth_store.path, [UNIT], explainer=llm.spec, methods=["agent"], agent=FREE)
    assert second.ok and second.results[0].explanation == "names of months"
    (again,) = store.investigations(UNIT)  # the same investigation, continued
    assert again.id == inv.id and again.status == "finished"
    assert [e.id for e in store.experiments(inv.id)] == ["e1", "e2", "e3"]
    assert len(store.explanations(UNIT, method="agent")) == 1
    calls = agent_calls(llm)
    third = label(synth_store.path, [UNIT], explainer=llm.spec, methods=["agent"], agent=FREE)
    assert third.results[0].skipped and third.results[0].explanation == "names of months"
    assert agent_calls(llm) == calls and len(store.investigations(UNIT)) == 1  # nothing ran again


def test_an_exhausted_investigation_is_reported_again_without_new_calls(synth_store, scripted):
    llm = scripted("agent", respond=lambda req: act("activations", texts=[f"turn {len(req.messages)}"]))
    budget = AgentBudget(max_steps=2, agent_mode="free")
    first = label(synth_store.path, [UNIT], explainer=llm.spec, methods=["agent"], agent=budget)
    assert "exhausted" in first.results[0].error and "step budget (2)" in first.results[0].error
    calls = len(llm.requests)
    again = label(synth_store.path, [UNIT], explainer=llm.spec, methods=["agent"], agent=budget)
    assert again.results[0].error == first.results[0].error and len(llm.requests) == calls
    # a larger budget is another investigation, not a resumed one
    more = label(
        synth_store.path,
        [UNIT],
        explainer=llm.spec,
        methods=["agent"],
        agent=AgentBudget(max_steps=3, agent_mode="free"),
    )
    assert (
        "step budget (3)" in more.results[0].error and len(Store(synth_store.path).investigations(UNIT)) == 2
    )


def test_a_finished_investigation_whose_scores_failed_is_scored_again(synth_store, scripted):
    llm = scripted_agent(scripted, FINISHING)
    store = Store(synth_store.path)
    label(synth_store.path, [UNIT], explainer=llm.spec, methods=["agent"], agent=FREE)
    (inv,) = store.investigations(UNIT)
    store.db.execute("DELETE FROM scores WHERE explanation_id = ?", [inv.explanation_id])
    store.db.conn.commit()
    calls = agent_calls(llm)
    again = label(synth_store.path, [UNIT], explainer=llm.spec, methods=["agent"], agent=FREE)
    assert again.ok and not again.results[0].skipped and again.results[0].scores["correlation"] > 0.9
    assert agent_calls(llm) == calls  # scored again, not investigated again
    assert len(store.scores(inv.explanation_id)) == 1 and len(store.investigations(UNIT)) == 1
    # after a scoring failure the row said `failed`: scored again, it is `finished`
    store.db.execute("UPDATE investigations SET status = 'failed' WHERE id = ?", [inv.id])
    store.db.execute("DELETE FROM scores WHERE explanation_id = ?", [inv.explanation_id])
    store.db.conn.commit()
    label(synth_store.path, [UNIT], explainer=llm.spec, methods=["agent"], agent=FREE)
    assert store.get_investigation(inv.id).status == "finished" and agent_calls(llm) == calls


def test_label_command_with_methods_agent(synth_store, scripted):
    llm = scripted_agent(scripted, FINISHING)
    res = invoke(
        "label", "--db", synth_store.path, "--unit", UNIT, "--methods", "agent", "--explainer", llm.spec,
        "--agent-mode", "free",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "agent" in out and "names of months" in out
    res = invoke("label", "--db", synth_store.path, "--methods", "agent,vibes", "--explainer", llm.spec)
    assert res.exit_code == 2 and "vibes" in res.output
    res = invoke("label", "--db", synth_store.path, "--methods", "agent", "--agent-steps", 0)
    assert res.exit_code == 2 and "agent-steps" in res.output


def test_bench_compares_highlight_and_agent_on_the_same_units(
    tmp_path, char_tokenizer, monkeypatch, scripted
):
    from tests.test_bench import tiny_bench

    monkeypatch.setattr("autointerp.agent.reader.load_tokenizer", lambda model: char_tokenizer())
    llm = scripted_agent(
        scripted,
        [act("search", pattern="a"), act("finish", explanation="the letter a", supporting=["e1"])],
        name="bench",
    )
    r = tiny_bench(
        tmp_path, char_tokenizer, monkeypatch, llm.spec, methods=["highlight", "agent"], agent_mode="free"
    )
    rows = {m.method: m for m in r.methods}
    assert {"highlight", "agent", "true"} <= set(rows)
    stat = rows["agent"].stats["correlation"]  # the scripted simulator knows only months: nan
    assert rows["agent"].failures == 0 and stat.n + stat.n_nan == len(r.units) == 2
    assert all(u.explanations["gen:agent"] == "the letter a" for u in r.units)
    assert all(u.match["agent"].similarity is not None for u in r.units)  # matched against the truth
    assert rows["agent"].match_share is not None
    assert rows["agent"].prompt_tokens > 0 and rows["agent"].seconds > 0
    again = tiny_bench(
        tmp_path, char_tokenizer, monkeypatch, llm.spec, methods=["highlight", "agent"], agent_mode="free"
    )
    assert {m.method: m for m in again.methods}["agent"].resumed == 2  # stored: nothing investigated again
    assert json.loads(again.model_dump_json())["settings"]["agent_steps"] == 16


def test_a_unit_whose_reader_cannot_be_built_fails_alone(tmp_path, monkeypatch, scripted):
    from tests.conftest import build_month_store

    monkeypatch.setattr("autointerp.agent.reader.load_tokenizer", lambda model: WordTokenizer())
    store = build_month_store(tmp_path / "nosuch.db", n_units=1, hook="synthetic.nosuch")
    llm = scripted_agent(scripted, FINISHING)
    summary = label(
        store.path, None, explainer=llm.spec, methods=["highlight", "agent"], concurrency=1, agent=FREE
    )
    by = {r.method: r for r in summary.results}
    assert (
        not summary.ok and "does not define" in by["agent"].error and "--synthetic FILE" in by["agent"].error
    )
    assert by["highlight"].explanation == "months of the year"  # the other method of the unit ran
    assert agent_calls(llm) == 0 and Store(store.path).investigations() == []


def test_bench_command_refuses_an_unknown_method_beside_agent_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr("autointerp.cli.require_local", lambda *a, **k: None)
    res = invoke("bench", "--db", tmp_path / "b.db", "--methods", "highlight,agent,vibes")
    assert res.exit_code == 2 and "vibes" in res.output and not (tmp_path / "b.db").exists()
