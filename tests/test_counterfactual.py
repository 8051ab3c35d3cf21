"""Counterfactual parsing, prompts and settings (fast: no model)."""

import pytest

from autointerp.counterfactual import (
    CounterfactualSettings,
    edit_fraction,
    load_prompt,
    marked_snippet,
    parse_edit,
    settings_key,
)

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


def _app():
    import typer

    from autointerp.cli import user_errors
    from autointerp.counterfactual import counterfactuals_command

    app = typer.Typer()
    app.command(name="counterfactuals")(user_errors(counterfactuals_command))
    app.command(name="noop")(lambda: None)  # keep typer in multi-command mode, as in cli.py
    return app


def test_cli_help_and_unknown_unit(tmp_path):
    from typer.testing import CliRunner

    runner = CliRunner()
    res = runner.invoke(_app(), ["counterfactuals", "--help"])
    assert res.exit_code == 0 and "--keep-frac" in res.output and "--no-llm" in res.output
    res = runner.invoke(
        _app(), ["counterfactuals", "--db", str(tmp_path / "x.db"), "--unit", "m/blocks.1.x/3"]
    )
    assert res.exit_code == 2 and "not recorded" in res.output
    res = runner.invoke(_app(), ["counterfactuals", "--db", str(tmp_path / "x.db")])
    assert res.exit_code == 2 and "No recorded units" in res.output


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
