"""Attention heads as units: ids, specs, the reader, recording in the shared pass, the stored sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autointerp import record_units
from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.subject.heads import MIN_WEIGHT, TOP_SOURCES, HeadReader, check_heads
from autointerp.subject.model import SubjectModel
from autointerp.types import Context, Example, HeadAttention, UnitRef
from autointerp.units import parse_heads, resolve_unit_ids
from tests.conftest import CharTokenizer

N_HEADS = 4


def tiny_gqa(seed: int = 0, n_ctx: int = 32) -> SubjectModel:
    """A 2-layer random HookedTransformer with grouped-query attention (4 query heads, 1 key/value head),
    like Gemma 3: real hooks, no download."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=n_ctx, d_head=4, n_heads=N_HEADS, n_key_value_heads=1, d_mlp=32,
        d_vocab=50, act_fn="gelu", default_prepend_bos=True, seed=seed,
    )  # fmt: skip
    return SubjectModel("tiny", HookedTransformer(cfg), CharTokenizer(vocab=50))


@pytest.fixture(scope="module")
def tiny() -> SubjectModel:
    return tiny_gqa()


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    text = tmp_path / "c.txt"
    text.write_text("the cat sat on the mat and the dog sat on the log. " * 6)
    return text


KW = dict(ctx=12, max_tokens=96, batch_size=4, top_k=3, quantile_pool=3, n_random=2, n_negative=2)


def test_head_unit_ids_round_trip_and_reject_mixups() -> None:
    ref = UnitRef.parse("gemma-3-270m/blocks.3.attn/head:1")
    assert (ref.hook, ref.index, ref.is_head, ref.layer) == ("blocks.3.attn", 1, True, 3)
    assert ref.id == "gemma-3-270m/blocks.3.attn/head:1"
    assert UnitRef(model="m", hook="blocks.0.attn", index=2).id == "m/blocks.0.attn/head:2"
    assert not UnitRef.parse("m/blocks.3.mlp.hook_post/1").is_head
    for bad in ("m/blocks.3.attn/1", "m/blocks.3.mlp.hook_post/head:1"):
        with pytest.raises(UserError, match="head:H"):
            UnitRef.parse(bad)


def test_parse_heads() -> None:
    assert parse_heads("5.0,3.1, 3.1") == [(3, 1), (5, 0)]
    assert parse_heads("all") == [] and parse_heads(None) is None
    for bad in ("3", "3.x", "3.1;4.0", "-1.0"):
        with pytest.raises(UserError, match="LAYER.HEAD"):
            parse_heads(bad)


def test_check_heads_names_the_range() -> None:
    counts = {"blocks.0.attn": 4, "blocks.1.attn": 4}
    assert len(check_heads(counts, [], "m")) == 8
    with pytest.raises(UserError, match=r"layer 1 of m has heads 0\.\.3"):
        check_heads(counts, [(1, 4)], "m")
    with pytest.raises(UserError, match=r"layers 0\.\.1"):
        check_heads(counts, [(2, 0)], "m")
    with pytest.raises(UserError, match="exposes no attention pattern"):
        check_heads({}, [], "m")


def test_reader_skips_bos_keys_and_keeps_sparse_top_sources() -> None:
    t = 10
    pattern = torch.zeros(1, 2, t, t)
    pattern[0, 1, :, 0] = 0.5  # half of every query's attention on BOS
    for q in range(t):
        pattern[0, 1, q, q] += 0.3  # self
        if q >= 2:
            pattern[0, 1, q, q - 1] += 0.197
            pattern[0, 1, q, q - 2] += 0.003  # below MIN_WEIGHT
    key_mask = torch.zeros(1, t, dtype=torch.bool)
    key_mask[0, 0] = True
    reader = HeadReader(layer=0, heads=[1])
    acts, src, w = reader.read({"blocks.0.attn.hook_pattern": pattern}, key_mask)
    assert acts.shape == (1, t, 1) and src.shape == w.shape == (1, t, 1, TOP_SOURCES)
    assert acts[0, 5, 0].item() == pytest.approx(0.3)  # the BOS weight 0.5 is not the activation
    assert src[0, 5, 0, :2].tolist() == [5, 4] and (src[0, 5, 0, 2:] == -1).all()
    assert w[0, 5, 0, :2].tolist() == pytest.approx([0.3, 0.197]) and (w[0, 5, 0, 2:] == 0).all()
    assert src.dtype == torch.int16 and MIN_WEIGHT > 0.003


def test_tl_pattern_is_per_query_head_under_gqa(tiny: SubjectModel) -> None:
    acts = tiny.hook_acts(
        torch.tensor([[1, 5, 6, 7]]), ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z"]
    )
    assert acts["blocks.1.attn.hook_pattern"].shape == (1, N_HEADS, 4, 4)
    assert acts["blocks.1.attn.hook_z"].shape == (1, 4, N_HEADS, 4)
    assert tiny.head_counts == {"blocks.0.attn": N_HEADS, "blocks.1.attn": N_HEADS}


def _pattern(subject: SubjectModel, token_ids: list[int], layer: int) -> torch.Tensor:
    acts = subject.hook_acts(torch.tensor([token_ids]), [f"blocks.{layer}.attn.hook_pattern"])
    return acts[f"blocks.{layer}.attn.hook_pattern"][0].float()  # (H, T, T)


def test_record_heads_with_neurons_in_one_pass(tmp_path: Path, tiny: SubjectModel, corpus_file: Path) -> None:
    db = tmp_path / "h.db"
    calls = []
    real = tiny.hook_acts
    tiny.hook_acts = lambda toks, hooks, **k: (
        calls.append((toks.shape[1], sorted(hooks))) or real(toks, hooks, **k)
    )
    try:
        record_units(
            db, ["blocks.0.mlp.hook_post"], units=[0, 1], heads="1.2,0.3", subject=tiny,
            corpus=[str(corpus_file)], **KW,
        )  # fmt: skip
    finally:
        del tiny.hook_acts
    streamed = [hooks for t, hooks in calls if t == KW["ctx"]]  # not the one probe of every hook's width
    assert len(streamed) == 2 and all(  # one forward pass per batch of 4 windows reads every source
        c == ["blocks.0.attn.hook_pattern", "blocks.0.mlp.hook_post", "blocks.1.attn.hook_pattern"]
        for c in streamed
    )
    store = Store(db)
    ids = {u.id for u in store.units()}
    assert {"tiny/blocks.1.attn/head:2", "tiny/blocks.0.attn/head:3"} <= ids and len(ids) == 4
    assert all(e.attn is None for e in store.examples("tiny/blocks.0.mlp.hook_post/1"))
    examples = store.examples("tiny/blocks.1.attn/head:2")
    assert {e.kind for e in examples} == {"top", "quantile", "random"}  # attention > 0: no negatives
    for e in examples:
        pattern = _pattern(tiny, e.context.token_ids, 1)[2]  # (T, T) of head 2
        assert e.context.token_ids[0] == 1 and e.acts[0] == 0.0  # BOS: left out
        want = pattern[:, 1:].amax(dim=-1)  # the largest weight to a key other than BOS
        np.testing.assert_allclose(e.acts[1:], want[1:].numpy(), rtol=1e-2, atol=1e-3)
        assert e.attn is not None and len(e.attn.src) == len(e.acts) and e.attn.src[0] == []
        for q in range(1, len(e.acts)):
            src, w = e.attn.src[q], e.attn.weights[q]
            assert 0 < len(src) <= min(TOP_SOURCES, q) and 0 not in src and all(s <= q for s in src)
            assert w == sorted(w, reverse=True) and min(w) >= MIN_WEIGHT
            assert w[0] == pytest.approx(e.acts[q], rel=1e-2) and src[0] == int(pattern[q, 1:].argmax()) + 1
    top = store.examples("tiny/blocks.1.attn/head:2", "top")
    assert [e.max_act for e in top] == sorted((e.max_act for e in top), reverse=True)
    assert resolve_unit_ids(store, heads="1.2") == ["tiny/blocks.1.attn/head:2"]
    assert len(resolve_unit_ids(store, heads="all")) == 2
    with pytest.raises(UserError, match="No recorded attention heads"):
        resolve_unit_ids(store, heads="0.0")


def test_out_norm_is_the_heads_output_norm(tmp_path: Path, tiny: SubjectModel, corpus_file: Path) -> None:
    db = tmp_path / "n.db"
    record_units(
        db, [], heads="0.1", head_activation="out-norm", subject=tiny, corpus=[str(corpus_file)], **KW
    )
    (e, *_) = Store(db).examples("tiny/blocks.0.attn/head:1", "top")
    z = tiny.hook_acts(torch.tensor([e.context.token_ids]), ["blocks.0.attn.hook_z"])["blocks.0.attn.hook_z"]
    want = (z[0, :, 1].float() @ tiny.model.blocks[0].attn.W_O[1].float()).norm(dim=-1)
    np.testing.assert_allclose(e.acts[1:], want[1:].detach().numpy(), rtol=1e-2, atol=1e-4)
    assert e.attn is not None and e.attn.src[3]  # the sources are kept in either mode


def test_all_heads_and_bad_heads(tmp_path: Path, tiny: SubjectModel, corpus_file: Path) -> None:
    kw = dict(KW, corpus=[str(corpus_file)], subject=tiny)
    record_units(tmp_path / "a.db", [], heads="all", **kw)
    assert len(Store(tmp_path / "a.db").units()) == 2 * N_HEADS
    with pytest.raises(UserError, match=r"layer 1 of tiny has heads 0\.\.3"):
        record_units(tmp_path / "b.db", [], heads="1.4", **kw)
    with pytest.raises(UserError, match="--heads all"):
        record_units(tmp_path / "c.db", ["blocks.1.attn"], **kw)


def test_heads_are_checked_against_the_cache_before_the_model_loads(
    tmp_path, monkeypatch, corpus_file
) -> None:
    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr("autointerp.subject.recorder.load_subject", boom)
    monkeypatch.setenv("AUTOINTERP_HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / "hooks" / "gemma-3-270m.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"blocks.0.hook_resid_post": 640, "blocks.0.attn": 4, "blocks.1.attn": 4}))
    with pytest.raises(UserError, match=r"layer 0 of gemma-3-270m has heads 0\.\.3"):
        record_units(tmp_path / "x.db", [], heads="0.7", corpus=[str(corpus_file)])


def test_head_examples_round_trip_through_the_store(tmp_path: Path) -> None:
    from autointerp.types import RunRecord, Unit, UnitStats

    store = Store(tmp_path / "s.db")
    store.start_run(RunRecord(id="r", kind="record", settings={}, code_version="t", started_at="now"))
    stats = UnitStats(
        n_tokens=3, max=1.0, mean=0.5, std=0.1, frac_firing=1.0, fire_threshold=0.0,
        hist_edges=[float("-inf"), 0.0, float("inf")], hist_counts=[0, 3],
    )  # fmt: skip
    unit = Unit(ref=UnitRef.parse("m/blocks.2.attn/head:0"), run_id="r", stats=stats)
    attn = HeadAttention(src=[[], [1], [2, 1]], weights=[[], [0.75], [0.5, 0.25]])
    ctx = Context(id="c", token_ids=[1, 5, 6], tokens=["<bos>", "a", "b"])
    store.write_units(
        [unit], [Example(unit_id=unit.id, kind="top", rank=0, context=ctx, acts=[0, 0.75, 0.5], attn=attn)]
    )
    (back,) = store.examples(unit.id)
    assert back.attn == attn


def test_v6_store_migrates_to_v9_with_head_columns(tmp_path: Path) -> None:
    import sqlite_utils

    from autointerp import store as store_mod
    from autointerp.types import HeadMetrics
    from tests.test_store import make_unit

    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    for v in range(6):
        store_mod.MIGRATIONS[v](db)
    db["meta"].insert({"key": "schema_version", "value": "6"}, pk="key")
    assert "attn" not in db["examples"].columns_dict and "head_metrics" not in db.table_names()
    u = make_unit(0)
    row = store_mod._unit_row(u)
    db["units"].insert({k: v for k, v in row.items() if k in db["units"].columns_dict})  # a v6 row
    db["contexts"].insert({"id": "c", "token_ids": "[1, 2]", "tokens": '["a", " b"]'})
    acts = np.array([0.0, 1.5], dtype=np.float32)
    db["examples"].insert(
        {"unit_id": u.id, "kind": "top", "rank": 0, "context_id": "c", "acts": acts.tobytes(),
         "max_act": 1.5, "max_pos": 1, "provenance": "{}"}
    )  # fmt: skip
    db.conn.commit()
    store = Store(path)
    assert store.schema_version() == store_mod.SCHEMA_VERSION >= 9
    (e,) = store.examples(u.id)
    assert e.attn is None and e.acts == [0.0, 1.5]
    m = HeadMetrics(
        model="m", layer=1, head=2, previous_token=0.9, induction=0.1, duplicate_token=0.0, bos=0.05,
        self_attn=0.02, entropy=0.4, mean_distance=1.1, categories=["previous-token"], settings={"ctx": 64},
    )  # fmt: skip
    store.put_head_metrics([m])
    store.put_head_metrics([m.model_copy(update={"induction": 0.2})])  # replaced, not added
    (back,) = store.head_metrics("m")
    assert back.induction == 0.2 and back.categories == ["previous-token"] and back.settings == {"ctx": 64}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--heads", "3.x"], "LAYER.HEAD"),
        (["--heads", "all", "--head-activation", "bogus"], "--head-activation 'bogus' is not one of"),
    ],
)
def test_record_cli_rejects_bad_head_options_before_loading(tmp_path, monkeypatch, args, says) -> None:
    from typer.testing import CliRunner

    from autointerp import cli

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr("autointerp.subject.recorder.load_subject", boom)
    out = CliRunner().invoke(cli.app, ["record", "--db", str(tmp_path / "x.db"), *args])
    assert out.exit_code == 2 and says in " ".join(out.output.split()), out.output
    assert not (tmp_path / "x.db").exists()
