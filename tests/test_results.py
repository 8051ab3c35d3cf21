"""Inspecting a store: `autointerp units`, `show` with explanations and scores, `results(db)` and the
SQL view `unit_labels`."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from autointerp import cli, results
from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import Context, Example, Explanation, RunRecord, Score, Unit, UnitRef, UnitStats

NEURON = "gemma-3-270m/blocks.6.mlp.hook_post"
LATENT = "gemma-3-270m/blocks.6.hook_resid_post/sae:embedded-1a2b3c4d"


def unit(source: str, index: int, frac: float, top: float) -> Unit:
    model, hook, *sae = source.split("/")
    fired = round(1000 * frac)
    stats = UnitStats(
        n_tokens=1000, max=top, mean=0.1, std=0.2, frac_firing=frac, fire_threshold=0.0,
        hist_edges=[float("-inf"), 0.0, float("inf")], hist_counts=[1000 - fired, fired],
    )  # fmt: skip
    ref = UnitRef(model=model, hook=hook, index=index, sae=sae[0][4:] if sae else None)
    return Unit(ref=ref, run_id="r1", stats=stats)


def explain(store: Store, uid: str, eid: str, text: str, **values: float | None) -> None:
    scores = [
        Score(explanation_id=eid, unit_id=uid, scorer=k, value=v, status="ok" if v is not None else "failed")
        for k, v in values.items()
    ]
    store.put_explanation(
        Explanation(id=eid, unit_id=uid, text=text, method="top", model="x", prompt="p"), scores
    )


@pytest.fixture
def gemma_store(tmp_path) -> Store:
    """Neurons 1234 (rare, best), 7 (frequent) and latent 17 (dead); 1234 has two explanations."""
    store = Store(tmp_path / "g.db")
    store.start_run(RunRecord(id="r1", kind="record", settings={}, code_version="t", started_at="t"))
    units = [unit(NEURON, 1234, 0.01, 6.0), unit(NEURON, 7, 0.4, 2.0), unit(LATENT, 17, 0.0, 0.0)]
    ctx = Context(id="c", token_ids=[1, 2, 3], tokens=["<bos>", " a", " b"])
    examples = [Example(unit_id=u.id, kind="top", rank=0, context=ctx, acts=[0.0, 0.0, 0.0]) for u in units]
    store.write_units(units, examples)
    explain(store, units[0].id, "e-old", "the letter b", correlation=0.3, detection=0.6)
    explain(store, units[0].id, "e-best", "months of the year", correlation=0.8, detection=None)
    explain(store, units[1].id, "e-7", "punctuation", correlation=0.5)
    return store


def run(*args: str, width: int = 80):  # noqa: ANN201
    cli.console.width = width  # a terminal of `width` columns
    return CliRunner().invoke(cli.app, list(args))


def test_units_lists_stats_and_best_explanation_with_whole_ids_at_80_columns(gemma_store):
    res = run("units", "--db", str(gemma_store.path))
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert f"{NEURON}/INDEX" in out and f"{LATENT}/INDEX" in out  # each source said once, whole
    row = next(line for line in out.splitlines() if "1234" in line)
    assert "months of the year" in row and "0.800" in row and "1%" in row  # the best, not the older one
    assert "never fired" in next(line for line in out.splitlines() if " 17 " in line)
    assert "the letter b" not in out


@pytest.mark.parametrize(
    ("sort", "order"), [("freq", [7, 1234, 17]), ("max", [1234, 7, 17]), ("score", [1234, 7, 17])]
)
def test_units_sort_and_json(gemma_store, sort, order):
    res = run("units", "--db", str(gemma_store.path), "--sort", sort, "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [int(r["unit_id"].rsplit("/", 1)[1]) for r in rows] == order
    by_id = {r["unit_id"]: r for r in rows}
    best = by_id[f"{NEURON}/1234"]
    assert (best["n_firing"], best["n_explanations"], best["score"], best["scorer"]) == (
        10,
        2,
        0.8,
        "correlation",
    )
    assert best["best"]["explanation"]["text"] == "months of the year"
    assert by_id[f"{LATENT}/17"]["fired"] is False and by_id[f"{LATENT}/17"]["best"] is None


def test_units_hook_filter_and_bad_options(gemma_store):
    db = str(gemma_store.path)
    res = run("units", "--db", db, "--hook", "blocks.6.mlp.hook_post", "--json")
    assert sorted(r["unit_id"] for r in json.loads(res.stdout)) == [f"{NEURON}/1234", f"{NEURON}/7"]
    for args, message in [
        (["--hook", "blocks.9.nope"], "No recorded units of hook 'blocks.9.nope'"),
        (["--sort", "bogus"], "--sort 'bogus' is not a sort order"),
        (["--limit", "0"], "--limit must be at least 1"),
    ]:
        res = run("units", "--db", db, *args)
        assert res.exit_code == 2 and message in res.output and res.output.count("error:") == 1
    missing = run("units", "--db", str(gemma_store.path.with_name("typo.db")))
    assert missing.exit_code == 2 and not gemma_store.path.with_name("typo.db").exists()


def test_show_has_explanations_scores_and_says_a_dead_unit_never_fired(gemma_store):
    db = str(gemma_store.path)
    res = run("show", f"{NEURON}/1234", "--db", db)
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert "months of the year" in out and "the letter b" in out
    assert "0.800" in out and "failed" in out  # detection of the best one failed
    assert "fires on 10 of 1,000 tokens" in out
    dead = run("show", "sae:embedded-1a2b3c4d/17", "--db", db)  # a unique end of its id is enough
    assert dead.exit_code == 0, dead.output
    out = " ".join(dead.stdout.split())
    assert "never fired on its 1,000 recorded tokens" in out and "<bos>" not in out  # no example rows
    assert "(no top examples: the unit never fired on the corpus)" in out
    shown = json.loads(run("show", f"{LATENT}/17", "--db", db, "--json").stdout)
    assert shown["fired"] is False and shown["examples"] == [] and shown["explanations"] == []


def test_show_bad_kind_and_ambiguous_or_unknown_ids_are_one_sentence(gemma_store):
    db = str(gemma_store.path)
    for args, message in [
        (["show", f"{NEURON}/7", "--kind", "bogus"], "--kind 'bogus' is not an example kind"),
        (["show", f"{NEURON}/99"], "is not recorded in"),
        (["show", "nonsense"], "is not a unit id"),
    ]:
        res = run(*args, "--db", db)
        assert res.exit_code == 2 and message in res.output and res.output.count("error:") == 1, res.output
    res = run("show", "7", "--kind", "top", "--n", "0", "--db", db)  # typer's own range check
    assert res.exit_code == 2 and "greater than or equal to 1" in res.output
    explain(gemma_store, f"{NEURON}/7", "e-x", "x")
    gemma_store.write_units([unit("gemma-3-270m/blocks.7.mlp.hook_post", 7, 0.1, 1.0)], [])
    res = run("show", "7", "--db", db)
    assert res.exit_code == 2 and "'7' matches 2 units" in res.output


def test_results_is_one_row_per_explanation_like_the_unit_labels_view(gemma_store):
    pytest.importorskip("pandas")
    gemma_store.put_scores(
        [Score(explanation_id="e-7", unit_id=f"{NEURON}/7", scorer="peak", value=0.25, status="ok")]
    )
    frame = results(gemma_store.path)
    assert sorted(frame["explanation_id"]) == ["e-7", "e-best", "e-old"]
    assert {"unit_id", "hook", "n_firing", "frac_firing", "max", "explanation", "correlation", "peak"} <= set(
        frame.columns
    )
    best = frame.set_index("explanation_id").loc["e-best"]
    assert (best["n_firing"], best["max"], best["correlation"]) == (10, 6.0, 0.8)
    assert best["detection"] != best["detection"]  # failed: NaN
    view = gemma_store.db.execute("SELECT * FROM unit_labels ORDER BY explanation_id").fetchall()
    cols = [d[0] for d in gemma_store.db.execute("SELECT * FROM unit_labels LIMIT 0").description]
    assert [r[cols.index("explanation_id")] for r in view] == ["e-7", "e-best", "e-old"]
    shared = [c for c in cols if c in frame.columns]
    assert len(shared) >= len(cols) - 3  # fuzzing, embedding and counterfactual were never scored here
    framed = frame.sort_values("explanation_id")[shared].astype(object).where(frame.notna(), None)
    assert [tuple(r) for r in framed.itertuples(index=False)] == [
        tuple(row[cols.index(c)] for c in shared) for row in view
    ]


def test_results_without_pandas_names_the_install(gemma_store, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(
        UserError, match=r"^autointerp.results needs pandas; install it with `pip install pandas`"
    ):
        results(gemma_store.path)
