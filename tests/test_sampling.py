"""Which examples the explainer reads and which score it: no explanation is scored on what it has seen."""

from test_store import make_example, make_unit  # tests/ is on sys.path (pytest rootdir, no package)

from autointerp.sampling import SampleSettings, sample_unit
from autointerp.store import Store
from autointerp.types import Context, Example, RunRecord, SourceRef


def edit_of(source: Example, rank: int, direction: str) -> Example:
    ctx = Context(id=f"edit{rank}", token_ids=[1, 2, 4], tokens=["a", " b", " d"])
    acts = [0.0, 0.1, 0.0] if direction == "off" else [0.0, 2.0, 0.0]
    return Example(
        unit_id=source.unit_id,
        kind="counterfactual",
        rank=rank,
        context=ctx,
        acts=acts,
        provenance={"direction": direction},
        source=SourceRef.of(source),
    )


def test_counterfactuals_of_explain_examples_are_shown_the_others_score(tmp_path):
    store = Store(tmp_path / "x.db")
    store.start_run(RunRecord(id="r1", kind="record", settings={}, code_version="t", started_at="now"))
    unit = make_unit(0)
    tops = [make_example(unit, r) for r in range(4)]
    negative = make_example(unit, 0, kind="negative")
    negative.acts = [0.0, 0.0, 0.0]
    store.write_units([unit], [*tops, negative])
    edits = [edit_of(tops[0], 0, "off"), edit_of(tops[1], 1, "off"), edit_of(negative, 2, "on")]
    store.add_examples(edits)

    sample = sample_unit(store, unit.id, SampleSettings(n_explain=2, n_test_top=1))
    assert [e.rank for e in sample.explain] == [0, 2]  # top ranks 0 and 2 are read, 1 and 3 held out
    shown = [e for e in sample.contrast if e.kind == "counterfactual"]
    assert [e.rank for e in shown] == [0]  # the edit of top 0, which the explainer reads
    pairs = {(src.kind, src.rank, edit.rank) for src, edit in sample.counterfactual_pairs}
    assert pairs == {("top", 1, 1), ("negative", 0, 2)}  # held-out sources only
