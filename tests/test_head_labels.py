"""Explaining and simulating attention heads with the scripted LLM: destination [[ ]] and sources {{ }}
in the explainer's prompt, the head simulator's prompt, and the usual scorers on a head store."""

from __future__ import annotations

from pathlib import Path

import pytest

from autointerp.errors import UserError
from autointerp.llm.base import ChatRequest, TokenProbsRequest
from autointerp.pipeline import label
from autointerp.render import head_marked
from autointerp.store import Store
from autointerp.types import Context, Example, HeadAttention, Unit, UnitRef
from autointerp.units import find_unit, match_unit_ids, parse_units, resolve_unit_ids
from tests.conftest import build_month_store, months_probs, recorded_store

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


@pytest.fixture
def mixed_store(tmp_path: Path) -> Store:
    """Two month neurons (m/blocks.0.mlp.hook_post/0, /1) and the head m/blocks.1.attn/head:0 in one store."""
    store = build_month_store(tmp_path / "mixed.db", n_units=2)
    stats = store.get_unit("m/blocks.0.mlp.hook_post/0").stats.model_copy(
        update={"max": 0.9, "frac_firing": 1.0}
    )
    examples = [
        head_example(kind, r) for kind, n in (("top", 12), ("random", 12), ("quantile", 10)) for r in range(n)
    ]
    store.write_units([Unit(ref=UnitRef.parse(UNIT), run_id="r1", stats=stats)], examples)
    return store


def months_or_fox(prefix: str, candidates: list[str]) -> dict[str, float]:
    return fox_probs(prefix, candidates) if prefix.endswith(" fox\t") else months_probs(prefix, candidates)


def test_a_mixed_run_picks_the_head_prompts_for_heads_only(mixed_store: Store, scripted) -> None:
    llm = scripted(probs=months_or_fox)
    summary = label(mixed_store.path, explainer=llm.spec)  # no methods, simulator mode auto
    assert not summary.failures, summary.failures
    by_unit = {r.unit_id: r.method for r in summary.results}
    assert by_unit == {
        "m/blocks.0.mlp.hook_post/0": "highlight", "m/blocks.0.mlp.hook_post/1": "highlight", UNIT: "head",
    }  # fmt: skip
    for uid, (exp_prompt, sim_prompt, sim) in {
        UNIT: ("explain-head@2", "simulate-head@1", "head-exact"),
        "m/blocks.0.mlp.hook_post/0": ("explain-highlight", "simulate-exact", "#exact"),
    }.items():
        (exp,) = mixed_store.explanations(uid)
        (score,) = mixed_store.scores(exp.id)
        assert exp.prompt.startswith(exp_prompt) and score.prompt.startswith(sim_prompt)
        assert score.simulator.endswith(sim) and score.value > 0.9
    heads = [
        r.prompt.startswith("An attention head") for r in llm.requests if isinstance(r, TokenProbsRequest)
    ]
    assert any(heads) and not all(heads)  # the head simulator for the head, the usual one for neurons
    again = label(mixed_store.path, explainer=llm.spec)  # resumable: the heads' scores count as done
    assert all(r.skipped for r in again.results)


def test_chosen_methods_apply_to_heads_too(mixed_store: Store, scripted) -> None:
    llm = scripted(probs=months_or_fox)
    summary = label(mixed_store.path, [UNIT], explainer=llm.spec, methods=["top"], simulator_mode="exact")
    ((uid, method),) = [(r.unit_id, r.method) for r in summary.results]
    assert (uid, method) == (UNIT, "top")
    (score,) = mixed_store.scores(mixed_store.explanations(UNIT)[0].id)
    assert score.prompt.startswith("simulate-exact")


def test_unit_specs_name_heads_by_layer_dot_head_and_patterns(mixed_store: Store) -> None:
    n0, n1 = "m/blocks.0.mlp.hook_post/0", "m/blocks.0.mlp.hook_post/1"
    assert match_unit_ids(mixed_store, ["1.0"]) == [UNIT]
    assert match_unit_ids(mixed_store, ["1.*", "*.0", "blocks.1.attn/head:0"]) == [UNIT]
    assert match_unit_ids(mixed_store, ["blocks.0.mlp.hook_post/*", UNIT]) == [n0, n1, UNIT]
    assert match_unit_ids(mixed_store, ["m/*/1"]) == [n1]
    for bad, why in (
        ("2.*", "No recorded unit"),
        ("0.0", "No recorded unit"),
        ("m/blocks.1.attn/7", "head:"),
    ):
        with pytest.raises(UserError, match=why):
            match_unit_ids(mixed_store, [bad])
    assert resolve_unit_ids(mixed_store, units="1.0") == [UNIT]
    assert resolve_unit_ids(mixed_store, units="1") == [n1]  # indices of every hook: the head's is 0
    assert resolve_unit_ids(mixed_store, hook="blocks.1.attn", units="0") == [UNIT]
    assert resolve_unit_ids(mixed_store, hook="blocks.0.mlp.hook_post", units="*.0,m/*/0") == [n0]
    with pytest.raises(UserError, match="record them with --heads 5.1"):
        parse_units("5.1")
    assert find_unit(mixed_store, "1.0") == find_unit(mixed_store, "*/head:0") == UNIT  # show, investigate
    with pytest.raises(UserError, match="matches 2 units"):
        find_unit(mixed_store, "blocks.0.mlp.hook_post/*")


def test_label_cli_selects_heads_with_units(mixed_store: Store, scripted) -> None:
    from typer.testing import CliRunner

    from autointerp import cli

    llm = scripted(probs=months_or_fox)
    args = ["label", "--db", str(mixed_store.path), "--explainer", llm.spec]
    out = CliRunner().invoke(cli.app, [*args, "--units", "1.*"])
    assert out.exit_code == 0, out.output
    assert [e.method for e in mixed_store.explanations(UNIT)] == ["head"]
    assert not mixed_store.explanations("m/blocks.0.mlp.hook_post/0")
    out = CliRunner().invoke(cli.app, [*args, "--unit", "9.*"])
    assert out.exit_code == 2 and "No recorded unit" in out.output
