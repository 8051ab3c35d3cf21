"""A tiny benchmark end to end: 2 synthetic units over Gemma's tokens, SmolLM2 explains and scores."""

import json

import pytest

from autointerp.bench.report import write_report
from autointerp.bench.run import BenchResult, run_bench
from autointerp.store import Store

pytestmark = pytest.mark.slow


def test_tiny_bench_writes_store_rows_and_report(gemma, tmp_path):
    spec = [
        {
            "name": "digits",
            "explanation": "digits",
            "near_miss": "letters",
            "rule": {"kind": "regex", "pattern": "\\d+"},
        },
        {"name": "the", "explanation": "the word the", "rule": {"kind": "tokens", "tokens": ["the"]}},
    ]
    (tmp_path / "suite.json").write_text(json.dumps(spec))
    db = tmp_path / "bench.db"
    r = run_bench(
        db,
        suite=str(tmp_path / "suite.json"),
        methods=["top"],
        explainer="local:smollm2-135m",
        scorers=["correlation"],
        tokens=4000,
        ctx=16,
        subject=gemma,
    )
    assert [u.name for u in r.units] == ["digits", "the"] and not r.skipped_units
    store = Store(db)
    units = {u.id for u in store.units()}
    assert units == {"gemma-3-270m/synthetic.digits/0", "gemma-3-270m/synthetic.the/0"}
    top = store.examples("gemma-3-270m/synthetic.digits/0", "top")[0]
    assert all((a > 0) == t.strip().isdigit() for t, a in zip(top.context.tokens, top.acts, strict=True))
    methods = {e.method for e in store.explanations()}
    assert {"top", "true", "distractor:negated", "distractor:other"} <= methods
    (true,) = store.explanations("gemma-3-270m/synthetic.the/0", method="true")
    assert true.text == "the word the" and store.scores(true.id)[0].scorer == "correlation"
    rows = {m.method: m for m in r.methods}
    assert rows["top"].n_units == 2 and rows["top"].prompt_tokens > 0
    assert rows["true"].stats["correlation"].n + rows["true"].stats["correlation"].n_nan == 2
    assert r.meta is not None and r.meta.scorers[0].scorer == "correlation"
    assert rows["top"].seconds > 0 and rows["true"].seconds > 0
    floor = store.explanations("gemma-3-270m/synthetic.the/0", method="random")
    gen = store.explanations("gemma-3-270m/synthetic.digits/0", method="top")
    assert [x.text for x in floor] == [x.text for x in gen]  # each unit gets the other unit's explanation
    assert rows["random"].n_units == len(store.explanations(method="random")) >= 1
    assert r.near_miss_match_rate is not None
    assert r.match_measure and all("top" in u.match for u in r.units if u.explanations.get("gen:top"))
    paths = write_report(r, tmp_path / "report")
    assert paths["png"].stat().st_size > 1000
    assert "| top |" in paths["md"].read_text() and "<table>" in paths["html"].read_text()
    assert "| random explanation (floor) |" in paths["md"].read_text()
    assert BenchResult.model_validate_json(paths["json"].read_text()).run_id == r.run_id
    assert store.get_run(r.run_id).status == "complete"


def test_token_based_sources_record_exact_activations_without_a_forward_pass(tmp_path):
    """The model stand-in has no forward method: recording must not call it."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from autointerp import assets
    from autointerp.bench.synthetic import RegexRule, SyntheticUnit, synthetic_sources
    from autointerp.subject.model import SubjectModel
    from autointerp.subject.recorder import Recorder
    from autointerp.types import RecordSettings

    tok = AutoTokenizer.from_pretrained(assets.ensure_model("gemma-3-270m"))
    no_forward = SimpleNamespace(cfg=SimpleNamespace(default_prepend_bos=True))
    subject = SubjectModel("gemma-3-270m", no_forward, tok)
    (tmp_path / "c.txt").write_text("In 1999 the price was 12 dollars, not 13. " * 40)
    unit = SyntheticUnit(name="digits", explanation="digits", rule=RegexRule(pattern=r"\d+"))
    settings = RecordSettings(
        model="gemma-3-270m", hooks=[unit.hook], corpus=[str(tmp_path / "c.txt")], max_tokens=256, ctx=16
    )
    rec = Recorder(subject, settings, synthetic_sources(subject.token_strs, [unit]), run_key={"u": 1})
    result = rec.run(Store(tmp_path / "x.db"))
    assert result.n_units == 1 and result.n_tokens == 256
    store = Store(tmp_path / "x.db")
    for ex in store.examples(unit.unit_id("gemma-3-270m")):
        assert ex.acts == [1.0 if t.strip().isdigit() else 0.0 for t in ex.context.tokens]
    assert store.get_unit("gemma-3-270m/synthetic.digits/0").stats.max == 1.0
