"""Head detectors on hand-made attention patterns, the head_metrics table, `autointerp heads`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from autointerp import cli
from autointerp.head_wiki import head_metrics, head_table
from autointerp.store import Store
from autointerp.subject.head_detect import THRESHOLDS, categories, detect_heads, repeat_scores, text_scores
from autointerp.types import HeadMetrics, RunRecord
from tests.test_heads import tiny_gqa

T = 12


def _rows(fill) -> torch.Tensor:  # noqa: ANN001 - (q) -> {key: weight}
    """(1, 1, T, T): row q holds fill(q), causal, each row summing to 1."""
    p = torch.zeros(1, 1, T, T)
    for q in range(T):
        for k, w in fill(q).items():
            p[0, 0, q, k] += w
    return p


def test_text_scores_tell_previous_token_bos_and_self_heads_apart() -> None:
    prev = text_scores(_rows(lambda q: {max(q - 1, 0): 1.0}))
    bos = text_scores(_rows(lambda q: {0: 1.0}))
    own = text_scores(_rows(lambda q: {q: 1.0}))
    assert prev["previous_token"].item() == pytest.approx(1.0) and prev[
        "mean_distance"
    ].item() == pytest.approx(1.0)
    assert bos["bos"].item() == pytest.approx(1.0) and bos["previous_token"].item() == 0.0
    assert own["self_attn"].item() == pytest.approx(1.0) and own["mean_distance"].item() == 0.0
    assert own["entropy"].item() == pytest.approx(0.0, abs=1e-6)
    uniform = text_scores(_rows(lambda q: {k: 1 / (q + 1) for k in range(q + 1)}))
    want = sum(torch.log(torch.tensor(q + 1.0)).item() for q in range(1, T)) / (T - 1)
    assert uniform["entropy"].item() == pytest.approx(want, rel=1e-5)


def test_repeat_scores_find_induction_and_duplicate_heads() -> None:
    r = 5  # BOS + r + r
    n = 1 + 2 * r
    ind = torch.zeros(1, 1, n, n)
    dup = torch.zeros(1, 1, n, n)
    for q in range(n):
        ind[0, 0, q, q - r + 1 if q > r else 0] = 1.0
        dup[0, 0, q, q - r if q > r else 0] = 1.0
    a, b = repeat_scores(ind, r), repeat_scores(dup, r)
    assert a["induction"].item() == pytest.approx(1.0) and a["duplicate_token"].item() == 0.0
    assert b["duplicate_token"].item() == pytest.approx(1.0) and b["induction"].item() == 0.0


def test_categories_follow_the_documented_thresholds() -> None:
    base = dict(model="m", layer=0, head=0, previous_token=0.0, induction=0.0, duplicate_token=0.0,
                bos=0.0, self_attn=0.0, entropy=1.0, mean_distance=2.0)  # fmt: skip
    assert categories(HeadMetrics(**base)) == []
    m = HeadMetrics(**base | {"previous_token": 0.9, "bos": 0.71, "induction": 0.29})
    assert categories(m) == ["previous-token", "bos"]  # 0.9/0.4 before 0.71/0.7; induction below 0.3
    assert THRESHOLDS["induction"] == ("induction", 0.3)


@pytest.fixture(scope="module")
def tiny():
    return tiny_gqa(seed=3, n_ctx=64)


def test_detect_heads_on_a_model_scores_every_head(tiny) -> None:
    text = torch.cat([torch.ones(4, 1, dtype=torch.long), torch.randint(3, 50, (4, 15))], dim=1)
    from autointerp.subject.head_detect import DetectSettings

    rows = detect_heads(tiny, DetectSettings(n_repeat=4, repeat_len=6), text=text)
    assert [(m.layer, m.head) for m in rows] == [(layer, h) for layer in range(2) for h in range(4)]
    for m in rows:
        assert 0 <= m.previous_token <= 1 and 0 <= m.induction <= 1 and 0 <= m.bos <= 1
        assert m.entropy >= 0 and m.mean_distance >= 0 and m.categories == categories(m)
    # layer 0 of a random model spreads attention: at q its BOS share averages about mean(1/(q+1))
    assert 0.1 < rows[0].bos < 0.6


def _store_with_run(path: Path, model: str = "tiny") -> Path:
    store = Store(path)
    store.start_run(
        RunRecord(id="r", kind="record", settings={"model": model}, code_version="t", started_at="now")
    )
    return path


def test_head_metrics_are_computed_once_and_kept(tmp_path, tiny, monkeypatch) -> None:
    text = tmp_path / "c.txt"
    text.write_text("the cat sat on the mat and the dog sat on the log. " * 20)
    db = _store_with_run(tmp_path / "h.db")
    kw = dict(corpus=[str(text)], ctx=16, n_text=4, n_repeat=4, repeat_len=6)
    first = head_metrics(db, subject=tiny, **kw)
    assert len(first) == 8 and Store(db).head_metrics("tiny") == first

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("computed again")

    monkeypatch.setattr("autointerp.subject.head_detect.detect_heads", boom)
    assert head_metrics(db, **kw) == first  # the store's model, from its recording: read back
    frame = head_table(db, **kw)
    assert list(frame["layer"]) == [0] * 4 + [1] * 4 and frame["induction"].dtype == float
    with pytest.raises(AssertionError, match="computed again"):  # other settings: computed again
        head_metrics(db, subject=tiny, **kw | {"ctx": 32})


def test_heads_command_prints_the_table(tmp_path, tiny, monkeypatch) -> None:
    text = tmp_path / "c.txt"
    text.write_text("the cat sat on the mat and the dog sat on the log. " * 40)
    db = _store_with_run(tmp_path / "h.db")
    monkeypatch.setattr("autointerp.subject.model.load_subject", lambda name, path=None: tiny)
    too_long = CliRunner().invoke(cli.app, ["heads", "--db", str(db), "--corpus", str(text), "--ctx", "80"])
    assert too_long.exit_code == 2 and "reads at most 64 tokens" in too_long.output
    out = CliRunner().invoke(cli.app, ["heads", "--db", str(db), "--corpus", str(text), "--ctx", "24"])
    assert out.exit_code == 0, out.output
    assert "attention heads of tiny" in out.output and "1.3" in out.output and "previous-token:" in out.output
    js = CliRunner().invoke(
        cli.app, ["heads", "--db", str(db), "--corpus", str(text), "--ctx", "24", "--json"]
    )
    rows = json.loads(js.stdout)
    assert len(rows) == 8 and set(rows[0]) >= {"layer", "head", "induction", "categories"}


def test_heads_command_bad_input(tmp_path) -> None:
    out = CliRunner().invoke(cli.app, ["heads", "--db", str(tmp_path / "none.db")])
    assert out.exit_code == 2 and "No store at" in out.output
    Store(tmp_path / "empty.db")
    out = CliRunner().invoke(cli.app, ["heads", "--db", str(tmp_path / "empty.db")])
    assert out.exit_code == 2 and "pass --model" in out.output
