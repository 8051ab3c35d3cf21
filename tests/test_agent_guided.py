"""The guided investigation (agent/guided.py): the code drives hypotheses -> scores -> one revision, the
scripted LLM writes plain text only, on a synthetic months unit (no model)."""

# ruff: noqa: F811 - the fixtures synth_store and reader come from tests/test_agent.py

from __future__ import annotations

import pytest

from autointerp.agent.guided import parse_hypotheses
from autointerp.agent.loop import AgentSettings, investigate, resolve_mode
from autointerp.llm.base import ChatRequest, LLMError
from autointerp.sampling import SampleSettings, sample_unit
from autointerp.store import Store
from tests.conftest import months_probs
from tests.test_agent import UNIT, invoke, reader, synth_store  # noqa: F401 - fixtures

PROPOSED = (
    "1. words after a preposition\n2. the word cat\n3. gemma-3-270m/synthetic.months/0\n"
    "4. words after a preposition"
)


def stage(req: ChatRequest) -> str:
    last = req.messages[-1].content
    if "What kind of word" in last:
        return "name"
    if "better hypothesis" in last:
        return "revise"
    if "different hypotheses" in last or "one per line" in last:
        return "propose"
    return "highlight" if "What does the neuron respond to?" in last else "?"


def hypothesis_probs(prefix: str, candidates: list[str]) -> dict[str, float]:
    """A simulator that follows the explanation: months -> the months; "cat" -> ' cat'; else nothing."""
    explanation = prefix.rpartition("Explanation: ")[2].partition("\n")[0].lower()
    if "month" in explanation:
        return months_probs(prefix, candidates)
    if "cat" in explanation and prefix.endswith(" cat\t"):
        return {"9": 0.9, "0": 0.1}
    if "preposition" in explanation and prefix.endswith((" on\t", " by\t")):
        return {"9": 0.9, "0": 0.1}
    return {"0": 0.9, "9": 0.1}


def guided_llm(scripted, answers: dict[str, list], name: str = "guide"):  # noqa: ANN001, ANN201
    """Scripted answers per stage (popped in order; an exception is raised), the rest "?"."""

    def respond(req: ChatRequest) -> str:
        queue = answers.get(stage(req), [])
        a = queue.pop(0) if queue else "?"
        if isinstance(a, BaseException):
            raise a
        return a

    return scripted(name, respond=respond, probs=hypothesis_probs)


def settings(llm, **kw) -> AgentSettings:  # noqa: ANN001
    return AgentSettings(agent=llm.spec, **kw)


def test_auto_mode_is_guided_for_local_and_scripted_and_free_for_tool_backends():
    def mode(spec: str, how: str = "investigate") -> str:
        return resolve_mode(AgentSettings(agent=spec), how).agent_mode

    assert mode("local:qwen2.5-coder-1.5b") == mode("scripted:x") == "guided"
    assert mode("openai:gpt-4o") == mode("anthropic:claude") == "free"
    assert mode("scripted:x", "chat") == "free"  # a conversation is always the free loop
    assert resolve_mode(AgentSettings(agent="scripted:x", agent_mode="free")).agent_mode == "free"


def test_parse_hypotheses_keeps_short_distinct_lines_and_drops_ids_examples_and_prose():
    text = (
        "Here are three hypotheses:\n"
        "1. Names of months.\n"
        "- names of months\n"
        '2) "dates"\n'
        "Hypothesis 3: the word [[ March]] in text\n"
        "m/synthetic.months/0\n"
        '{"tool": "finish"}\n'
        "\n"
        "this line is far too long to be a short hypothesis about what a neuron responds to\n"
        "month names after in\n"
    )
    assert parse_hypotheses(text, 3) == ["Names of months", "dates", "month names after in"]
    assert parse_hypotheses(text, 1) == ["Names of months"]
    # a quote that belongs to the hypothesis stays (only a whole quoted line is unquoted)
    assert parse_hypotheses('periods right after "self"\n"dots"', 3) == ['periods right after "self"', "dots"]
    assert parse_hypotheses("", 3) == parse_hypotheses("gemma/synthetic.x/0\n[[x]]", 3) == []


def test_usual_context_is_a_token_before_most_firing_ones_spaces_stripped():
    from autointerp.agent.guided import usual_context
    from autointerp.agent.tools import TokenCount, TokensResult

    def tr(firing: dict, before: dict) -> TokensResult:
        def tc(d: dict) -> list:
            return [TokenCount(token=t, count=n) for t, n in d.items()]

        return TokensResult(n_windows=5, firing=tc(firing), before=tc(before))

    assert usual_context(tr({".": 26}, {"self": 16, " self": 10})) == "self"
    assert usual_context(tr({"1": 10, "2": 6}, {"(": 7, " (": 4, "5": 5})) == "("  # 11 of 16
    assert usual_context(tr({"1": 10, "2": 6}, {"(": 7, "5": 9})) is None  # none before 60%
    assert usual_context(tr({"def": 17}, {"    ": 17})) is None  # indentation is no context


def test_guided_happy_path_scores_candidates_revises_and_finishes_with_the_best(
    synth_store, reader, scripted
):
    llm = guided_llm(
        scripted,
        {
            "name": ["words"],
            "highlight": ["the word cat"],
            "propose": [PROPOSED],
            "revise": ["names of months"],
        },
    )
    seen = []
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader, on_step=seen.append)
    inv, exps = out.investigation, out.experiments
    assert [e.tool for e in exps] == [
        "examples",
        "tokens",
        "name",
        "propose",
        "highlight",
        "score",  # the highlight candidate first
        "score",
        "score",
        "revise",
        "score",
        "finish",
    ]
    assert [e.id for e in seen] == [f"e{i}" for i in range(1, 12)] and not any(e.error for e in exps)
    assert exps[1].result["firing"] == [
        {"token": " March", "count": 6, "mean": 3.5}
    ]  # the 6 explain-split top windows
    assert exps[2].result["hypotheses"] == ["words"]  # no token comes before most ' March': no context
    # the id line and the duplicate were dropped; highlight's "the word cat" is also proposed: scored once
    assert exps[3].result["hypotheses"] == ["words after a preposition", "the word cat"]
    assert [e.arguments["explanation"] for e in exps if e.tool == "score"] == [
        "the word cat",
        "words",
        "words after a preposition",
        "names of months",
    ]
    assert exps[6].result["correlation"] is None  # "words" predicts nothing: undefined, never the best
    # the revision saw the best so far with its misses: ' March' fired, predicted low
    revise_req = next(r for r in llm.requests if isinstance(r, ChatRequest) and stage(r) == "revise")
    assert "' March' x" in revise_req.messages[-1].content.split("predicted nothing:")[1]
    assert exps[7].result["missed"][0]["token"] == " March"
    # finished with the highest-scoring hypothesis, citing its score
    assert inv.status == "finished" and inv.explanation == "names of months"
    assert exps[9].result["correlation"] > 0.9 > exps[5].result["correlation"]
    assert inv.evidence["supporting"] == ["e1", "e2", "e9", "e10"]
    assert inv.prompt == "agent-guided@2" and inv.steps == 11
    assert inv.prompt_tokens > 0 and inv.completion_tokens > 0
    assert all(not e.action for e in exps if e.tool in ("examples", "tokens", "score", "finish"))
    # every LLM request was plain text: no tools, no JSON action format
    chats = [r for r in llm.requests if isinstance(r, ChatRequest)]
    assert len(chats) == 4 and all(r.tools is None and "JSON" not in r.messages[0].content for r in chats)
    store = Store(synth_store.path)
    (exp,) = store.explanations(UNIT, method="agent")
    assert exp.text == "names of months" and exp.prompt == "agent-guided@2"
    assert exp.settings["agent_mode"] == "guided" and exp.settings["agent_settings"]["hypotheses"] == 3
    (score,) = store.scores(exp.id)
    assert score.value > 0.9 and score.details["examples"] == [
        [e.kind, e.rank] for e in sample_unit(store, UNIT, SampleSettings()).test
    ]
    assert [e.tool for e in store.experiments(inv.id)] == [e.tool for e in exps]


def test_guided_never_reads_a_test_split_example(synth_store, reader, scripted):
    from autointerp.agent.tools import Toolbox

    llm = guided_llm(scripted, {"highlight": ["months"], "propose": ["names of months"]})
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader)
    store = Store(synth_store.path)
    sample = sample_unit(store, UNIT, SampleSettings())
    held = {(e.kind, e.rank) for e in sample.test + sample.quantile + sample.negatives}
    shown = {(x["kind"], x["rank"]) for x in out.experiments[0].result["examples"]}
    assert shown and not shown & held
    # the highlight candidate reads the explain split; `score` simulates explain-split windows only
    box = Toolbox(sample, store.examples(UNIT), reader, None)
    assert not {(e.kind, e.rank) for e in sample.explain} & held
    assert not {(e.kind, e.rank) for e in box.score_examples()} & held
    n_sims = sum(not isinstance(r, ChatRequest) for r in llm.requests)
    n_scores = sum(e.tool == "score" and not e.error for e in out.experiments)
    assert n_scores and n_sims >= 2 * len(box.score_examples()) * n_scores  # each calibrated


def test_unparsable_hypotheses_are_retried_once_then_highlight_carries_it(synth_store, reader, scripted):
    llm = guided_llm(
        scripted,
        {"propose": ['{"tool": "examples"}', "m/synthetic.months/0"], "highlight": ["months of the year"]},
    )
    out = investigate(synth_store.path, UNIT, settings(llm, with_highlight=True), reader=reader)
    exps = out.experiments
    proposals = [e for e in exps if e.tool == "propose"]
    assert len(proposals) == 2 and all(e.error.startswith("invalid action: no usable") for e in proposals)
    retry = [r for r in llm.requests if isinstance(r, ChatRequest) and stage(r) == "propose"][1]
    assert (
        retry.messages[-2].content == '{"tool": "examples"}' and "one per line" in retry.messages[-1].content
    )
    assert out.investigation.status == "finished" and out.investigation.explanation == "months of the year"
    # without the highlight candidate, nothing usable: failed, nothing stored
    llm2 = guided_llm(scripted, {"propose": ["", "???"]}, name="g2")
    out = investigate(synth_store.path, UNIT, settings(llm2, with_highlight=False), reader=reader)
    assert out.investigation.status == "failed" and "no hypothesis" in out.investigation.reason
    assert [e.tool for e in out.experiments] == ["examples", "tokens", "name", "propose", "propose"]
    assert out.experiments[2].error.startswith("invalid action: no usable category")


def test_budgets_finish_with_the_best_so_far_or_end_exhausted(synth_store, reader, scripted):
    answers = {"highlight": ["the word cat"], "propose": ["names of months\ndates"]}
    llm = guided_llm(scripted, {k: list(v) for k, v in answers.items()})
    # 8 steps: examples, tokens, name (unreadable here), propose, highlight, two scores, and finish
    out = investigate(synth_store.path, UNIT, settings(llm, max_steps=8), reader=reader)
    assert [e.tool for e in out.experiments][-3:] == ["score", "score", "finish"]
    assert out.investigation.status == "finished" and out.investigation.explanation == "names of months"
    assert out.investigation.steps == 8
    # the score budget: one score, then finish with the scored one (no revision without a score left)
    llm = guided_llm(scripted, {k: list(v) for k, v in answers.items()}, name="g3")
    out = investigate(synth_store.path, UNIT, settings(llm, max_scores=1), reader=reader)
    tools = [e.tool for e in out.experiments]
    assert tools.count("score") == 1 and "revise" not in tools
    assert out.investigation.explanation == "the word cat"  # the only one scored
    # too few steps for a hypothesis and its finish: exhausted before the LLM is asked, nothing stored
    llm = guided_llm(scripted, {}, name="g4")
    out = investigate(synth_store.path, UNIT, settings(llm, max_steps=3), reader=reader)
    inv = out.investigation
    assert inv.status == "exhausted" and "step budget (3)" in inv.reason and inv.explanation is None
    assert [e.tool for e in out.experiments] == ["examples", "tokens"] and not llm.requests
    assert Store(synth_store.path).get_investigation(inv.id).status == "exhausted"
    # the token budget, spent by the first LLM turn: it finishes with that turn's first hypothesis
    llm = guided_llm(scripted, {"name": ["month words"]}, name="g5")
    out = investigate(synth_store.path, UNIT, settings(llm, max_tokens=5), reader=reader)
    assert out.investigation.status == "finished" and out.investigation.explanation == "month words"
    assert [e.tool for e in out.experiments] == ["examples", "tokens", "name", "finish"]
    assert "unscored" in out.experiments[-1].thought


def test_guided_resumes_after_an_interruption_from_the_last_stored_step(synth_store, reader, scripted):
    llm = guided_llm(
        scripted,
        {
            "propose": ["dates\nnames of months"],
            "highlight": [LLMError("server went away"), "the word cat"],
            "revise": ["month names"],
        },
    )
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader)
    inv = out.investigation
    assert inv.status == "failed" and f"--resume {inv.id}" in inv.reason
    assert [e.tool for e in out.experiments] == ["examples", "tokens", "name", "propose"]
    calls = len([r for r in llm.requests if isinstance(r, ChatRequest)])
    out = investigate(synth_store.path, "", settings(llm), resume=inv.id, reader=reader)
    assert out.investigation.status == "finished" and out.investigation.explanation == "names of months"
    tools = [e.tool for e in out.experiments]
    assert tools[:5] == ["examples", "tokens", "name", "propose", "highlight"] and tools.count("propose") == 1
    assert [e.id for e in out.experiments] == [f"e{i}" for i in range(1, len(tools) + 1)]
    # only the missing LLM turns ran again: highlight and revise (propose was stored)
    chats = [r for r in llm.requests if isinstance(r, ChatRequest)][calls:]
    assert [stage(r) for r in chats] == ["highlight", "revise"]
    # the stored row says so
    assert Store(synth_store.path).get_investigation(inv.id).status == "finished"


def test_investigate_command_guided_by_default_for_a_scripted_agent(synth_store, scripted, monkeypatch):
    from tests.test_agent import WordTokenizer

    monkeypatch.setattr("autointerp.agent.reader.load_tokenizer", lambda model: WordTokenizer())
    llm = guided_llm(scripted, {"propose": ["names of months\ndates"], "highlight": ["the word cat"]})
    res = invoke("investigate", UNIT, "--db", synth_store.path, "--agent", llm.spec, "--max-scores", 2)
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "e4 propose" in out and "- names of months" in out and "e6 score" in out
    assert "finished" in out and "correlation on the held-out test set" in out
    res = invoke("show", UNIT, "--db", synth_store.path)
    assert res.exit_code == 0 and "names of months" in " ".join(res.output.split())
    res = invoke("investigate", UNIT, "--db", synth_store.path, "--agent-mode", "clever")
    assert res.exit_code == 2 and "agent-mode" in res.output


@pytest.mark.parametrize("mode", ["guided", "free"])
def test_label_methods_agent_takes_the_agent_mode(synth_store, scripted, monkeypatch, mode):
    from autointerp.agent.bulk import AgentBudget
    from autointerp.pipeline import label
    from tests.test_agent import WordTokenizer, act

    monkeypatch.setattr("autointerp.agent.reader.load_tokenizer", lambda model: WordTokenizer())
    llm = guided_llm(
        scripted,
        {"propose": ["names of months"], "highlight": ["months"], "?": [act("finish", explanation="m")]},
    )
    summary = label(
        synth_store.path, [UNIT], explainer=llm.spec, methods=["agent"], agent=AgentBudget(agent_mode=mode)
    )
    assert summary.ok, [r.error for r in summary.results]
    (inv,) = Store(synth_store.path).investigations(UNIT)
    assert inv.settings["agent_mode"] == mode
    assert inv.prompt == ("agent-guided@2" if mode == "guided" else "agent-investigate@1")


def measured_tokens(monkeypatch, firing: dict[str, tuple[int, float]], before: dict[str, int]) -> None:
    """The `tokens` tool answers these counts (and mean activations) instead of the store's."""
    from autointerp.agent.tools import TokenCount, TokensResult, Toolbox

    result = TokensResult(
        n_windows=6,
        firing=[TokenCount(token=t, count=n, mean=m) for t, (n, m) in firing.items()],
        before=[TokenCount(token=t, count=n) for t, n in before.items()],
    )
    monkeypatch.setattr(Toolbox, "tokens", lambda self, args, k=10: result)


def test_name_adds_candidates_built_from_the_measured_tokens_and_a_tie_goes_to_the_specific(
    synth_store, reader, scripted, monkeypatch
):
    measured_tokens(monkeypatch, {" March": (4, 1.0), " may": (1, 1.0), " May": (2, 1.0)}, {" in": 2})
    llm = guided_llm(
        scripted, {"name": ["month words"], "highlight": ["names of months"], "propose": ["dates"]}
    )
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader)
    (name,) = [e for e in out.experiments if e.tool == "name"]
    # the examples, merged case-insensitively, most frequent first; no context (' in' precedes 2 of 7)
    assert name.result["hypotheses"] == ["month words", "month words, such as March and May"]
    assert name.result["specific"] == ["month words, such as March and May"]
    scores = {
        e.arguments["explanation"]: e.result["correlation"] for e in out.experiments if e.tool == "score"
    }
    # the simulator reads only "month": every month hypothesis ties; the one with examples wins the tie
    assert scores["names of months"] == scores["month words, such as March and May"] > 0.9
    assert out.investigation.explanation == "month words, such as March and May"


def test_a_graded_and_shaped_candidate_from_numeric_tokens_and_a_clear_win_beats_specific(
    synth_store, reader, scripted, monkeypatch
):
    firing = {"9": (5, 1.0), "7": (3, 0.8), "4": (2, 0.5), "8": (1, 0.9)}
    measured_tokens(monkeypatch, firing, {" x": 1})
    llm = guided_llm(scripted, {"name": ["numbers"], "highlight": ["names of months"], "propose": ["dates"]})
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader)
    (name,) = [e for e in out.experiments if e.tool == "name"]
    assert name.result["hypotheses"] == [
        "numbers",
        "numbers, such as 9, 7 and 4",
        "digits, stronger for larger digits, such as 9, 7 and 4",  # graded, with the examples
        "digits",  # the shared form: measured, but no more specific than a category
    ]
    assert name.result["specific"] == name.result["hypotheses"][1:3]
    # months fire here, digits do not: highlight's "names of months" wins by far over the specific ones
    assert out.investigation.explanation == "names of months"


def test_revision_keeps_the_measured_context_beside_a_broader_best(
    synth_store, reader, scripted, monkeypatch
):
    measured_tokens(monkeypatch, {" March": (6, 1.0)}, {" in": 5, " on": 1})
    answers = {
        "name": ["words"],
        "highlight": ["names of months"],
        "propose": ["dates"],
        "revise": ["months"],
    }
    llm = guided_llm(scripted, {k: list(v) for k, v in answers.items()})
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader)
    (name,) = [e for e in out.experiments if e.tool == "name"]
    # ' in' before 5 of 6: the category after it, and the one firing word after it as a pair
    assert name.result["hypotheses"] == ["words", 'words right after "in"', 'the "March" in "in March"']
    (revise,) = [e for e in out.experiments if e.tool == "revise"]
    # the best so far ("names of months") lacks the measured context: the code adds it back
    assert revise.result == {
        "hypotheses": ["months", 'names of months right after "in"'],
        "specific": ['names of months right after "in"'],
    }
    scored = [e.arguments["explanation"] for e in out.experiments if e.tool == "score"]
    assert scored[-2:] == ["months", 'names of months right after "in"']
    assert out.investigation.explanation == 'names of months right after "in"'  # ties "names of months"
    # an unreadable revision still keeps the context candidate
    llm = guided_llm(scripted, answers | {"revise": ["[[x]]"]}, name="g2")
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader)
    (revise,) = [e for e in out.experiments if e.tool == "revise"]
    assert revise.result["hypotheses"] == ['names of months right after "in"'] and not revise.error
    assert "no revision could be read" in revise.thought
