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
