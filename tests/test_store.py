"""The store: schema versioning, all-or-nothing unit writes, round trips."""

import sqlite3

import pytest

from autointerp.errors import UserError
from autointerp.store import SCHEMA_VERSION, Store
from autointerp.types import Context, Example, RunRecord, Unit, UnitRef, UnitStats


def make_unit(i: int, run_id: str = "r1") -> Unit:
    stats = UnitStats(
        n_tokens=10,
        max=2.0,
        mean=0.1,
        std=0.3,
        frac_firing=0.2,
        fire_threshold=0.0,
        hist_edges=[float("-inf"), 0.0, float("inf")],
        hist_counts=[8, 2],
    )
    return Unit(ref=UnitRef(model="m", hook="blocks.0.mlp.hook_post", index=i), run_id=run_id, stats=stats)


def make_example(unit: Unit, rank: int, kind: str = "top") -> Example:
    ctx = Context(id=f"c{rank}", token_ids=[1, 2, 3], tokens=["a", " b", " c"])
    return Example(unit_id=unit.id, kind=kind, rank=rank, context=ctx, acts=[0.0, 2.0 - rank, 0.5])


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "x.db")
    s.start_run(RunRecord(id="r1", kind="record", settings={"a": 1}, code_version="t", started_at="now"))
    return s


def test_new_store_has_current_schema(store):
    assert store.schema_version() == SCHEMA_VERSION
    assert {"units", "examples", "records", "contexts", "llm_calls"} <= set(store.db.table_names())


def test_round_trip_units_and_examples(store):
    units = [make_unit(i) for i in range(3)]
    store.write_units(units, [make_example(u, r) for u in units for r in range(2)])
    again = Store(store.path)
    assert again.get_unit(units[1].id) == units[1]
    ex = again.examples(units[1].id, "top")
    assert [e.rank for e in ex] == [0, 1]
    assert ex[0].acts == [0.0, 2.0, 0.5] and ex[0].max_pos == 1
    assert ex[0].context.tokens == ["a", " b", " c"]
    assert again.count_units() == 3


def test_rewriting_a_unit_replaces_its_examples(store):
    u = make_unit(0)
    store.write_units([u], [make_example(u, r) for r in range(5)])
    store.write_units([u], [make_example(u, 0)])
    assert len(store.examples(u.id)) == 1


def test_failed_write_leaves_nothing_half_written(store):
    u = make_unit(0)
    store.write_units([u], [make_example(u, 0)])
    bad = make_unit(1)
    dup = [make_example(bad, 0), make_example(bad, 0)]  # duplicate primary key: the write fails
    with pytest.raises(sqlite3.IntegrityError):
        store.write_units([bad], dup)
    assert store.get_unit(bad.id) is None
    assert len(store.examples(u.id)) == 1


def test_newer_schema_is_refused(tmp_path):
    s = Store(tmp_path / "x.db")
    s.db["meta"].upsert({"key": "schema_version", "value": str(SCHEMA_VERSION + 1)}, pk="key")
    with pytest.raises(UserError, match="newer than this autointerp"):
        Store(tmp_path / "x.db")


def test_foreign_sqlite_and_garbage_files_are_refused(tmp_path):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(UserError, match="not an autointerp store"):
        Store(other)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(UserError, match="not an autointerp store"):
        Store(junk)


def test_runs_record_settings_and_status(store):
    store.finish_run("r1", "complete", {"tokens": 5})
    run = store.get_run("r1")
    assert run.status == "complete" and run.settings == {"a": 1} and run.summary == {"tokens": 5}
    assert run.finished_at


def test_v1_store_is_migrated_in_place(tmp_path):
    import sqlite_utils

    from autointerp import store as store_mod

    db = sqlite_utils.Database(tmp_path / "old.db")
    store_mod._create_v1(db)
    db["meta"].insert({"key": "schema_version", "value": "1"}, pk="key")
    db["records"].insert(
        {
            "id": "r0",
            "kind": "record",
            "settings": "{}",
            "code_version": "old",
            "started_at": "t",
            "status": "complete",
            "summary": "{}",
        }
    )
    db.conn.commit()
    s = Store(tmp_path / "old.db")
    assert s.schema_version() == SCHEMA_VERSION
    assert {"explanations", "scores"} <= set(s.db.table_names())
    assert s.get_run("r0").code_version == "old"  # existing rows survive
    # v3: no index on context_id
    assert [i.name for i in s.db["examples"].indexes] == ["sqlite_autoindex_examples_1"]


def test_explanations_and_explicit_nan_scores(store):
    from autointerp.types import Explanation, Score

    u = make_unit(0)
    store.write_units([u], [make_example(u, 0)])
    exp = Explanation(
        id="e1", unit_id=u.id, text="months", method="top", model="local:x", prompt="explain-top@2"
    )
    nan = Score(
        explanation_id="e1",
        unit_id=u.id,
        scorer="correlation",
        value=None,
        status="nan",
        reason="simulation is constant",
        details={"per_quantile": [float("nan"), 0.5]},
    )
    ok = Score(explanation_id="e1", unit_id=u.id, scorer="detection", value=0.75, status="ok")
    store.put_explanation(exp, [nan, ok])
    assert store.explanations(u.id) == [exp]
    got = {s.scorer: s for s in store.scores("e1")}
    assert got["correlation"].value is None and got["correlation"].status == "nan"
    assert got["correlation"].reason == "simulation is constant"
    assert got["detection"].value == 0.75
    store.delete_labels()  # a benchmark's fresh start: the recording stays, the labels go
    assert store.explanations(u.id) == [] and store.scores("e1") == [] and len(store.units()) == 1


def test_add_examples_needs_a_recorded_unit(store):
    u = make_unit(0)
    store.write_units([u], [make_example(u, 0)])
    store.add_examples([make_example(u, 0, kind="counterfactual"), make_example(u, 1, kind="counterfactual")])
    assert len(store.examples(u.id, "counterfactual")) == 2
    ghost = make_unit(9)
    with pytest.raises(UserError, match="not recorded"):
        store.add_examples([make_example(ghost, 0, kind="minimal")])


def _v3_store(path, examples: list[tuple[str, int, str, dict]]) -> None:
    """A store as schema v3 wrote it: one unit, (kind, rank, context id, provenance) examples."""
    import json

    import numpy as np
    import sqlite_utils

    from autointerp import store as store_mod

    db = sqlite_utils.Database(path)
    for v in range(3):
        store_mod.MIGRATIONS[v](db)
    db["meta"].insert({"key": "schema_version", "value": "3"}, pk="key")
    db["records"].insert({"id": "r1", "kind": "record", "settings": "{}", "code_version": "old"})
    u = make_unit(0)
    db["units"].insert({k: v for k, v in store_mod._unit_row(u).items() if k not in ("sum", "sumsq")})  # v7
    for kind, rank, cid, prov in examples:
        db["contexts"].upsert({"id": cid, "token_ids": "[1, 2, 3]", "tokens": '["a", " b", " c"]'}, pk="id")
        acts = np.array([0.0, 2.0 - rank if kind == "top" else 0.1, 0.5], dtype=np.float32)
        db["examples"].insert(
            {
                "unit_id": u.id,
                "kind": kind,
                "rank": rank,
                "context_id": cid,
                "acts": acts.tobytes(),
                "max_act": float(acts.max()),
                "max_pos": int(acts.argmax()),
                "provenance": json.dumps(prov, sort_keys=True),
            }
        )
    db.conn.commit()


def test_v3_source_links_become_typed_columns(tmp_path):
    from autointerp.sampling import SampleSettings, sample_unit
    from autointerp.types import SourceRef

    off = {"direction": "off", "edited_text": "a c", "settings": "k"}
    _v3_store(
        tmp_path / "old.db",
        [
            *[("top", r, f"c{r}", {"run_id": "r1"}) for r in range(4)],
            (
                "counterfactual",
                0,
                "e0",
                {**off, "source_kind": "top", "source_rank": 0, "source_context": "c0"},
            ),
            (
                "counterfactual",
                1,
                "e1",
                {**off, "source_kind": "top", "source_rank": 1, "source_context": "c1"},
            ),
            ("counterfactual", 2, "e3", {**off, "source_kind": "top", "source_rank": 3}),  # no context
            ("hard_negative", 0, "h0", {"source_kind": "corpus", "source_context": "h0", "similarity": 0.5}),
        ],
    )
    s = Store(tmp_path / "old.db")
    assert s.schema_version() == SCHEMA_VERSION
    uid = make_unit(0).id
    cfs = s.examples(uid, "counterfactual")
    assert [e.source for e in cfs] == [
        SourceRef(kind="top", rank=0, context_id="c0"),
        SourceRef(kind="top", rank=1, context_id="c1"),
        SourceRef(kind="top", rank=3, context_id="c3"),  # filled in from the source example itself
    ]
    assert all(e.provenance == off for e in cfs)  # the string keys are gone; the rest is kept
    (hard,) = s.examples(uid, "hard_negative")
    assert hard.source == SourceRef(kind="corpus", context_id="h0") and hard.provenance == {"similarity": 0.5}
    assert all(e.source is None for e in s.examples(uid, "top"))

    # The guarantee reads the typed link: tops 0 and 2 are read, so only edits of 1 and 3 score.
    sample = sample_unit(s, uid, SampleSettings(n_explain=2, n_test_top=1))
    assert [e.rank for e in sample.explain] == [0, 2]
    assert [(src.rank, edit.rank) for src, edit in sample.counterfactual_pairs] == [(1, 1), (3, 2)]
    assert [e.rank for e in sample.contrast if e.kind == "counterfactual"] == [0]

    # A round trip of a new derived example keeps its link; a link to another window is no match.
    moved = cfs[1].model_copy(update={"rank": 5, "source": SourceRef(kind="top", rank=1, context_id="zz")})
    s.add_examples([moved])
    assert s.examples(uid, "counterfactual")[-1].source == moved.source
    pairs = sample_unit(s, uid, SampleSettings(n_explain=2, n_test_top=1)).counterfactual_pairs
    assert [edit.rank for _, edit in pairs] == [1, 2]
