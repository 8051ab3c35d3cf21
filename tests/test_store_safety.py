"""The store's files stay valid and shared: strict JSON (and its migration), concurrent writers, and one
sentence for a locked, read-only or full store."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils
from conftest import build_month_store

from autointerp import label
from autointerp import store as store_mod
from autointerp.errors import UserError
from autointerp.store import SCHEMA_VERSION, Store
from autointerp.types import Explanation, RunRecord, Score

UNIT = "m/blocks.0.mlp.hook_post/0"


def strict(text: str) -> object:
    """json.loads that refuses NaN and +-Infinity, as RFC 8259 and SQLite's json functions do."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def all_json(store: Store) -> list[str]:
    return [
        text
        for table, cols in store_mod._JSON_COLUMNS.items()
        for col in cols
        for (text,) in store.db.execute(f"SELECT {col} FROM {table} WHERE {col} IS NOT NULL")
    ]


def nan_explanation(store: Store) -> None:
    exp = Explanation(
        id="e1", unit_id=UNIT, text="months", method="top", model="x", prompt="p",
        settings={"validation_correlation": [float("nan")]},
    )  # fmt: skip
    score = Score(
        explanation_id="e1", unit_id=UNIT, scorer="correlation", value=None, status="nan",
        details={"per_quantile": [float("nan"), float("-inf"), 0.5]},
    )  # fmt: skip
    store.put_explanation(exp, [score])


def test_every_json_column_is_strict_json_and_infinite_edges_round_trip(tmp_path):
    store = build_month_store(tmp_path / "m.db")
    nan_explanation(store)
    store.finish_run("r1", "complete", {"loss": float("inf")})
    texts = all_json(store)
    assert texts and all(strict(t) is not None for t in texts)
    edges = store.db.execute("SELECT json_extract(hist, '$.edges') FROM units LIMIT 1").fetchone()[0]
    assert json.loads(edges) == [None, 0.0, None]  # SQLite itself reads it
    assert store.get_unit(UNIT).stats.hist_edges == [float("-inf"), 0.0, float("inf")]
    (score,) = store.scores("e1")
    assert score.details["per_quantile"] == [None, None, 0.5]


def test_an_old_store_with_infinities_is_migrated_to_strict_json(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    for v in range(3):  # a v3 store, as written before strict JSON
        store_mod.MIGRATIONS[v](db)
    db["meta"].insert({"key": "schema_version", "value": "3"}, pk="key")
    db["records"].insert(
        {"id": "r1", "kind": "record", "settings": "{}", "summary": '{"x": NaN}', "code_version": "t",
         "started_at": "t", "status": "complete"}
    )  # fmt: skip
    db["units"].insert(
        {"id": UNIT, "model": "m", "hook": "blocks.0.mlp.hook_post", "idx": 0, "run_id": "r1", "n_tokens": 9,
         "max": 1.0, "mean": 0.1, "std": 0.2, "frac_firing": 0.1, "fire_threshold": 0.0,
         "hist": '{"edges": [-Infinity, 0.0, Infinity], "counts": [8, 1]}'}
    )  # fmt: skip
    db["explanations"].insert(
        {"id": "e1", "unit_id": UNIT, "text": "NaN handling", "method": "top", "model": "x", "prompt": "p",
         "settings": "{}", "created_at": "t"}
    )  # fmt: skip
    db["scores"].insert(
        {"explanation_id": "e1", "unit_id": UNIT, "scorer": "correlation", "value": 0.5, "status": "ok",
         "simulator": "", "prompt": "", "details": '{"q": [NaN, 1.0], "note": "not NaN"}', "settings": "{}",
         "reason": "", "created_at": "t"}
    )  # fmt: skip
    db.conn.commit()
    with pytest.raises(sqlite3.OperationalError, match="malformed JSON"):
        db.execute("SELECT json_extract(hist, '$.edges') FROM units").fetchall()
    db.conn.close()

    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION
    assert all(strict(t) is not None for t in all_json(store))
    assert store.get_unit(UNIT).stats.hist_edges == [float("-inf"), 0.0, float("inf")]
    (score,) = store.scores("e1")
    assert score.details == {"q": [None, 1.0], "note": "not NaN"}  # strings are left alone
    assert store.get_run("r1").summary == {"x": None}
    assert store.explanations(UNIT)[0].text == "NaN handling"
    assert store.db.execute("SELECT unit_id, correlation FROM unit_labels").fetchall() == [(UNIT, 0.5)]


def test_show_json_is_strict_json(month_store):
    from typer.testing import CliRunner

    from autointerp.cli import app

    res = CliRunner().invoke(app, ["show", UNIT, "--db", str(month_store.path), "--json"])
    assert res.exit_code == 0, res.output
    shown = strict(res.stdout)
    assert shown["unit"]["stats"]["hist_edges"] == [None, 0.0, None]


def hold_write_lock(path, seconds: float) -> threading.Thread:
    """Another connection holds the store's write lock for `seconds` (started and held on return)."""
    held = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    return thread


def test_a_writer_waits_for_another_writers_lock(month_store):
    thread = hold_write_lock(month_store.path, 0.5)
    t0 = time.perf_counter()
    nan_explanation(month_store)  # a deferred BEGIN would fail at once with "database is locked"
    assert time.perf_counter() - t0 >= 0.4
    thread.join()
    assert [e.id for e in Store(month_store.path).explanations(UNIT)] == ["e1"]


def test_a_lock_held_past_the_busy_timeout_is_one_sentence(tmp_path):
    build_month_store(tmp_path / "m.db")
    store = Store(tmp_path / "m.db", busy_timeout=0.1)
    thread = hold_write_lock(store.path, 1.0)
    with pytest.raises(UserError, match=r"locked by another process writing to it \(waited 0.1 s\)"):
        nan_explanation(store)
    thread.join()
    assert store.explanations(UNIT) == []


def test_two_label_runs_on_one_store_both_finish_without_duplicates(month_store, scripted):
    llm = scripted()
    results, errors = [], []

    def run() -> None:
        try:
            results.append(label(month_store.path, explainer=llm.spec, concurrency=2))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    assert all(not s.failures and len(s.results) == 3 for s in results)
    again = Store(month_store.path)
    assert len(again.explanations()) == 3 and len(again.scores()) == 3
    assert [r.status for r in again.runs("label")] == ["complete"]


def test_a_second_recording_of_the_same_run_is_refused(tmp_path, char_tokenizer):
    from types import SimpleNamespace

    from autointerp.bench.synthetic import SyntheticUnit, TokensRule, synthetic_sources
    from autointerp.subject.model import SubjectModel
    from autointerp.subject.recorder import Recorder, run_id_for
    from autointerp.types import RecordSettings

    subject = SubjectModel(
        "tiny", SimpleNamespace(cfg=SimpleNamespace(default_prepend_bos=True)), char_tokenizer()
    )
    text = tmp_path / "c.txt"
    text.write_text("a cat sat on a mat. " * 20)
    units = [SyntheticUnit(name="a", explanation="the letter a", rule=TokensRule(tokens=["a"]))]
    s = RecordSettings(
        model="tiny", hooks=[units[0].hook], corpus=[str(text)], ctx=8, max_tokens=160, top_k=3
    )
    recorder = Recorder(subject, s, synthetic_sources(subject.token_strs, units))
    path = tmp_path / "x.db"
    with (
        Store(path).claim_run(run_id_for(s)),  # another process, recording this run
        pytest.raises(UserError, match=r"^Another process is recording run rec-\w+ into .*x\.db; wait"),
    ):
        recorder.run(Store(path))
    assert recorder.run(Store(path)).n_units == 1  # once it is done, the run is free again


def test_a_read_only_store_is_not_called_a_foreign_file(month_store):
    month_store.db.execute("PRAGMA query_only = ON")  # writes fail as on a read-only file
    with pytest.raises(UserError, match="cannot be written: the file or its directory is read-only"):
        month_store.start_run(RunRecord(id="r2", kind="x", settings={}, code_version="t", started_at="t"))


def test_a_full_disk_is_not_called_a_foreign_file(month_store):
    (pages,) = month_store.db.execute("PRAGMA page_count").fetchone()
    month_store.db.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow: a full disk
    with pytest.raises(UserError, match=r"^The disk holding .*m\w*\.db is full; free some space"):
        for i in range(200):
            month_store.put_llm_call(
                store_mod.LLMCallRecord(
                    hash=f"h{i}", backend="b", model="m", request={"x": "y" * 4000}, response={}
                )
            )


@contextlib.contextmanager
def made_read_only(*paths: Path) -> Iterator[None]:
    """Really make files or folders unwritable for this process: `chmod a-w` for a user; for root, whom
    modes do not stop, the immutable attribute (`chattr +i`); skip where neither is possible."""
    if os.geteuid() != 0:
        modes = [p.stat().st_mode for p in paths]
        for p in paths:
            p.chmod(p.stat().st_mode & ~0o222)
        try:
            yield
        finally:
            for p, mode in zip(paths, modes, strict=True):
                p.chmod(mode)
        return
    done = []
    try:
        for p in paths:
            if (
                shutil.which("chattr") is None
                or subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode
            ):
                pytest.skip(
                    "root ignores file modes and this file system has no immutable attribute (chattr +i)"
                )
            done.append(p)
        yield
    finally:
        for p in done:
            subprocess.run(["chattr", "-i", str(p)], check=True)


def cli(*args: object):  # noqa: ANN201 - click Result
    from typer.testing import CliRunner

    from autointerp.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def one_sentence_error(out) -> str:  # noqa: ANN001 - click Result
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert text.startswith("error: ") and "Traceback" not in text and "not an autointerp store" not in text
    return text


def test_a_new_store_in_a_read_only_folder_is_one_sentence(tmp_path, scripted):
    folder = tmp_path / "ro"
    folder.mkdir()
    with made_read_only(folder):
        out = cli("record", "--db", folder / "new.db", "--hook", "blocks.0.mlp.hook_post")
        text = one_sentence_error(out)
        assert f"{folder / 'new.db'} cannot be written: the file or its directory is read-only" in text


def test_a_store_in_a_read_only_folder_is_one_sentence(tmp_path, scripted):
    folder = tmp_path / "ro"
    folder.mkdir()
    build_month_store(folder / "m.db").db.conn.close()  # closed: its -wal and -shm files are gone
    with made_read_only(folder):
        text = one_sentence_error(cli("label", "--db", folder / "m.db", "--explainer", scripted().spec))
        assert f"{folder / 'm.db'} cannot be written: the file or its directory is read-only" in text


def test_a_read_only_store_file_is_refused_at_open_by_writers_and_read_by_readers(tmp_path, scripted):
    db = tmp_path / "m.db"
    build_month_store(db)
    llm = scripted()
    with made_read_only(db):
        text = one_sentence_error(cli("label", "--db", db, "--explainer", llm.spec))
        assert text == (
            f"error: {db} cannot be written: the file is read-only (its mode or attributes); make it "
            "writable (chmod u+w) or pass another --db."
        )
        assert llm.requests == []  # refused before any LLM call
        listed = cli("units", "--db", db)  # reading needs no write access
        assert listed.exit_code == 0 and "3 units" in listed.output, listed.output
    assert cli("label", "--db", db, "--explainer", llm.spec).exit_code == 0  # writable again: it runs
