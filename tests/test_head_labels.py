"""Explaining and simulating attention heads with the scripted LLM: destination [[ ]] and sources {{ }}
in the explainer's prompt, the head simulator's prompt, and the usual scorers on a head store."""

from __future__ import annotations

from pathlib import Path

import pytest

from autointerp.llm.base import ChatRequest, TokenProbsRequest
from autointerp.pipeline import label
from autointerp.render import head_marked
from autointerp.store import Store
from autointerp.types import Context, Example, HeadAttention, Unit, UnitRef
from tests.conftest import recorded_store

WORDS = [" the", " big", " cub", " ran", " far", " and", " then", " slept", " in", " a", " den", " quietly"]
UNIT = "m/blocks.1.attn/head:0"


def head_example(kind: str, rank: int) -> Example:
    """A previous-token-like head that fires (0.9) on ' fox' looking back at ' red' in top examples."""
    tokens = ["<bos>"] + [WORDS[(rank + k) % len(WORDS)] for k in range(16)]
    acts, src, w = [0.0] * 17, [[] for _ in range(17)], [[] for _ in range(17)]
    for q in range(1, 17):
        acts[q] = 0.1
        src[q], w[q] = [q], [0.1]
    if kind in ("top", "quantile") or (kind == "random" and rank % 3 == 0):
        pos = 4 + rank % 8
        tokens[pos - 1], tokens[pos] = " red", " fox"
        acts[pos] = 0.9 - 0.01 * rank
        src[pos], w[pos] = [pos - 1, pos], [acts[pos], 0.05]
    ctx = Context(id=f"{kind}{rank}", token_ids=list(range(17)), tokens=tokens)
    return Example(
        unit_id=UNIT, kind=kind, rank=rank, context=ctx, acts=acts,
        quantile=rank % 5 if kind == "quantile" else None, attn=HeadAttention(src=src, weights=w),
    )  # fmt: skip


@pytest.fixture
def head_store(tmp_path: Path) -> Store:
    store, stats = recorded_store(tmp_path / "heads.db", unit_max=0.9, frac_firing=1.0)
    examples = [
        head_example(kind, r) for kind, n in (("top", 12), ("random", 12), ("quantile", 10)) for r in range(n)
    ]
    store.write_units([Unit(ref=UnitRef.parse(UNIT), run_id="r1", stats=stats)], examples)
    return store


def test_head_marked_shows_destination_and_sources() -> None:
    e = head_example("top", 0)
    text, pairs = head_marked(e, 8)
    assert "{{ red}}[[ fox]]" in text and text.count("[[") == 1
    assert pairs == "[[ fox]] <- {{ red}} 0.90 (after ' big')"  # the 0.05 self weight is below SOURCE_AT


def test_show_a_head_names_its_sources(head_store: Store) -> None:
    from typer.testing import CliRunner

    from autointerp import cli

    out = CliRunner().invoke(cli.app, ["show", UNIT, "--db", str(head_store.path), "--n", "2"])
    assert out.exit_code == 0, out.output
    assert "peak token <- sources" in out.output and "[[ fox]] <- {{ red}} 0.90" in out.output


def fox_probs(prefix: str, candidates: list[str]) -> dict[str, float]:
    return {"9": 0.9, "0": 0.1} if prefix.endswith(" fox\t") else {"0": 0.9, "9": 0.1}


def test_label_a_head_with_the_head_prompts(head_store: Store, scripted) -> None:
    llm = scripted(respond=lambda r: "attends from fox to the previous word red", probs=fox_probs)
    summary = label(
        head_store.path, explainer=llm.spec, methods=["head"], simulator_mode="head-exact",
        scorers=["correlation"],
    )  # fmt: skip
    assert not summary.failures, summary.failures
    (exp,) = head_store.explanations(UNIT)
    assert exp.text == "attends from fox to the previous word red" and exp.prompt == "explain-head@2"
    chat = next(r for r in llm.requests if isinstance(r, ChatRequest)).messages[-1].content
    assert "Top pairs (count): [[ fox]] <- {{ red}} x" in chat and "{{ red}}[[ fox]]" in chat
    sims = [r for r in llm.requests if isinstance(r, TokenProbsRequest)]
    assert sims and all(r.prompt.startswith("An attention head") for r in sims)
    (score,) = head_store.scores(exp.id)
    assert score.scorer == "correlation" and score.prompt == "simulate-head@1" and score.value > 0.9


def test_the_head_method_refuses_other_units(month_store: Store, scripted) -> None:
    llm = scripted()
    summary = label(month_store.path, explainer=llm.spec, methods=["head"], limit=1)
    assert summary.failures and "not an attention head" in summary.failures[0].error
