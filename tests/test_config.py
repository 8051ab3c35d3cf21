"""The config file: found where documented, flags override it, its prices and key variables take
effect, and a bad file is one sentence naming the file and the field (exit 2, before anything loads)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from autointerp.cli import app
from autointerp.config import load_config
from autointerp.errors import UserError
from autointerp.llm import KEY_ENV, configure_keys, get_llm
from autointerp.llm.prices import configure, cost_usd

GOOD = """
[models]
explainer = "openai:lab-model"
simulator = "local:qwen2.5-coder-1.5b"

[keys]
openai = "LAB_OPENAI_KEY"

[prices]
"lab-model" = { input = 1.0, output = 4.0 }

[label]
methods = ["top"]
scorers = ["correlation", "detection"]
concurrency = 2
"""


@pytest.fixture(autouse=True)
def _reset():
    yield
    configure({})
    configure_keys({})


def test_the_config_is_found_in_the_working_directory_or_pyproject(tmp_path):
    assert load_config(cwd=tmp_path).source is None  # none: built-in defaults
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.autointerp.label]\nconcurrency = 3\n'
    )
    assert load_config(cwd=tmp_path).label.concurrency == 3
    (tmp_path / "autointerp.toml").write_text(GOOD)  # autointerp.toml wins over pyproject.toml
    cfg = load_config(cwd=tmp_path)
    assert cfg.label.concurrency == 2 and cfg.models.explainer == "openai:lab-model"
    other = tmp_path / "other.toml"
    other.write_text("[label]\nconcurrency = 5\n")
    assert load_config(other, cwd=tmp_path).label.concurrency == 5  # --config wins over both


def test_prices_and_key_variables_take_effect(tmp_path, monkeypatch):
    (tmp_path / "autointerp.toml").write_text(GOOD)
    load_config(cwd=tmp_path).apply()
    assert cost_usd("lab-model", 1_000_000, 1_000_000) == pytest.approx(5.0)
    assert KEY_ENV["openai"] == "LAB_OPENAI_KEY" and KEY_ENV["anthropic"] == "ANTHROPIC_API_KEY"
    monkeypatch.delenv("LAB_OPENAI_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    with pytest.raises(UserError, match="set LAB_OPENAI_KEY"):
        get_llm("openai:lab-model")
    monkeypatch.setenv("LAB_OPENAI_KEY", "sk-lab")
    assert get_llm("openai:lab-model").spec == "openai:lab-model"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[label]\nconcurrency = 0\n", "label.concurrency"),
        ("[label]\nscorers = ['correlation', 'vibes']\n", "label.scorers"),
        ("[models]\nexplainer = 'gpt-4o'\n", "models.explainer"),
        ("[prices]\n'm' = { input = -1, output = 1 }\n", "prices.m.input"),
        ("[keys]\nopenai = 'not a name'\n", "keys.openai"),
        ("[labels]\nconcurrency = 2\n", "labels"),
        ("[label\n", "not valid TOML"),
    ],
)
def test_a_bad_config_is_one_sentence_naming_file_and_field(tmp_path, text, field):
    path = tmp_path / "autointerp.toml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(cwd=tmp_path)
    assert str(e.value).startswith(str(path)) and field in str(e.value)
    out = CliRunner().invoke(app, ["label", "--db", str(tmp_path / "x.db"), "--config", str(path)])
    flat = " ".join(out.output.split())
    assert out.exit_code == 2 and flat.startswith(f"error: {path}") and field in flat
    assert not (tmp_path / "x.db").exists()


def test_flags_override_the_config(month_store, tmp_path, monkeypatch):
    cfg = tmp_path / "lab.toml"
    cfg.write_text(GOOD)
    monkeypatch.delenv("LAB_OPENAI_KEY", raising=False)
    db = str(month_store.path)
    run = ["label", "--db", db, "--dry-run", "--config", str(cfg)]
    out = CliRunner().invoke(app, run, terminal_width=200)
    flat = " ".join(out.output.split())
    assert out.exit_code == 0, out.output
    assert "openai:lab-model" in flat and "$" in flat  # the config's explainer, priced by its [prices]
    out = CliRunner().invoke(app, [*run, "--explainer", "anthropic:claude-haiku-4-5"], terminal_width=200)
    flat = " ".join(out.output.split())
    assert out.exit_code == 0 and "anthropic:claude-haiku-4-5" in flat and "openai:lab-model" not in flat
    missing = CliRunner().invoke(app, ["label", "--db", db, "--config", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "No config file at" in missing.output


@pytest.mark.parametrize(
    "command",
    [
        ["counterfactuals", "--db", "DB", "--unit", "u"],
        ["investigate", "u", "--db", "DB"],
        ["chat", "u", "--db", "DB"],
        ["bench", "--db", "DB"],
        ["serve", "--db", "DB"],
    ],
)
def test_every_command_reads_the_app_wide_config_first(tmp_path, command):
    bad = tmp_path / "lab.toml"
    bad.write_text('[models]\nexplainer = "nope"\n')
    db = str(tmp_path / "x.db")
    out = CliRunner().invoke(app, ["--config", str(bad), *[db if a == "DB" else a for a in command]])
    flat = " ".join(out.output.split())
    assert out.exit_code == 2 and flat.startswith(f"error: {bad}") and "models.explainer" in flat, flat
    assert not (tmp_path / "x.db").exists()
