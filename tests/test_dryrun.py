"""`label --dry-run`: it counts exactly the calls and tokens the run then makes (scripted LLM), writes
nothing, prices API models from the table, and says so where it only estimates or knows no price."""

from __future__ import annotations

import hashlib
from pathlib import Path

from typer.testing import CliRunner

from autointerp import label
from autointerp.cli import app
from autointerp.dryrun import TYPICAL_EXPLANATION, dry_answer, estimate
from autointerp.llm.base import ChatRequest, Message
from autointerp.pipeline import LabelSettings

HOOK = "blocks.0.mlp.hook_post"
UNITS = [f"m/{HOOK}/{i}" for i in range(3)]
SCORERS = ["correlation", "detection", "fuzzing"]
ANSWER = "months like X"  # as long (in words) as what the scripted explainer answers


def explain(request: ChatRequest) -> str:
    """A unit's own explanation (the months store's units fire on March, June, July)."""
    text = request.messages[-1].content
    month = next((m for m in ("March", "June", "July") if m in text.split("Top activating")[-1]), "X")
    return dry_answer(request, f"months like {month}")


def files(db: Path) -> dict[str, str]:
    """sha256 of the store file and its write-ahead log (the -shm index changes with any reader)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (db, Path(f"{db}-wal")) if p.exists()}


def test_a_dry_run_counts_exactly_what_the_run_then_sends(month_store, scripted):
    llm = scripted(respond=explain)
    s = LabelSettings(explainer=llm.spec, simulator=llm.spec, scorers=SCORERS)
    before = files(month_store.path)
    est = estimate(month_store.path, UNITS, s, explanation=ANSWER)
    assert files(month_store.path) == before and not llm.requests  # nothing written, nothing asked
    assert (est.units, est.to_label, est.already_done, est.unlabellable) == (3, 3, 0, 0)

    summary = label(month_store.path, UNITS, explainer=llm.spec, scorers=SCORERS)
    for role in ("explainer", "simulator"):
        got, want = est.roles[role], summary.usage[role]
        assert (got.calls, got.prompt_tokens) == (want.calls, want.prompt_tokens), role
        assert got.calls > 0 and got.exact and got.price is None  # a local / scripted model costs nothing
    assert est.roles["explainer"].completion_typical == summary.usage["explainer"].completion_tokens
    assert est.roles["explainer"].completion_bound == 3 * 24  # the explainer's max_tokens

    again = estimate(month_store.path, UNITS, s, explanation=ANSWER)
    assert again.already_done == 3 and again.to_label == 0 and again.total("calls") == 0


def test_json_simulation_and_chat_judges_are_counted_as_the_run_asks_them(month_store, scripted):
    llm = scripted(token_probs=False, respond=explain)
    s = LabelSettings(explainer=llm.spec, simulator=llm.spec, scorers=SCORERS)
    est = estimate(month_store.path, UNITS[:1], s, explanation=ANSWER)
    summary = label(month_store.path, UNITS[:1], explainer=llm.spec, scorers=SCORERS)
    sim, want = est.roles["simulator"], summary.usage["simulator"]
    assert (sim.calls, sim.prompt_tokens, sim.completion_typical) == (
        want.calls,
        want.prompt_tokens,
        want.completion_tokens,
    )
    assert sim.completion_typical > sim.calls  # JSON lists written out, not token probabilities read
    assert "failed" not in summary.results[0].status.values()  # the run's answers parsed: no retries


def test_dry_answers_have_the_length_the_prompt_asks_for():
    sim = ChatRequest(
        messages=[Message(role="user", content="Tokens:\na\nb\nGive exactly 2 integers.")], json_answer=True
    )
    listing = "Explanation: x\nExample 0: a\nAnswer: [1]\n\nExplanation: y\n"  # a worked example first
    listing += "Example 0: a\nExample 1: b\nExample 2: c\nAnswer:"
    judge = ChatRequest(messages=[Message(role="user", content=listing)], json_answer=True)
    assert dry_answer(sim, "e") == "[0, 0]" and dry_answer(judge, "e") == "[0,0,0]"
    assert dry_answer(ChatRequest(messages=[Message(role="user", content="hi")]), "e") == "e"
    assert len(TYPICAL_EXPLANATION.split()) == 8  # the explainer's prompt asks for at most 8 words


def test_the_cli_dry_run_prices_api_models_and_writes_nothing(month_store, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a dry run needs no key
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    before = files(month_store.path)
    db = str(month_store.path)
    out = CliRunner().invoke(
        app, ["label", "--db", db, "--dry-run", "--explainer", "openai:gpt-4o-mini"], terminal_width=200
    )
    assert out.exit_code == 0, out.output
    flat = " ".join(out.output.split())
    assert "3 units: 3 to label" in flat and "per unit" in flat and "$" in flat
    assert "estimate: characters / 4" in flat or "tiktoken" in flat
    assert files(month_store.path) == before and not month_store.runs("label")

    out = CliRunner().invoke(
        app, ["label", "--db", db, "--dry-run", "--explainer", "anthropic:claude-nova-9"], terminal_width=200
    )
    flat = " ".join(out.output.split())
    assert out.exit_code == 0 and "No price is known for anthropic:claude-nova-9: tokens only" in flat
    assert "Anthropic has no offline tokenizer" in flat

    out = CliRunner().invoke(app, ["label", "--db", db + ".missing", "--dry-run"])
    assert out.exit_code == 2 and "No store at" in out.output
    assert not Path(db + ".missing").exists()
