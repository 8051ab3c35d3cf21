"""The agent's search, output_effect, steer and ablate tools: on a synthetic unit (scripted LLM), and on a
neuron of a tiny random HookedTransformer (real hooks, no download)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from autointerp.agent.chat import CommandError, parse_command
from autointerp.agent.loop import AgentSettings, investigate
from autointerp.agent.reader import ModelEffects, ProbeReader, open_reader
from autointerp.agent.tools import (
    AblateArgs,
    ActionError,
    OutputEffectArgs,
    SearchArgs,
    SteerArgs,
    Toolbox,
    ToolError,
    search_windows,
)
from autointerp.sampling import SampleSettings, sample_unit
from autointerp.store import Store
from tests.test_agent import UNIT, WordTokenizer, act, invoke

NEURON_HOOK = "blocks.0.mlp.hook_post"


@pytest.fixture
def synth_store(tmp_path) -> Store:
    from tests.conftest import build_month_store

    return build_month_store(tmp_path / "synth.db", n_units=1, hook="synthetic.months")


@pytest.fixture
def reader(synth_store):
    return open_reader(synth_store, synth_store.get_unit(UNIT), tokenizer_loader=lambda m: WordTokenizer())


def box_for(store: Store, uid: str, reader) -> Toolbox:  # noqa: ANN001
    sample = sample_unit(store, uid, SampleSettings())
    return Toolbox(sample, store.examples(uid), reader, None)


# -- search ----------------------------------------------------------------------------------------------
def test_search_reads_only_explain_split_windows_and_reports_activation_on_matches(synth_store, reader):
    box = box_for(synth_store, UNIT, reader)
    res = box.search(SearchArgs(pattern=r"March|June"))
    assert res.n_matched > 0 and res.hits and res.n_windows == len(box.windows)
    assert all(h.match in ("March", "June") for h in res.hits)
    assert res.hits[0].match_act == 4.0 and res.match_mean > (res.other_mean or 0)
    assert "[[ March]]" in res.hits[0].text
    sample = box.sample
    held = {e.context.id for e in sample.test + sample.quantile + sample.negatives}
    assert not {e.context.id for e in box.windows} & held  # no window any scorer reads
    assert len({e.context.id for e in box.windows}) == len(box.windows)  # each window once
    assert search_windows(sample, box.pool) == box.windows
    none = box.search(SearchArgs(pattern="zebra"))
    assert none.n_matched == 0 and "matches none of" in none.brief()
    assert box.search(SearchArgs(pattern="March", n=1)).hits[0].match == "March"


def test_a_bad_regex_is_an_invalid_action_back_to_the_agent(synth_store, reader, scripted):
    with pytest.raises(ActionError, match="not a valid regular expression"):
        Toolbox.parse("search", {"pattern": "(March"}, ["search"])
    llm = scripted("agent")
    llm.enqueue(
        act("search", pattern="(March"),
        act("search", "Months in the corpus?", pattern=r"\b(March|June)\b"),
        act("finish", explanation="months", supporting=["e2"]),
    )
    out = investigate(synth_store.path, UNIT, AgentSettings(agent=llm.spec, agent_mode="free"), reader=reader)
    e1, e2, _ = out.experiments
    assert e1.error.startswith("invalid action: bad arguments for search: pattern")
    assert "not a valid regular expression" in llm.requests[1].messages[-1].content
    assert not e2.error and e2.result["n_matched"] > 0 and out.investigation.status == "finished"
    assert "e2 search: " in llm.requests[2].messages[-1].content


def test_a_catastrophic_pattern_times_out_as_a_tool_error(synth_store, reader):
    box = box_for(synth_store, UNIT, reader)
    for e in box.windows[:1]:  # a window of repeated letters makes (a|aa)+$ backtrack exponentially
        e.context.tokens = ["a"] * 40 + ["!"]
        e.acts = [0.0] * 41
    with pytest.raises(ToolError, match="too slow"):
        box.search(SearchArgs(pattern=r"(a|aa)+$"))


# -- effects on a synthetic unit: a clear tool error ---------------------------------------------------------
def test_effect_tools_on_a_synthetic_unit_are_tool_errors_and_not_offered(synth_store, reader, scripted):
    llm = scripted("agent")
    llm.enqueue(
        act("output_effect"),
        act("steer", prompt="We met in", strength=4),
        act("ablate", prompt="We met in"),
        act("finish", explanation="months"),
    )
    out = investigate(synth_store.path, UNIT, AgentSettings(agent=llm.spec, agent_mode="free"), reader=reader)
    errors = [e.error for e in out.experiments[:3]]
    assert all("is a synthetic unit (a rule over tokens)" in e for e in errors)
    assert not any(e.startswith("invalid action") for e in errors)  # tool errors: the loop goes on
    assert out.investigation.status == "finished"
    system = llm.requests[0].messages[0].content
    assert "- search(" in system and "- steer(" not in system and "- output_effect(" not in system


# -- effects on a real (tiny) model ----------------------------------------------------------------
@pytest.fixture
def neuron_store(tmp_path, tiny_subject):
    from autointerp import record_units

    text = tmp_path / "c.txt"
    text.write_text("the cat sat on the mat. a dog ran to the door! " * 30)
    db = tmp_path / "tiny.db"
    kw = dict(
        corpus=[str(text)], ctx=16, max_tokens=1200, batch_size=8, top_k=30, quantile_pool=10, n_random=30
    )
    record_units(db, [NEURON_HOOK, "blocks.0.mlp.hook_pre"], units=[3], subject=tiny_subject, **kw)
    return Store(db)


def tiny_box(store: Store, subject, hook: str = NEURON_HOOK) -> Toolbox:  # noqa: ANN001
    from autointerp.counterfactual.probe import UnitProbe

    uid = f"tiny/{hook}/3"
    unit = store.get_unit(uid)
    probe = UnitProbe.for_unit(subject, store, unit)
    return box_for(store, uid, ProbeReader(probe, ModelEffects(store, unit, probe)))


def test_output_effect_is_the_neurons_w_out_row_through_the_unembedding(neuron_store, tiny_subject):
    box = tiny_box(neuron_store, tiny_subject)
    res = box.effect("output_effect", OutputEffectArgs(k=5))
    model = tiny_subject.model
    logits = (model.blocks[0].mlp.W_out[3] @ model.W_U).detach()
    assert [t.value for t in res.promoted] == pytest.approx(logits.topk(5).values.tolist(), abs=1e-3)
    assert [t.value for t in res.suppressed] == pytest.approx(
        logits.topk(5, largest=False).values.tolist(), abs=1e-3
    )
    assert res.promoted[0].token == tiny_subject.token_strs([int(logits.argmax())])[0]
    assert "promotes" in res.brief() and "suppresses" in res.brief()
    pre = tiny_box(neuron_store, tiny_subject, "blocks.0.mlp.hook_pre")
    with pytest.raises(ToolError, match="write no single output direction"):
        pre.effect("output_effect", OutputEffectArgs())


def test_steer_and_ablate_change_the_next_token_distribution_as_the_hooked_model_says(
    neuron_store, tiny_subject
):
    box = tiny_box(neuron_store, tiny_subject)
    prompt = "the cat sat on"
    steer = box.effect("steer", SteerArgs(prompt=prompt, strength=8))
    assert steer.change.value == pytest.approx(8 * box.unit_max, abs=1e-3)
    # the same intervention by hand: neuron 3 set at every position, next-token probabilities compared
    model = tiny_subject.model
    toks = torch.tensor([box.reader.probe.encode(prompt)])

    def clamp(act, hook):  # noqa: ANN001, ANN202
        act[..., 3] = steer.change.value
        return act

    with torch.no_grad():
        p = model(toks)[0, -1].softmax(-1)
        q = model.run_with_hooks(toks, fwd_hooks=[(NEURON_HOOK, clamp)])[0, -1].softmax(-1)
    kl = float((p * (p.log() - q.log())).sum())
    assert steer.change.kl == pytest.approx(kl, rel=1e-3, abs=1e-5) and steer.change.kl > 0
    top_up = int((q - p).argmax())
    assert steer.change.up[0].token == tiny_subject.token_strs([top_up])[0]
    assert steer.change.up[0].after > steer.change.up[0].before
    assert steer.change.down[0].after < steer.change.down[0].before
    assert steer.change.top_before[0].value == pytest.approx(float(p.max()), abs=1e-3)
    ablate = box.effect("ablate", AblateArgs(prompt=prompt))
    assert ablate.change.value == 0.0 and ablate.strength is None and ablate.change.kl >= 0
    assert "zeroed" in ablate.brief() and "strength 8" in steer.brief()
    assert all(x.after > x.before for x in steer.change.up) and all(
        x.after < x.before for x in steer.change.down
    )
    stronger = box.effect("steer", SteerArgs(prompt=prompt, strength=16))
    assert stronger.change.kl > steer.change.kl  # twice the clamp moves the distribution further


def test_steer_arguments_are_checked(synth_store, reader):
    with pytest.raises(ActionError, match="strength"):
        Toolbox.parse("steer", {"prompt": "x", "strength": 99}, ["steer"])
    with pytest.raises(ActionError, match="a text is empty"):
        Toolbox.parse("ablate", {"prompt": "  "}, ["ablate"])
    with pytest.raises(ActionError, match="strength"):
        Toolbox.parse("steer", {"prompt": "We met in"}, ["steer"])


def test_scripted_investigation_of_a_real_neuron_runs_the_effect_tools(neuron_store, tiny_subject, scripted):
    box = tiny_box(neuron_store, tiny_subject)
    llm = scripted("agent")
    llm.enqueue(
        act("output_effect", k=3),
        act("steer", prompt="the dog", strength=5),
        act("ablate", prompt="the dog"),
        act("finish", explanation="letters", supporting=["e1", "e2", "e3"]),
    )
    uid = f"tiny/{NEURON_HOOK}/3"
    out = investigate(
        neuron_store.path, uid, AgentSettings(agent=llm.spec, agent_mode="free"), reader=box.reader
    )
    assert [e.tool for e in out.experiments] == ["output_effect", "steer", "ablate", "finish"]
    assert not any(e.error for e in out.experiments) and out.investigation.status == "finished"
    assert len(out.experiments[0].result["promoted"]) == 3 and out.experiments[1].result["change"]["kl"] > 0
    system = llm.requests[0].messages[0].content
    assert "- steer(" in system and "- ablate(" in system and "- output_effect(" in system
    shown = [m.content for m in llm.requests[3].messages if m.role == "user"]
    assert any(s.startswith("e2 steer: next token after 'the dog'") for s in shown)
    stored = Store(neuron_store.path).experiments(out.investigation.id)
    assert stored[2].result["strength"] is None and stored[1].result["strength"] == 5


def test_native_backends_get_the_effect_tools_schemas(neuron_store, tiny_subject):
    box = tiny_box(neuron_store, tiny_subject)
    specs = {t.name: t.parameters for t in box.specs(box.available(["steer", "search", "finish"]))}
    assert set(specs) == {"steer", "search", "finish"}
    assert specs["steer"]["required"] == ["prompt", "strength"] and "pattern" in specs["search"]["properties"]


# -- chat ----------------------------------------------------------------------------------------------------
def test_chat_commands_for_the_new_tools_parse_or_say_why():
    assert parse_command('/steer 4 "We met in"') == ("steer", {"prompt": "We met in", "strength": 4.0})
    assert parse_command('/steer -2.5 "x"') == ("steer", {"prompt": "x", "strength": -2.5})
    assert parse_command('/ablate "We met in"') == ("ablate", {"prompt": "We met in"})
    assert parse_command('/search "March|May"') == ("search", {"pattern": "March|May"})
    assert parse_command("/effect") == ("output_effect", {})
    for bad, says in [
        ('/steer "x"', "a strength and a quoted prompt"),
        ('/steer big "x"', "must be a number"),
        ("/ablate", "one quoted prompt"),
        ('/search "a" "b"', "one quoted pattern"),
    ]:
        with pytest.raises(CommandError, match=says):
            parse_command(bad)


def test_chat_runs_search_and_says_why_steer_cannot_run_on_a_synthetic_unit(
    synth_store, scripted, monkeypatch
):
    monkeypatch.setattr("autointerp.agent.reader.load_tokenizer", lambda model: WordTokenizer())
    llm = scripted("agent")
    lines = ['/search "March"', '/search "(March"', '/steer 4 "We met in"', "/effect", "/quit"]
    res = invoke("chat", UNIT, "--db", synth_store.path, "--agent", llm.spec, input="\n".join(lines) + "\n")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "e1 search (you)" in out and "'March' 4.00" in out
    assert "not a valid regular expression" in out
    assert "e3 steer (you)" in out and "is a synthetic unit" in out and "e4 output_effect (you)" in out
    (inv,) = Store(synth_store.path).investigations(UNIT)
    assert [e.tool for e in Store(synth_store.path).experiments(inv.id)] == [
        "search",
        "search",
        "steer",
        "output_effect",
    ]


def test_effect_runs_off_the_event_loop(neuron_store, tiny_subject):
    box = tiny_box(neuron_store, tiny_subject)
    res = asyncio.run(box.run("ablate", AblateArgs(prompt="the cat")))
    assert res.change.value == 0.0


def test_an_intervention_that_changes_nothing_lists_no_shifts(tiny_subject):
    from autointerp.agent.tools import NextTokenResult
    from autointerp.subject.effects import next_token_change

    ids = tiny_subject.tokenizer("the cat", add_special_tokens=True)["input_ids"]
    change = next_token_change(tiny_subject, NEURON_HOOK, lambda act, hook: act, ids, 0.0)
    assert change.kl == 0 and change.up == [] and change.down == [] and change.top_before == change.top_after
    brief = NextTokenResult(prompt="the cat", strength=None, change=change).brief()
    assert "up: none" in brief and "down: none" in brief
