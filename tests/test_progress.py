"""Progress of `record` when the output is not a terminal: plain lines every ~10 s (here much less), and a
rate that leaves the model load out."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console
from typer.testing import CliRunner

from autointerp import progress
from autointerp.cli import app
from autointerp.progress import RateProgress


def piped(now: list[float], every: float) -> tuple[RateProgress, io.StringIO]:
    """A bar over 1,000 tokens writing to a buffer (not a terminal), on the clock `now[0]`."""
    buf = io.StringIO()
    return RateProgress(
        Console(file=buf, width=200), "recording", 1000, every=every, clock=lambda: now[0]
    ), buf


def test_rate_progress_starts_its_clock_at_the_first_update():
    now = [100.0]
    bar, buf = piped(now, every=0.02)
    with bar:
        time.sleep(0.1)  # the model loads: no line yet
        assert buf.getvalue() == ""
        now[0] = 130.0
        bar.update(0, 1000)
        now[0] = 132.0
        bar.update(400, 1000)
        time.sleep(0.2)
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 3 and "\x1b" not in buf.getvalue()  # ticks and the last line, plain text
    assert set(lines) == {"recording: 400/1,000 tokens (40%) · 200 tok/s · elapsed 0:00:02 · ETA 0:00:03"}


def test_a_resumed_part_is_not_in_the_rate_and_no_update_prints_nothing():
    now = [0.0]
    bar, buf = piped(now, every=60)
    with bar:
        bar.update(600, 1000)  # resumed at 600 from a checkpoint
        now[0] = 4.0
        bar.update(1000, 1000)
    assert buf.getvalue().splitlines() == [
        "recording: 1,000/1,000 tokens (100%) · 100 tok/s · elapsed 0:00:04"
    ]
    quiet = io.StringIO()
    with RateProgress(Console(file=quiet), "recording", total=10):
        pass  # e.g. the run was already complete
    assert quiet.getvalue() == ""


def test_record_in_a_pipe_prints_plain_progress_lines_without_the_model_load(tmp_path, monkeypatch):
    from autointerp.subject.recorder import RecordResult

    def fake_record(progress, max_tokens, **kw):  # noqa: ANN001, ANN003, ANN202
        time.sleep(1.0)  # loading the model
        progress(0, max_tokens)
        for done in range(64, max_tokens + 1, 64):
            time.sleep(0.01)
            progress(done, max_tokens)
        return RecordResult("run1", 4, max_tokens, 1.2, 0.0)

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.03)
    monkeypatch.setattr("autointerp.subject.recorder.record_units", fake_record)
    out = CliRunner().invoke(
        app, ["record", "--db", str(tmp_path / "r.db"), "--hook", "blocks.0.mlp.hook_post", "--tokens", "640"]
    )
    assert out.exit_code == 0, out.output
    lines = [x for x in out.output.splitlines() if x.startswith("recording: ")]
    assert len(lines) >= 3 and "\x1b" not in out.output
    assert lines[-1].startswith("recording: 640/640 tokens (100%) · ")
    rate = int(re.search(r"· ([\d,]+) tok/s", lines[-1])[1].replace(",", ""))
    assert rate > 1500  # 640 tokens in ~0.1 s of streaming; with the 1 s load counted it would be < 640


def test_counterfactuals_in_a_pipe_print_plain_progress_lines(month_store, monkeypatch):
    from types import SimpleNamespace

    from autointerp.counterfactual import ProgressEvent

    ids = [u.id for u in month_store.units()]

    def fake_generate(store, subject, unit_ids, client, s, progress):  # noqa: ANN001, ANN202
        for i, uid in enumerate(unit_ids):
            progress(ProgressEvent(unit_id=uid, stage="llm", unit_index=i, n_units=len(unit_ids)))
            time.sleep(0.05)
            progress(
                ProgressEvent(unit_id=uid, stage="done", unit_index=i, n_units=len(unit_ids), verified=i)
            )
        totals = dict(
            units=3, skipped=0, minimal=3, minimal_shortened=0, verified=2, candidates=4, hard_negatives=0
        )
        return SimpleNamespace(totals=lambda: totals)

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.03)
    monkeypatch.setattr("autointerp.subject.model.load_subject", lambda *a: "a loaded model")
    monkeypatch.setattr("autointerp.counterfactual.generate_counterfactuals", fake_generate)
    out = CliRunner().invoke(app, ["counterfactuals", "--db", str(month_store.path), "--no-llm"])
    assert out.exit_code == 0, out.output
    lines = [x for x in out.output.splitlines() if x.startswith("counterfactuals: ")]
    assert len(lines) >= 3 and "\x1b" not in out.output
    assert lines[0].startswith("counterfactuals: ") and lines[-1].startswith(
        "counterfactuals: 3/3 units (100%)"
    )
    assert len(ids) == 3 and "2/4 counterfactuals verified" in " ".join(out.output.split())


def test_phases_each_count_to_their_own_total_in_plain_lines():
    buf = io.StringIO()
    with progress.PhaseProgress(Console(file=buf, width=200), every=60) as bars:
        tick = bars.start("method top", 2)
        tick()
        tick()
        tick = bars.start("given explanations", 3)
        tick()
    lines = [re.sub(r" · elapsed.*", "", x) for x in buf.getvalue().splitlines()]
    assert lines == ["method top: 2/2 units (100%)", "given explanations: 1/3 units (33%)"]
