"""Shards and the lossless merge: n record shards + merge equal one run, unit by unit; label shards union;
bad shard specs and stores that do not belong together are refused in one sentence (exit 2)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from autointerp import cli
from autointerp.bench.synthetic import PositionRule, SyntheticUnit, TokensRule, WeightsRule, synthetic_sources
from autointerp.errors import UserError
from autointerp.pipeline import label
from autointerp.scale.merge import merge_stores
from autointerp.scale.shards import ShardSpec
from autointerp.store import SCHEMA_VERSION, Store
from autointerp.subject.model import SubjectModel
from autointerp.subject.recorder import KeyedTopK, Recorder
from autointerp.types import RecordSettings
from tests.conftest import build_month_store

UNITS = [
    SyntheticUnit(name="a", explanation="the letter a", rule=TokensRule(tokens=["a"])),  # ties everywhere
    SyntheticUnit(name="graded", explanation="c, t, s", rule=WeightsRule(weights={"c": 1, "t": 2.5, "s": 4})),
    SyntheticUnit(name="start", explanation="window start", rule=PositionRule(start=1, stop=3, value=2)),
    SyntheticUnit(name="never", explanation="nothing", rule=TokensRule(tokens=["Q"])),
]
TEXT = "".join(f"{w} sat on a mat by the door {i}. " for i, w in enumerate(["a cat", "the dog", "tom"] * 30))


def invoke(*args: object):  # noqa: ANN201 - click Result
    return CliRunner().invoke(cli.app, [str(a) for a in args])


@pytest.fixture
def tiny(tmp_path, char_tokenizer):
    """record(db, **settings): the synthetic units over a small corpus, through the real recorder."""
    subject = SubjectModel(
        "tiny", SimpleNamespace(cfg=SimpleNamespace(default_prepend_bos=True)), char_tokenizer()
    )
    text = tmp_path / "c.txt"
    text.write_text(TEXT)

    def record(db: Path, **kw) -> Store:
        base = dict(
            model="tiny", hooks=[u.hook for u in UNITS], corpus=[str(text)], ctx=12, max_tokens=12 * 150,
            top_k=4, quantile_pool=7, n_quantiles=3, n_random=5, n_negative=4, batch_size=8,
        )  # fmt: skip
        s = RecordSettings(**base | kw)
        store = Store(db)
        Recorder(subject, s, synthetic_sources(subject.token_strs, UNITS)).run(store)
        return store

    return record


def snapshot(store: Store, runs: bool) -> dict:
    """Every unit's statistics and examples (and the run that recorded them), as comparable values."""
    out = {}
    for u in store.units():
        examples = [
            (e.kind, e.rank, e.context.id, e.window, e.quantile, tuple(e.acts))
            + ((e.provenance["run_id"],) if runs else ())
            for e in store.examples(u.id)
        ]
        out[u.id] = (u.run_id if runs else None, u.stats, examples)
    return out


def assert_same_store(got: Store, want: Store, runs: bool = True) -> None:
    a, b = snapshot(got, runs), snapshot(want, runs)
    assert a.keys() == b.keys() and a
    for uid in b:
        (run_a, sa, ex_a), (run_b, sb, ex_b) = a[uid], b[uid]
        assert run_a == run_b
        assert ex_a == ex_b, uid  # same windows, ranks, quantile groups, activations, in the same order
        assert (sa.n_tokens, sa.max, sa.frac_firing, sa.hist_counts) == (
            sb.n_tokens, sb.max, sb.frac_firing, sb.hist_counts
        )  # fmt: skip
        for field in ("mean", "std", "sum", "sumsq"):
            assert getattr(sa, field) == pytest.approx(getattr(sb, field), rel=1e-12, abs=1e-12)
    (run_a,), (run_b,) = got.runs("record"), want.runs("record")
    if runs:
        assert (run_a.id, run_a.settings) == (run_b.id, run_b.settings)
    for key in ("windows", "tokens", "units", "special_positions"):
        assert run_a.summary[key] == run_b.summary[key]


def test_shard_specs_parse_and_partition():
    assert ShardSpec.parse(" 2/5 ") == ShardSpec(index=2, count=5)
    for bad, says in (
        ("2", "form i/n"),
        ("a/b", "form i/n"),
        ("3/3", "out of range"),
        ("0/0", "out of range"),
    ):
        with pytest.raises(UserError, match=says):
            ShardSpec.parse(bad)
    blocks = [ShardSpec(index=i, count=3).windows(10) for i in range(3)]
    assert blocks == [(0, 3), (3, 6), (6, 10)]
    ids = [f"m/h/{i}" for i in range(200)]
    owners = [[i for i in range(3) if ShardSpec(index=i, count=3).has_unit(u)] for u in ids]
    assert all(len(o) == 1 for o in owners) and {o[0] for o in owners} == {0, 1, 2}


def test_ties_go_to_the_earlier_window_whatever_the_batches():
    """All keys equal: the first k windows are kept, and ranked in stream order, for any batch size."""
    for batch in (1, 3, 7):
        buf = KeyedTopK(4, 2, 3)
        for start in range(0, 21, batch):
            n = min(batch, 21 - start)
            wids = torch.arange(start, start + n)
            toks = wids[:, None].repeat(1, 3).to(torch.int32)
            buf.update(torch.ones((n, 2)), torch.ones((n, 3, 2)), toks, wids)
        assert buf.sorted()[3].tolist() == [[0, 1, 2, 3]] * 2


def test_recording_does_not_depend_on_batch_size(tmp_path, tiny):
    assert_same_store(tiny(tmp_path / "b3.db", batch_size=3), tiny(tmp_path / "b8.db"), runs=False)


@pytest.mark.parametrize("n", [2, 3])
def test_record_shards_merge_into_the_single_run(tmp_path, tiny, n):
    single = tiny(tmp_path / "single.db")
    paths = []
    for i in range(n):
        tiny(tmp_path / f"s{i}.db", shard=f"{i}/{n}")
        paths.append(tmp_path / f"s{i}.db")
    result = merge_stores(tmp_path / "merged.db", paths[::-1])  # any order
    assert result.units == len(UNITS) and result.record_runs == [single.runs()[0].id]
    assert_same_store(Store(tmp_path / "merged.db"), single)
    quantiles = Store(tmp_path / "merged.db").examples("tiny/synthetic.graded/0", "quantile")
    assert len(quantiles) == 7 and {e.quantile for e in quantiles} == {0, 1, 2}


def test_a_store_holds_one_shard_of_a_recording(tmp_path, tiny):
    tiny(tmp_path / "s.db", shard="0/2")
    with pytest.raises(UserError, match="already holds shard 0/2 of this recording; give each shard its own"):
        tiny(tmp_path / "s.db", shard="1/2")


def test_merge_refuses_what_does_not_belong_together(tmp_path, tiny):
    s0, s1 = tiny(tmp_path / "s0.db", shard="0/2").path, tiny(tmp_path / "s1.db", shard="1/2").path
    other = tiny(tmp_path / "o1.db", shard="1/2", top_k=5).path
    three = tiny(tmp_path / "t1.db", shard="1/3").path
    cases = [
        ([s0], "Shard 1/2 of run rec-[0-9a-f]+ is missing; pass its store too"),
        ([s0, other], "hold different recordings \\(they differ in: top_k\\)"),
        ([s0, three], "cut 2 and 3 ways"),
        ([s0, s1, s1], "given twice"),
        ([s0, tmp_path / "nope.db"], "No store at .*nope.db"),
    ]
    for inputs, says in cases:
        out = invoke("merge", tmp_path / "m.db", *inputs)
        assert out.exit_code == 2 and out.output.startswith("error:"), out.output
        assert __import__("re").search(says, " ".join(out.output.split())), out.output
        assert not (tmp_path / "m.db").exists()
    old = tmp_path / "old.db"
    Store(s1).copy_to(old)
    Store(old).db.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    out = invoke("merge", tmp_path / "m.db", s0, old)
    assert out.exit_code == 2 and f"schema v6, not v{SCHEMA_VERSION}" in " ".join(out.output.split())
    assert invoke("merge", tmp_path / "m.db", s0, s1).exit_code == 0
    out = invoke("merge", tmp_path / "m.db", s0, s1)
    assert out.exit_code == 2 and "already exists" in " ".join(out.output.split())


@pytest.mark.parametrize("spec", ["1/1/1", "2/2", "-1/2", "x"])
def test_bad_shard_specs_fail_before_anything_loads(tmp_path, spec, monkeypatch):
    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("something slow ran before the shard spec was checked")

    monkeypatch.setattr("autointerp.subject.recorder.record_units", boom)
    monkeypatch.setattr("autointerp.pipeline.label", boom)
    build_month_store(tmp_path / "m.db")
    for args in (["record", "--db", tmp_path / "x.db", "--hook", "h"], ["label", "--db", tmp_path / "m.db"]):
        out = invoke(*args, "--shard", spec)
        assert out.exit_code == 2 and "--shard" in out.output, out.output


def test_label_shards_merge_into_the_single_run(tmp_path, scripted):
    """Each shard labels its share of the same selection in its own store; the merge has every
    explanation and score of one run, once."""
    llm = scripted()
    build_month_store(tmp_path / "rec.db", n_units=3).copy_to(tmp_path / "single.db")
    label(tmp_path / "single.db", explainer=llm.spec)
    paths = []
    for i in range(2):
        out = invoke("label", "--db", tmp_path / "rec.db", "--explainer", llm.spec, "--shard", f"{i}/2")
        assert out.exit_code == 0, out.output
        paths.append(tmp_path / f"rec.label-{i}-of-2.db")
    assert {len(Store(p).explanations()) for p in paths} != {3}  # each shard did only its part
    assert merge_stores(tmp_path / "merged.db", paths).label_runs
    merged, single = Store(tmp_path / "merged.db"), Store(tmp_path / "single.db")

    def labels(store: Store) -> list:
        return sorted((e.id, e.unit_id, e.text) for e in store.explanations())

    def scores(store: Store) -> list:
        return sorted((x.explanation_id, x.scorer, x.value) for x in store.scores())

    assert labels(merged) == labels(single) and len(labels(single)) == 3
    assert scores(merged) == scores(single)
    assert len(merged.units()) == 3 and len(merged.examples(merged.units()[0].id)) == 40
    (run,) = merged.runs("label")
    assert (
        run.status == "complete"
        and run.summary["units"] == 3
        and run.summary["merged_from"] == ["0/2", "1/2"]
    )
    with pytest.raises(UserError, match="Shard 1/2 of run lab-.* is missing"):
        merge_stores(tmp_path / "m2.db", paths[:1])


def test_merge_keeps_every_shards_provider_batches(tmp_path):
    """`label --batch` shards each keep their submissions: the merge carries every batch and request
    (status, answer, tokens), so a later `label --batch` on the merged store polls or reuses them."""
    from autointerp.types import BatchRecord, BatchRequestRecord

    paths = []
    for i in range(2):
        store = build_month_store(tmp_path / f"s{i}.db", n_units=3)
        sub = f"sub-{i}"
        store.put_batch(
            BatchRecord(id=sub, backend="openai", model="gpt-4o-mini", status="submitted", n_requests=2),
            [
                BatchRequestRecord(
                    custom_id=f"{sub}-{k}", batch=sub, key=f"key-{i}-{k}", unit_id=f"u{k}", request={"k": k}
                )
                for k in range(2)
            ],
        )
        store.update_batch(sub, provider_id=f"batch_{i}", status="collected" if i else "submitted")
        paths.append(tmp_path / f"s{i}.db")
    merge_stores(tmp_path / "merged.db", paths)
    merged = Store(tmp_path / "merged.db")
    got = {b.id: (b.provider_id, b.status, b.n_requests) for b in merged.batches()}
    assert got == {"sub-0": ("batch_0", "submitted", 2), "sub-1": ("batch_1", "collected", 2)}
    assert [r.key for r in merged.batch_requests("sub-1")] == ["key-1-0", "key-1-1"]
    req, batch = merged.latest_batch_request("key-0-1")
    assert req.custom_id == "sub-0-1" and req.request == {"k": 1} and batch.id == "sub-0"
    assert [b.id for b in merged.open_batches()] == ["sub-0"]


def test_label_shards_of_different_settings_are_refused(tmp_path, scripted):
    build_month_store(tmp_path / "rec.db", n_units=3)
    paths = []
    for i, name in enumerate(("one", "two")):
        llm = scripted(name)
        out = invoke("label", "--db", tmp_path / "rec.db", "--explainer", llm.spec, "--shard", f"{i}/2")
        assert out.exit_code == 0, out.output
        paths.append(tmp_path / f"rec.label-{i}-of-2.db")
    with pytest.raises(UserError, match="label runs of different settings; label every shard with the same"):
        merge_stores(tmp_path / "m.db", paths)


def test_v7_store_gains_the_merge_columns(tmp_path):
    s = Store(tmp_path / "x.db")
    for table, col in (("examples", "window_pos"), ("units", "sum"), ("units", "sumsq")):
        s.db.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
    s.db.execute("ALTER TABLE examples DROP COLUMN attn")  # v9's (attention heads)
    s.db.execute("DROP TABLE head_metrics")
    s.db.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    s = Store(tmp_path / "x.db")
    assert s.schema_version() == SCHEMA_VERSION >= 9
    assert {"window_pos"} <= {c.name for c in s.db["examples"].columns}
    assert {"sum", "sumsq"} <= {c.name for c in s.db["units"].columns}
