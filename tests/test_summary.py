"""The label summary table shows only numbers that measure something."""

from autointerp.cli import print_summary
from autointerp.pipeline import LabelSummary, UnitResult


def test_summary_shows_failed_and_nan_scores_by_their_status(capsys):
    results = [
        UnitResult(
            unit_id="m/h/1",
            method="highlight",
            explanation="months",
            scores={"correlation": 0.41, "detection": None, "fuzzing": None},
            status={"correlation": "ok", "detection": "failed", "fuzzing": "nan"},
        )
    ]
    print_summary(LabelSummary(run_id="r", results=results, seconds=1.0))
    out = capsys.readouterr().out
    assert "0.410" in out and "failed" in out and "nan" in out
    assert "correlation mean 0.410" in out and "detection mean" not in out
    assert "scores: 1 ok · 1 nan (undefined) · 1 failed" in out


def test_summary_ids_stay_whole_at_80_columns(monkeypatch):
    import io

    from rich.console import Console

    from autointerp import cli

    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=80))
    sae, mlp = "gemma-3-270m/blocks.6.hook_resid_post/sae:embedded", "gemma-3-270m/blocks.6.mlp.hook_post"
    results = [
        UnitResult(
            unit_id=f"{source}/{i}",
            method="highlight",
            explanation="the word 'the' at the start of a sentence",
            scores={"correlation": 0.5},
            status={"correlation": "ok"},
        )
        for source, i in ((sae, 17), (sae, 201), (mlp, 1234))
    ]
    print_summary(LabelSummary(run_id="r", results=results, seconds=1.0))
    out = cli.console.file.getvalue()
    assert "…" not in out
    assert f"explanations of {sae}/INDEX" in out and f"explanations of {mlp}/INDEX" in out
    assert all(f"│ {i:>5} │" in out for i in (17, 201, 1234))
