"""The investigation agent, driven by the scripted LLM on a synthetic months unit (no model)."""

from __future__ import annotations

import json
import re

import pytest

from autointerp.agent.loop import AgentSettings, investigate, parse_action, prepare
from autointerp.agent.reader import RuleReader, open_reader
from autointerp.agent.tools import ActionError, ExamplesArgs, Toolbox, agent_examples
from autointerp.bench.synthetic import BUILTIN
from autointerp.llm.base import ChatRequest, LLMError
from autointerp.sampling import SampleSettings, sample_unit
from autointerp.store import Store
from tests.conftest import build_month_store

UNIT = "m/synthetic.months/0"


class WordTokenizer:
    """A tokenizer for tests: one token per word or punctuation mark, its leading space kept."""

    def __init__(self):
        self.vocab: list[str] = []

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids = []
        for word in re.findall(r"\s*\w+|\s*[^\w\s]", text):
            if word not in self.vocab:
                self.vocab.append(word)
            ids.append(self.vocab.index(word))
        return {"input_ids": ids}

    def decode(self, ids: list[int], clean_up_tokenization_spaces: bool = False) -> str:
        return "".join(self.vocab[i] for i in ids)


@pytest.fixture
def synth_store(tmp_path) -> Store:
    return build_month_store(tmp_path / "synth.db", n_units=1, hook="synthetic.months")


@pytest.fixture
def reader(synth_store):
    unit = synth_store.get_unit(UNIT)
    return open_reader(synth_store, unit, tokenizer_loader=lambda model: WordTokenizer())


def act(tool: str, thought: str = "", **args) -> str:
    return json.dumps({"thought": thought, "tool": tool, "args": args})


def settings(llm, **kw) -> AgentSettings:
    """The free loop's settings (the scripted LLM answers JSON actions)."""
    return AgentSettings(agent=llm.spec, **{"agent_mode": "free"} | kw)


def test_reader_of_a_synthetic_unit_is_its_rule(synth_store, reader):
    assert isinstance(reader, RuleReader) and reader.unit.name == "months"
    (tokens, acts), (_, none) = reader.read(["We met in March and June.", "We met at noon."])
    assert dict(zip(tokens, acts, strict=True))[" March"] == 1.0 and acts[0] == 0.0
    assert max(none) == 0.0


def test_no_tool_ever_returns_an_example_a_scorer_reads(month_store, scripted):
    uid = "m/blocks.0.mlp.hook_post/0"
    sample = sample_unit(month_store, uid, SampleSettings())
    box = Toolbox(sample, month_store.examples(uid), RuleReader(BUILTIN[0], WordTokenizer()), None)
    held = {(e.kind, e.rank) for e in sample.test + sample.quantile + sample.negatives}
    assert {k for k, _ in held} >= {"top", "random"}  # the test set holds both kinds
    seen = set()
    for kind in ("top", "random", "quantile", "negative"):
        for q in [None, *range(5)] if kind == "quantile" else [None]:
            try:
                got = box.examples(ExamplesArgs(kind=kind, n=20, quantile=q)).examples
            except Exception:  # noqa: BLE001 - an empty kind is a ToolError
                continue
            seen |= {(e.kind, e.rank) for e in got}
    assert seen and not seen & held
    assert {("top", r) for r in range(0, 12, 2)} <= seen  # the explain split is there
    assert not {(e.kind, e.rank) for e in box.score_examples()} & held
    # the split is by (kind, rank) against every stored example, whatever the tool
    pool = agent_examples(sample, month_store.examples(uid))
    assert not {(e.kind, e.rank) for es in pool.values() for e in es} & held


def test_scripted_investigation_runs_tools_finishes_and_is_scored_like_any_method(
    synth_store, reader, scripted
):
    llm = scripted("agent")
    llm.enqueue(
        act("examples", "Look first.", kind="top", n=3),
        act("activations", "Months?", texts=["We met in March.", "We met at noon."]),
        act("compare", "Edit the month away.", text="It was March again.", edited_text="It was noon again."),
        act("score", explanation="months of the year"),
        act("finish", explanation="months of the year", supporting=["e2", "e3", "e4"], refuting=[]),
    )
    seen = []
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader, on_step=seen.append)
    inv = out.investigation
    assert inv.status == "finished" and inv.steps == 5 and inv.explanation == "months of the year"
    assert [e.tool for e in out.experiments] == ["examples", "activations", "compare", "score", "finish"]
    assert [e.id for e in seen] == ["e1", "e2", "e3", "e4", "e5"] and not any(e.error for e in seen)
    acts = {r["text"]: r["max_act"] for r in out.experiments[1].result["results"]}
    assert acts == {"We met in March.": 1.0, "We met at noon.": 0.0}
    assert out.experiments[2].result["change"] == -1.0
    shown = out.experiments[0].result["examples"]
    assert [e["rank"] for e in shown] == [0, 2, 4] and shown[0]["max_act"] == 4.0  # BOS (9.0) left out
    assert "[[ March]]" in shown[0]["text"] and shown[0]["active"] == [{"token": " March", "act": 4.0}]
    assert out.experiments[3].result["correlation"] > 0.9
    assert inv.evidence == {"supporting": ["e2", "e3", "e4"], "refuting": []}
    # the stored explanation: method agent, with its provenance, scored on the held-out test set
    again = Store(synth_store.path)
    (exp,) = again.explanations(UNIT, method="agent")
    assert exp.text == "months of the year" and exp.model == llm.spec and exp.prompt == "agent-investigate@1"
    assert exp.settings["steps"] == 5 and exp.settings["investigation"] == inv.id
    (score,) = again.scores(exp.id)
    assert score.scorer == "correlation" and score.status == "ok" and score.value > 0.9
    test = sample_unit(again, UNIT, SampleSettings()).test
    assert score.details["examples"] == [[e.kind, e.rank] for e in test]
    stored = again.get_investigation(inv.id)
    assert stored.status == "finished" and stored.explanation_id == exp.id
    assert [e.tool for e in again.experiments(inv.id)] == [e.tool for e in out.experiments]
    # the agent was shown the results (the transcript holds them)
    assert any("e2 activations" in m["content"] for m in stored.messages if m["role"] == "user")


def test_a_malformed_action_is_retried_once_then_recorded_as_the_failure(synth_store, reader, scripted):
    llm = scripted("agent")
    llm.enqueue(
        "I think it is about months.",  # no JSON: told so, one retry
        act("examples"),
        act("dance", feet=2),  # unknown tool
        '{"tool": "activations", "args": {"texts": []}}',  # invalid arguments, second in a row
    )
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader)
    inv, exps = out.investigation, out.experiments
    assert inv.status == "failed" and "invalid actions in a row" in inv.reason and "texts" in inv.reason
    assert [e.error.startswith("invalid action: ") for e in exps] == [True, False, True, True]
    assert "no JSON object" in exps[0].error and "no tool 'dance'" in exps[2].error
    assert Store(synth_store.path).get_investigation(inv.id).status == "failed"
    assert not Store(synth_store.path).explanations(UNIT, method="agent")
    # the error went back to the agent as its next message
    assert "error: there is no tool 'dance'" in llm.requests[3].messages[-1].content
    assert llm.requests[0].stop == ["}\n{"]  # generation stops before a second action


def test_an_answer_cut_by_the_token_budget_is_told_as_such(synth_store, reader, scripted):
    from autointerp.llm.base import ChatResponse

    llm = scripted("agent")
    answers = iter(
        [
            '{"thought": "t", "tool": "activations", "args": {"texts": ["a", "b", "a',
            act("finish", explanation="m"),
        ]
    )

    async def chat(request):  # noqa: ANN001, ANN202
        llm.requests.append(request)
        text = next(answers)
        reason = "length" if not text.endswith("}") else "stop"
        return ChatResponse(text=text, finish_reason=reason, model="agent", backend="scripted")

    llm.chat = chat
    out = investigate(synth_store.path, UNIT, settings(llm, action_tokens=64), reader=reader)
    assert "your answer was cut at 64 tokens" in out.experiments[0].error
    assert "cut at 64 tokens" in llm.requests[1].messages[-1].content
    assert out.investigation.status == "finished"


def test_a_repeated_identical_call_is_refused(synth_store, reader, scripted):
    llm = scripted("agent")
    same = act("activations", texts=["in May"])
    llm.enqueue(same, same, same)
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader)
    assert "already ran exactly this as e1" in out.experiments[1].error
    assert out.investigation.status == "failed"


def test_budgets_end_the_investigation_with_a_recorded_state_and_reason(synth_store, reader, scripted):
    llm = scripted("agent", respond=lambda req: act("activations", texts=[f"turn {len(req.messages)}"]))
    out = investigate(synth_store.path, UNIT, settings(llm, max_steps=3), reader=reader)
    inv = Store(synth_store.path).get_investigation(out.investigation.id)
    assert inv.status == "exhausted" and "step budget (3)" in inv.reason and inv.steps == 3
    assert len(Store(synth_store.path).experiments(inv.id)) == 3 and inv.explanation is None
    assert "next step is the last one" in llm.requests[-1].messages[-1].content
    # resumed with a larger budget, it goes on from its last step (steps count from the start)
    llm.enqueue(act("finish", explanation="months"))
    out = investigate(synth_store.path, "", settings(llm, max_steps=4), resume=inv.id, reader=reader)
    assert out.investigation.status == "finished" and out.investigation.steps == 4
    out = investigate(synth_store.path, UNIT, settings(llm, max_tokens=10), reader=reader)
    assert out.investigation.status == "exhausted" and "token budget (10)" in out.investigation.reason
    assert out.investigation.steps == 1


def test_an_llm_failure_is_recorded_and_the_investigation_resumes(synth_store, reader, scripted):
    llm = scripted("agent")
    llm.enqueue(act("examples", n=2), LLMError("server went away"))
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader)
    inv = out.investigation
    assert inv.status == "failed" and "--resume " + inv.id in inv.reason and inv.steps == 1
    llm.enqueue(act("activations", texts=["in May"]), act("finish", explanation="months", supporting=["e2"]))
    out = investigate(synth_store.path, "", resume=inv.id, reader=reader)
    assert out.investigation.status == "finished" and out.investigation.steps == 3
    assert [e.id for e in out.experiments] == ["e1", "e2", "e3"]
    # the resumed agent saw the first step's transcript
    chats = [r for r in llm.requests if isinstance(r, ChatRequest)]
    assert any("e1 examples" in m.content for m in chats[2].messages)


def test_finish_citing_unknown_experiments_keeps_the_explanation_and_drops_the_ids(
    synth_store, reader, scripted
):
    llm = scripted("agent")
    llm.enqueue(
        act("examples", n=2),
        act("finish", explanation="months", supporting=["e1", "e9"], refuting=["e7", "e9"]),
    )
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader)
    fin = out.experiments[1]
    assert not fin.error and "evidence e9, e7 dropped" in fin.thought
    assert fin.arguments["supporting"] == ["e1"] and fin.arguments["refuting"] == []
    inv = out.investigation
    assert inv.status == "finished" and inv.explanation == "months"
    assert inv.evidence == {"supporting": ["e1"], "refuting": []}


def test_native_tool_calls_get_schemas_and_tool_messages(synth_store, reader, scripted):
    from autointerp.llm.base import ChatResponse, ToolCall

    llm = scripted("native")
    llm.capabilities = llm.capabilities.model_copy(update={"tools": True})
    calls = iter(
        [
            ToolCall(id="c1", name="activations", arguments={"texts": ["in April"]}),
            ToolCall(id="c2", name="finish", arguments={"explanation": "months", "supporting": ["e1"]}),
        ]
    )

    async def chat(request):  # noqa: ANN001, ANN202
        llm.requests.append(request)
        return ChatResponse(text="", tool_calls=[next(calls)], model="native", backend="scripted")

    llm.chat = chat
    out = investigate(synth_store.path, UNIT, settings(llm), reader=reader)
    assert out.investigation.status == "finished"
    first = llm.requests[0]
    shown = ["examples", "activations", "compare", "search", "score", "finish"]  # a rule has no effects
    assert [t.name for t in first.tools] == shown
    assert "JSON object" not in first.messages[0].content and first.stop is None  # no JSON actions
    tool_msg = llm.requests[1].messages[-1]
    assert tool_msg.role == "tool" and tool_msg.tool_call_id == "c1" and "e1 activations" in tool_msg.content


def test_parse_action_reads_fenced_json_and_refuses_other_shapes():
    a = parse_action('Sure:\n```json\n{"thought": "t", "tool": "examples", "args": {"n": 2}}\n```')
    assert (a.tool, a.args) == ("examples", {"n": 2})
    cut = parse_action(
        '{"thought": "t", "tool": "activations", "args": {"texts": ["in May"]}'
    )  # stop cut "}"
    assert cut.args == {"texts": ["in May"]}
    with pytest.raises(ActionError, match="malformed"):
        parse_action('{"thought": "t", "tool": "activations", "args": {"texts": ["in')
    with pytest.raises(ActionError, match="no JSON object"):
        parse_action("months")
    with pytest.raises(ActionError, match="tool"):
        parse_action('{"thought": "no tool here"}')


def test_unknown_resume_id_and_unknown_unit_are_one_sentence(synth_store, scripted):
    from autointerp.errors import UserError

    llm = scripted("agent")
    with pytest.raises(UserError, match="No investigation inv-nope"):
        prepare(synth_store.path, UNIT, settings(llm), resume="inv-nope")
    with pytest.raises(UserError, match="is not recorded"):
        prepare(synth_store.path, "m/synthetic.days/0", settings(llm))


def test_a_v6_store_migrates_to_v10_with_investigation_tables(tmp_path):
    import sqlite_utils

    from autointerp.store import MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    for v in range(6):
        MIGRATIONS[v](db)
    db["meta"].insert({"key": "schema_version", "value": "6"}, pk="key")
    db.conn.commit()
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION >= 10
    assert {"investigations", "experiments"} <= set(store.db.table_names())
    assert store.investigations() == [] and store.experiments("inv-x") == []


# -- the command line ------------------------------------------------------------------------------
def invoke(*args, input: str | None = None):  # noqa: A002, ANN002, ANN201 - click Result
    from typer.testing import CliRunner

    from autointerp import cli

    return CliRunner().invoke(cli.app, [str(a) for a in args], input=input)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a subject model or tokenizer fails the test."""

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr("autointerp.agent.reader.load_tokenizer", boom)
    monkeypatch.setattr("autointerp.subject.model.load_subject", boom)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["m/synthetic.months/0", "--db", "{tmp}/none.db"], "No store at"),
        (["m/synthetic.days/0", "--db", "{db}"], "is not recorded"),
        (["not a unit", "--db", "{db}"], "is not a unit id"),
        (["--db", "{db}"], "Name the unit"),
        (["m/synthetic.months/0", "--db", "{db}", "--agent", "gpt4"], "is not an LLM spec"),
        (["m/synthetic.months/0", "--db", "{db}", "--scorers", "vibes"], "Unknown scorer 'vibes'"),
        (["m/synthetic.months/0", "--db", "{db}", "--resume", "inv-nope"], "No investigation inv-nope"),
        (["m/synthetic.months/0", "--db", "{db}", "--synthetic", "{tmp}/u.py"], "No synthetic unit file"),
    ],
)
def test_investigate_bad_input_is_one_sentence_and_exit_2_before_any_load(
    synth_store, tmp_path, no_model, args, says
):
    res = invoke("investigate", *[a.format(tmp=tmp_path, db=synth_store.path) for a in args])
    assert res.exit_code == 2, res.output
    assert says in " ".join(res.output.split()) and "Traceback" not in res.output


def test_investigate_max_steps_below_one_is_refused(synth_store):
    res = invoke("investigate", UNIT, "--db", synth_store.path, "--max-steps", 0)
    assert res.exit_code == 2 and "max-steps" in res.output


def test_investigate_command_runs_shows_steps_and_stores_the_explanation(synth_store, scripted, monkeypatch):
    monkeypatch.setattr("autointerp.agent.reader.load_tokenizer", lambda model: WordTokenizer())
    llm = scripted("agent")
    llm.enqueue(
        act("activations", "Months?", texts=["Born in July.", "Born at home."]),
        act("finish", explanation="names of months", supporting=["e1"]),
    )
    free = ["--agent", llm.spec, "--agent-mode", "free"]
    res = invoke("investigate", "synthetic.months/0", "--db", synth_store.path, *free)
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "e1 activations" in out and "' July' 1.00" in out and "finished" in out
    assert "correlation on the held-out test set" in out
    (exp,) = Store(synth_store.path).explanations(UNIT, method="agent")
    assert exp.text == "names of months"
    llm.enqueue(act("examples"), act("examples", n=2))
    res = invoke("investigate", UNIT, "--db", synth_store.path, *free, "--max-steps", 2)
    assert res.exit_code == 1 and "exhausted" in res.output
    res = invoke("show", UNIT, "--db", synth_store.path)
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "investigations" in out and "finished" in out and "exhausted" in out
    assert "names of months" in out and "step budget (2)" in out


# -- chat --------------------------------------------------------------------------------------------
def test_chat_driven_by_piped_stdin(synth_store, scripted, monkeypatch):
    monkeypatch.setattr("autointerp.agent.reader.load_tokenizer", lambda model: WordTokenizer())
    llm = scripted("agent")
    llm.enqueue(
        act("activations", "Test French months.", texts=["Il est né en juillet.", "Born in July."]),
        act("answer", text="It fires on English month names only.", hypothesis="English month names"),
    )
    lines = [
        "does it fire on French month names?",
        '/act "We met in May." "We met at noon."',
        "/examples top 2",
        "/examples sideways",
        "/dance",
        '/score "names of months"',
        "/save",
        "/quit",
    ]
    res = invoke("chat", UNIT, "--db", synth_store.path, "--agent", llm.spec, input="\n".join(lines) + "\n")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "e1 activations" in out and "English month names only" in out
    assert "e3 activations (you)" in out and "' May' 1.00" in out
    assert "e4 examples (you)" in out and "input should be 'top'" in out.lower()
    assert "/dance is not a command" in out
    assert "correlation on the held-out test set" in out
    store = Store(synth_store.path)
    (inv,) = store.investigations(UNIT)
    assert inv.mode == "chat" and inv.status == "finished"
    exps = store.experiments(inv.id)
    assert [(e.tool, e.source) for e in exps] == [
        ("activations", "agent"),
        ("answer", "agent"),
        ("activations", "person"),
        ("examples", "person"),
        ("examples", "person"),
        ("score", "person"),
    ]
    assert exps[4].error  # the bad kind, recorded
    (exp,) = store.explanations(UNIT, method="agent")
    assert exp.text == "names of months"  # /save keeps the latest hypothesis: the one just scored
    # the agent saw the person's experiments; --resume continues the conversation
    llm.enqueue(act("answer", text="Yes, May fires."))
    again = ["chat", "--db", synth_store.path, "--resume", inv.id, "--agent", llm.spec]
    res = invoke(*again, input="and May?\n")
    assert res.exit_code == 0 and "Yes, May fires." in res.output
    last = [r for r in llm.requests if isinstance(r, ChatRequest)][-1]
    assert any("The person ran e3 activations" in m.content for m in last.messages)
    assert [e.id for e in store.experiments(inv.id)][-1] == "e7"


def test_chat_commands_parse_or_say_why():
    from autointerp.agent.chat import CommandError, parse_command

    assert parse_command('/act "a b" c') == ("activations", {"texts": ["a b", "c"]})
    assert parse_command("/examples random 3") == ("examples", {"kind": "random", "n": 3})
    assert parse_command('/compare "x" "y"') == ("compare", {"text": "x", "edited_text": "y"})
    assert parse_command("/save") == ("save", None)
    bad_lines = [('/act "open', "quote"), ("/compare x", "two quoted"), ("/examples top many", "number")]
    for bad, says in bad_lines:
        with pytest.raises(CommandError, match=says):
            parse_command(bad)


def test_investigate_takes_its_agent_from_the_config_file(synth_store, scripted, monkeypatch, tmp_path):
    monkeypatch.setattr("autointerp.agent.reader.load_tokenizer", lambda model: WordTokenizer())
    llm = scripted("lab-agent")
    llm.enqueue(act("finish", explanation="names of months", supporting=[]))
    cfg = tmp_path / "lab.toml"
    cfg.write_text(f'[models]\nexplainer = "{llm.spec}"\n')
    res = invoke("--config", cfg, "investigate", UNIT, "--db", synth_store.path, "--agent-mode", "free")
    assert res.exit_code == 0, res.output
    (exp,) = Store(synth_store.path).explanations(UNIT, method="agent")
    assert exp.settings["agent"] == llm.spec and llm.requests  # the config's model ran, no flag given
