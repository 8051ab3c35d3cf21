"""A label run on real embedded models (Gemma records, SmolLM2 labels) with a dead unit among live
ones, interrupted by Ctrl-C and by kill -9 in a subprocess: the rerun loses and duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autointerp import record_units
from autointerp.store import Store
from autointerp.types import Context, Example, Unit, UnitRef, UnitStats

pytestmark = pytest.mark.slow
HOOK = "blocks.6.mlp.hook_post"
LIVE = [f"gemma-3-270m/{HOOK}/{i}" for i in (1, 2, 3)]
DEAD = f"gemma-3-270m/{HOOK}/9999"
ROOT = Path(__file__).resolve().parents[1]


def add_dead_unit(store: Store) -> None:
    """A unit that never fired, as a dead SAE latent is recorded: max 0, top windows at 0."""
    run_id = store.get_unit(LIVE[0]).run_id
    stats = UnitStats(
        n_tokens=2000, max=0.0, mean=0.0, std=0.0, frac_firing=0.0, fire_threshold=0.0,
        hist_edges=[0.0, 1.0], hist_counts=[2000],
    )  # fmt: skip
    unit = Unit(ref=UnitRef.parse(DEAD), run_id=run_id, stats=stats)
    ctx = Context(id="dead-window", token_ids=[2, 3, 4], tokens=["a", "b", "c"])
    store.write_units([unit], [Example(unit_id=DEAD, kind="top", rank=0, context=ctx, acts=[0.0] * 3)])


def start_label(db: Path) -> subprocess.Popen:
    args = ["label", "--db", str(db), "--explainer", "local:smollm2-135m", "--concurrency", "1"]
    args += ["--simulator-mode", "exact-whole"]  # SmolLM2's mass in 2-token listings is near the floor
    for uid in [LIVE[0], DEAD, *LIVE[1:]]:
        args += ["--unit", uid]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "autointerp", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Ctrl-C as in a terminal: a parent that ignores SIGINT (some runners do) would pass that on
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_explanations(db: Path, n: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    t0 = time.monotonic()
    while len(Store.reader(db).explanations()) < n:  # read-only: never waits on the run's writes
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.5)


def test_dead_unit_ctrl_c_and_kill_9_then_the_rerun_completes(gemma, tmp_path):
    db = tmp_path / "small.db"
    record_units(db, [HOOK], units=[1, 2, 3], subject=gemma, max_tokens=2048, ctx=32, batch_size=16, top_k=8)
    add_dead_unit(Store(db))

    proc = start_label(db)  # Ctrl-C after the first unit
    wait_for_explanations(db, 1, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    (run,) = Store(db).runs("label")
    assert (run.status, run.summary["error"]) == ("failed", "interrupted")

    proc = start_label(db)  # kill -9 after the second unit
    wait_for_explanations(db, 2, proc)
    proc.kill()
    proc.wait()

    proc = start_label(db)
    out = proc.communicate(timeout=900)[0].decode()
    flat = " ".join(out.split())
    assert proc.returncode == 0, out
    assert "1 skipped: never fired" in flat and "3 done" in flat
    store = Store(db)
    assert sorted(e.unit_id for e in store.explanations()) == LIVE  # one each, none for the dead unit
    assert sorted(x.unit_id for x in store.scores()) == LIVE
    (run,) = store.runs("label")
    assert run.status == "complete" and list(run.summary["unlabellable"]) == [DEAD]
