"""Counterfactual parsing, prompts and settings (fast: no model)."""

import asyncio
import re

import pytest

from autointerp.counterfactual import (
    CounterfactualSettings,
    edit_fraction,
    load_prompt,
    marked_snippet,
    parse_edit,
    settings_key,
)
from autointerp.store import Store

ORIGINAL = "The meeting was moved to March 3rd because of the storm."


def test_a_wellformed_answer_gives_the_edit():
    got = parse_edit("EDITED: The meeting was moved to the hall 3rd because of the storm.", ORIGINAL)
    assert got.text == "The meeting was moved to the hall 3rd because of the storm." and not got.error
    # marks the model kept, quotes and trailing chatter on later lines are dropped
    got = parse_edit(
        'Sure.\nEDITED: "The meeting was [[moved]] to May 3rd because of the storm."\nDone', ORIGINAL
    )
    assert got.text == "The meeting was moved to May 3rd because of the storm."


@pytest.mark.parametrize(
    "answer, why",
    [
        ("", "no 'EDITED:'"),
        ("Sure! Here is the text without the month.", "no 'EDITED:'"),
        ("EDITED:", "empty"),
        ("EDITED:   \n", "empty"),
        (f"EDITED: {ORIGINAL}", "identical"),
        (
            "EDITED: the  meeting was moved to March 3rd because of the storm.".replace("the ", "The ", 1),
            "identical",
        ),
        ("EDITED: Completely different words replace everything here now", "not a minimal edit"),
    ],
)
def test_malformed_answers_are_failures_never_edits(answer, why):
    got = parse_edit(answer, ORIGINAL)
    assert got.text is None and why in got.error


def test_edit_fraction():
    assert edit_fraction(ORIGINAL, ORIGINAL) == 0
    assert 0 < edit_fraction(ORIGINAL, ORIGINAL.replace("March", "May")) < 0.15
    assert edit_fraction("a b c", "x y z") == 1


def test_prompts_are_versioned_few_shot_chats():
    for name in ("counterfactual_off", "counterfactual_on"):
        p = load_prompt(name)
        assert p.tag.startswith(name.replace("_", "-") + "@")
    msgs = load_prompt("counterfactual_off").messages(text="in [[June]] 1998")
    assert [m.role for m in msgs][:2] == ["system", "user"] and msgs[-1].role == "user"
    assert msgs[-1].content == "TEXT: in [[June]] 1998"
    assert sum(m.role == "assistant" for m in msgs) >= 2 and all(m.content for m in msgs)
    msgs = load_prompt("counterfactual_on").messages(examples=["in [[May]]", "[[July]] 4"], text="a b")
    assert msgs[-1].content == "EXAMPLES:\n- in [[May]]\n- [[July]] 4\nTEXT: a b"


def test_marked_snippet_keeps_the_leading_space_outside_the_mark():
    toks = ["<bos>", "It", " opened", " in", " June", " 1998", "."]
    plain, marked = marked_snippet(toks, 1, 4, 6)
    assert plain == "It opened in June 1998" and marked == "It opened in [[June]] 1998"


def test_settings_key_names_the_settings_and_the_llm():
    a = settings_key(CounterfactualSettings(), "local:smollm2-135m")
    assert a == settings_key(CounterfactualSettings(), "local:smollm2-135m")
    assert a != settings_key(CounterfactualSettings(keep_frac=0.9), "local:smollm2-135m")
    assert a != settings_key(CounterfactualSettings(), "local:qwen2.5-coder-1.5b")


def test_cli_help_and_unknown_unit(tmp_path):
    from typer.testing import CliRunner

    from autointerp.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["counterfactuals", "--help"])
    assert res.exit_code == 0 and "--keep-frac" in res.output and "--no-llm" in res.output
    typo = tmp_path / "typo.db"
    res = runner.invoke(app, ["counterfactuals", "--db", str(typo), "--unit", "m/blocks.1.x/3"])
    assert res.exit_code == 2 and "No store at" in res.output and not typo.exists()  # no empty store made
    Store(tmp_path / "x.db")  # an empty store
    res = runner.invoke(app, ["counterfactuals", "--db", str(tmp_path / "x.db"), "--unit", "m/blocks.1.x/3"])
    assert res.exit_code == 2 and "not recorded" in res.output
    res = runner.invoke(app, ["counterfactuals", "--db", str(tmp_path / "x.db")])
    assert res.exit_code == 2 and "No recorded units" in res.output
    res = runner.invoke(app, ["counterfactuals", "--db", str(tmp_path / "x.db"), "--n-examples", "-1"])
    assert res.exit_code == 2 and "--n-examples" in res.output


def test_probe_reads_special_tokens_as_the_recorder_stores_them(char_tokenizer):
    """A unit that is largest at BOS: the probe reads BOS as off (0.0) unless the run kept it."""
    from types import SimpleNamespace

    from autointerp.counterfactual import UnitProbe
    from autointerp.subject.model import SubjectModel
    from autointerp.subject.recorder import UnitSource

    subject = SubjectModel(
        "tiny", SimpleNamespace(cfg=SimpleNamespace(default_prepend_bos=True)), char_tokenizer()
    )
    src = UnitSource(
        hook="synthetic.x", indices=[0], from_tokens=lambda t: (t == 1).float()[..., None] * 9 + 1
    )
    seqs = [[1, 5, 6], [1, 7]]
    assert [a.tolist() for a in UnitProbe(subject, src).acts(seqs)] == [[0.0, 1.0, 1.0], [0.0, 1.0]]
    kept = UnitProbe(subject, src, include_special=True).acts(seqs)
    assert [a.tolist() for a in kept] == [[10.0, 1.0, 1.0], [10.0, 1.0]]


class EditingLLM:
    """A scripted LLM: `off` prompts get the marked token replaced by 'y', `on` prompts get ' x' added."""

    spec = "scripted:edits"

    def __init__(self):
        self.requests = []

    async def chat(self, req):
        from types import SimpleNamespace

        self.requests.append(req)
        text = req.messages[-1].content.split("TEXT: ", 1)[1]
        edited = re.sub(r"\[\[.*?\]\]", "y", text) if "[[" in text else text + " x"
        return SimpleNamespace(text=f"EDITED: {edited}")


def test_generate_inside_a_running_loop_stores_verified_edits_linked_to_their_sources(
    tmp_path, char_tokenizer, monkeypatch
):
    """The whole flow on a synthetic 'letter x' unit (no model): called from inside a running event loop,
    every verified edit is stored with a typed link to a stored example; sampling scores only edits of
    held-out examples; a second run with the same settings resumes without an LLM call."""
    from types import SimpleNamespace

    from autointerp.bench.synthetic import SyntheticUnit, TokensRule, synthetic_sources
    from autointerp.counterfactual import UnitProbe, generate_counterfactuals
    from autointerp.sampling import SampleSettings, sample_unit
    from autointerp.store import Store
    from autointerp.subject.model import SubjectModel
    from autointerp.subject.recorder import Recorder
    from autointerp.types import RecordSettings, SourceRef

    subject = SubjectModel(
        "tiny", SimpleNamespace(cfg=SimpleNamespace(default_prepend_bos=True)), char_tokenizer()
    )
    text = tmp_path / "c.txt"
    text.write_text("the cat sat on the mat near a big red door x then went home. " * 30)
    unit = SyntheticUnit(name="x", explanation="the letter x", rule=TokensRule(tokens=["x"]))
    (source,) = synthetic_sources(subject.token_strs, [unit])
    store = Store(tmp_path / "x.db")
    rs = RecordSettings(
        model="tiny", hooks=[unit.hook], corpus=[str(text)], ctx=32, max_tokens=32 * 40, top_k=4
    )
    Recorder(subject, rs, [source]).run(store)
    uid = f"tiny/{unit.hook}/0"
    monkeypatch.setattr(UnitProbe, "for_unit", classmethod(lambda cls, subj, *a, **k: cls(subj, source)))
    llm = EditingLLM()
    s = CounterfactualSettings(n_examples=4, n_on=2, n_hard=0)

    async def in_a_loop():
        asyncio.get_running_loop()  # what Jupyter has: asyncio.run would refuse here
        return generate_counterfactuals(store, subject, [uid], llm, s)

    summary = asyncio.run(in_a_loop())
    (res,) = summary.units
    assert [c.status for c in res.candidates] == ["verified"] * 6  # 4 `off`, 2 `on`
    stored = {SourceRef.of(e): e for e in store.examples(uid) if e.kind in ("top", "negative", "random")}
    cfs = store.examples(uid, "counterfactual")
    assert len(cfs) == 6 and all(e.source in stored for e in cfs)
    for e in cfs:
        src = stored[e.source]
        assert (src.kind == "top") == (e.provenance["direction"] == "off")
        assert e.max_act == (0.0 if src.kind == "top" else 1.0)  # the edit moved the unit
    tops = {t.rank: t for t in store.examples(uid, "top")}
    assert {m.source for m in store.examples(uid, "minimal")} == {SourceRef.of(t) for t in tops.values()}

    sample = sample_unit(store, uid, SampleSettings(n_explain=2, n_test_top=1))
    read = {SourceRef.of(e) for e in sample.explain}
    assert read and all(edit.source not in read for _, edit in sample.counterfactual_pairs)
    assert {SourceRef.of(src) for src, _ in sample.counterfactual_pairs} == {e.source for e in cfs} - read
    assert {e.source for e in sample.contrast if e.kind == "counterfactual"} == read

    n = len(llm.requests)
    again = generate_counterfactuals(store, subject, [uid], llm, s)
    assert again.skipped == [uid] and len(llm.requests) == n
