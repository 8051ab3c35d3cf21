"""The SQLite store: schema, migrations and every read and write. No other module writes SQL.

One file per project or run. Rows that belong together (a unit, its statistics and its examples)
are written in one transaction, so a killed process never leaves a unit that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import sqlite_utils
from filelock import FileLock, Timeout
from pydantic_core import to_jsonable_python

from autointerp.errors import UserError, environment_error
from autointerp.types import (
    BatchRecord,
    BatchRequestRecord,
    Context,
    Example,
    ExampleRows,
    Experiment,
    Explanation,
    HeadAttention,
    HeadMetrics,
    Investigation,
    LLMCallRecord,
    RunRecord,
    Score,
    SourceRef,
    Unit,
    UnitIndexRow,
    UnitQuery,
    UnitRef,
    UnitStats,
    now,
)

SCHEMA_VERSION = 11
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's write lock before giving up


def dumps(obj: object) -> str:
    """Strict JSON text (RFC 8259): NaN and infinities become null, so SQLite's json functions read it."""
    return json.dumps(to_jsonable_python(obj, inf_nan_mode="null"), sort_keys=True, allow_nan=False)


def _create_v1(db: sqlite_utils.Database) -> None:
    db["records"].create(
        {
            "id": str,
            "kind": str,
            "settings": str,
            "code_version": str,
            "started_at": str,
            "finished_at": str,
            "status": str,
            "summary": str,
        },
        pk="id",
    )
    db["contexts"].create({"id": str, "token_ids": str, "tokens": str}, pk="id")
    db["units"].create(
        {
            "id": str,
            "model": str,
            "hook": str,
            "sae": str,
            "idx": int,
            "run_id": str,
            "n_tokens": int,
            "max": float,
            "mean": float,
            "std": float,
            "frac_firing": float,
            "fire_threshold": float,
            "hist": str,
        },
        pk="id",
        foreign_keys=[("run_id", "records", "id")],
    )
    db["examples"].create(
        {
            "unit_id": str,
            "kind": str,
            "rank": int,
            "context_id": str,
            "acts": bytes,
            "max_act": float,
            "max_pos": int,
            "quantile": int,
            "provenance": str,
        },
        pk=("unit_id", "kind", "rank"),
        foreign_keys=[("unit_id", "units", "id"), ("context_id", "contexts", "id")],
    )
    db["examples"].create_index(["context_id"])
    db["llm_calls"].create(
        {
            "hash": str,
            "backend": str,
            "model": str,
            "request": str,
            "response": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "latency_s": float,
            "cost_usd": float,
            "created_at": str,
        },
        pk="hash",
    )


def _add_explanations_v2(db: sqlite_utils.Database) -> None:
    db["explanations"].create(
        {
            "id": str,
            "unit_id": str,
            "text": str,
            "method": str,
            "model": str,
            "prompt": str,
            "settings": str,
            "run_id": str,
            "created_at": str,
        },
        pk="id",
    )
    db["explanations"].create_index(["unit_id"])
    db["scores"].create(
        {
            "explanation_id": str,
            "unit_id": str,
            "scorer": str,
            "value": float,
            "status": str,
            "reason": str,
            "details": str,
            "simulator": str,
            "prompt": str,
            "settings": str,
            "run_id": str,
            "created_at": str,
        },
        pk=("explanation_id", "scorer", "simulator", "prompt"),
        foreign_keys=[("explanation_id", "explanations", "id")],
    )
    db["scores"].create_index(["unit_id"])


def _drop_context_index_v3(db: sqlite_utils.Database) -> None:
    """No query looks examples up by context; the index only slowed down every write of many units."""
    db.execute("DROP INDEX IF EXISTS idx_examples_context_id")


# Every JSON text column; rows written before v4 may hold NaN / Infinity, which is not JSON.
_JSON_COLUMNS = {
    "units": ("hist",),
    "records": ("settings", "summary"),
    "explanations": ("settings",),
    "scores": ("details", "settings"),
    "llm_calls": ("request", "response"),
    "examples": ("provenance",),
}


def _finite_json_v4(db: sqlite_utils.Database) -> None:
    """Rewrite JSON holding NaN or +-Infinity (invalid JSON, which json_extract refuses) with nulls."""
    for table, cols in _JSON_COLUMNS.items():
        for col in cols:
            rows = db.execute(
                f"SELECT rowid, {col} FROM {table} WHERE {col} LIKE '%NaN%' OR {col} LIKE '%Infinity%'"
            ).fetchall()
            db.conn.executemany(
                f"UPDATE {table} SET {col} = ? WHERE rowid = ?",
                ((dumps(json.loads(text)), rowid) for rowid, text in rows),
            )


# The latest value of each built-in scorer per explanation (NULL when undefined or failed).
_SCORE_COLUMN = """(SELECT s.value FROM scores s WHERE s.explanation_id = e.id AND s.scorer = '{0}'
    ORDER BY s.created_at DESC, s.rowid DESC LIMIT 1) AS {0}"""
BUILTIN_SCORERS = ("correlation", "detection", "fuzzing", "embedding", "counterfactual")


def _unit_labels_view_v5(db: sqlite_utils.Database) -> None:
    """The view `unit_labels`: one row per explanation with its unit's statistics and its scores."""
    scores = ",\n  ".join(_SCORE_COLUMN.format(name) for name in BUILTIN_SCORERS)
    db.execute(f"""CREATE VIEW unit_labels AS SELECT
  u.id AS unit_id, u.model, u.hook, u.sae, u.idx, u.n_tokens,
  CAST(ROUND(u.frac_firing * u.n_tokens) AS INTEGER) AS n_firing, u.frac_firing, u.max, u.mean, u.std,
  e.id AS explanation_id, e.text AS explanation, e.method, e.model AS explainer, e.prompt,
  e.run_id, e.created_at,
  {scores}
FROM explanations e JOIN units u ON u.id = e.unit_id""")


_SOURCE_KEYS = ("source_kind", "source_rank", "source_context")


def _add_example_source_v6(db: sqlite_utils.Database) -> None:
    """The link from a derived example to its source becomes columns (it was provenance keys)."""
    for col, typ in zip(_SOURCE_KEYS, (str, int, str), strict=True):
        db["examples"].add_column(col, typ)
    # SET expressions see the row before the update; a missing source context is the source's own.
    db.execute(
        """UPDATE examples SET
            source_kind = json_extract(provenance, '$.source_kind'),
            source_rank = json_extract(provenance, '$.source_rank'),
            source_context = COALESCE(json_extract(provenance, '$.source_context'), (
                SELECT s.context_id FROM examples s WHERE s.unit_id = examples.unit_id
                AND s.kind = json_extract(examples.provenance, '$.source_kind')
                AND s.rank = json_extract(examples.provenance, '$.source_rank'))),
            provenance = json_remove(provenance, '$.source_kind', '$.source_rank', '$.source_context')
        WHERE json_extract(provenance, '$.source_kind') IS NOT NULL"""
    )


def _explanations_fts_v7(db: sqlite_utils.Database) -> None:
    """Full-text search over explanation texts (FTS5, an index of `explanations.text` kept in step by
    triggers; porter stemming, so "months" finds "month"), and indexes for sorting units."""
    db.execute(
        "CREATE VIRTUAL TABLE explanations_fts USING fts5(text, content='explanations', "
        "content_rowid='rowid', tokenize='porter unicode61')"
    )
    delete = (
        "INSERT INTO explanations_fts(explanations_fts, rowid, text) VALUES ('delete', old.rowid, old.text);"
    )
    insert = "INSERT INTO explanations_fts(rowid, text) VALUES (new.rowid, new.text);"
    for name, event, body in (
        ("ai", "INSERT", insert),
        ("ad", "DELETE", delete),
        ("au", "UPDATE", delete + insert),
    ):
        db.execute(f"CREATE TRIGGER explanations_fts_{name} AFTER {event} ON explanations BEGIN {body} END")
    db.execute("INSERT INTO explanations_fts(explanations_fts) VALUES ('rebuild')")
    # the viewer's index pages sort and page on these without reading every unit
    db.execute("CREATE INDEX IF NOT EXISTS idx_units_order ON units (model, hook, sae, idx)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_units_frac_firing ON units (frac_firing, id)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_units_max ON units (max, id)")


def _add_merge_columns_v8(db: sqlite_utils.Database) -> None:
    """What a lossless merge of record shards needs: each recorded example's window (its position in the
    run's window stream) and each unit's raw sums. NULL in rows recorded before."""
    db["examples"].add_column("window_pos", int)
    db["units"].add_column("sum", float)
    db["units"].add_column("sumsq", float)


_HEAD_METRIC_COLS = (
    "previous_token", "induction", "duplicate_token", "bos", "self_attn", "entropy", "mean_distance"
)  # fmt: skip


def _add_heads_v9(db: sqlite_utils.Database) -> None:
    """Attention heads: examples keep, per query position, the head's top source positions and weights
    (a blob, see `encode_attn`; NULL for every other unit), and `head_metrics` holds the head detectors'
    scores and categories per (model, layer, head)."""
    db["examples"].add_column("attn", bytes)
    db["head_metrics"].create(
        {
            "model": str,
            "layer": int,
            "head": int,
            **dict.fromkeys(_HEAD_METRIC_COLS, float),
            "categories": str,
            "settings": str,
            "code_version": str,
            "created_at": str,
        },
        pk=("model", "layer", "head"),
    )


def _add_investigations_v10(db: sqlite_utils.Database) -> None:
    """The agent's investigations and their experiments (one row per step)."""
    db["investigations"].create(
        {
            "id": str,
            "unit_id": str,
            "agent": str,
            "prompt": str,
            "mode": str,
            "status": str,
            "reason": str,
            "explanation": str,
            "explanation_id": str,
            "evidence": str,
            "steps": int,
            "prompt_tokens": int,
            "completion_tokens": int,
            "seconds": float,
            "settings": str,
            "messages": str,
            "code_version": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db["investigations"].create_index(["unit_id"], if_not_exists=True)
    db["experiments"].create(
        {
            "investigation_id": str,
            "id": str,
            "step": int,
            "tool": str,
            "arguments": str,
            "result": str,
            "error": str,
            "action": str,
            "thought": str,
            "source": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "seconds": float,
            "created_at": str,
        },
        pk=("investigation_id", "id"),
        foreign_keys=[("investigation_id", "investigations", "id")],
        if_not_exists=True,
    )


def _add_llm_batches_v11(db: sqlite_utils.Database) -> None:
    """Provider batches (OpenAI Batch API, Anthropic Message Batches) and each request in them."""
    db["llm_batches"].create(
        {
            "id": str,  # our submission id, written before the provider is asked
            "provider_id": str,  # the provider's batch id (NULL until it answered)
            "backend": str,
            "model": str,
            "status": str,  # preparing / submitted / collected / expired / failed / cancelled / lost
            "n_requests": int,
            "run_id": str,
            "detail": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db["llm_batch_requests"].create(
        {
            "custom_id": str,
            "batch": str,
            "key": str,  # the request's cache key (ChatRequest.cache_key)
            "unit_id": str,
            "phase": str,  # explain, or the scorer whose simulation / judgement it is
            "candidate": str,  # the explainer method (and seed) or the explanation id
            "request": str,
            "status": str,  # pending / succeeded / errored / lost / failed
            "response": str,
            "error": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "cost_usd": float,
            "updated_at": str,
        },
        pk="custom_id",
        foreign_keys=[("batch", "llm_batches", "id")],
        if_not_exists=True,
    )
    db["llm_batch_requests"].create_index(["key"], if_not_exists=True)
    db["llm_batch_requests"].create_index(["batch"], if_not_exists=True)


_INVESTIGATION_JSON = ("evidence", "settings", "messages")
_EXPERIMENT_JSON = ("arguments", "result")


# MIGRATIONS[v] upgrades a store at version v to v + 1 (v = 0: an empty file).
MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {
    0: _create_v1,
    1: _add_explanations_v2,
    2: _drop_context_index_v3,
    3: _finite_json_v4,
    4: _unit_labels_view_v5,
    5: _add_example_source_v6,
    6: _explanations_fts_v7,
    7: _add_merge_columns_v8,
    8: _add_heads_v9,
    9: _add_investigations_v10,
    10: _add_llm_batches_v11,
}


_LABEL_SELECT = """SELECT u.id AS unit_id, u.model, u.hook, u.sae, u.idx, u.n_tokens,
  CAST(ROUND(u.frac_firing * u.n_tokens) AS INTEGER) AS n_firing, u.frac_firing, u.max, u.mean, u.std,
  e.id AS explanation_id, e.text AS explanation, e.method, e.model AS explainer, e.prompt, e.run_id,
  e.created_at
FROM units u {join} explanations e ON e.unit_id = u.id {where}
ORDER BY u.model, u.hook, u.sae, u.idx, e.created_at, e.rowid"""


class Store:
    """A project's SQLite file."""

    def __init__(self, path: str | Path, busy_timeout: float = BUSY_TIMEOUT_S, read_only: bool = False):
        """Open (creating or migrating) the store; a writer waits up to `busy_timeout` s for the lock.

        A store file this process may not write is refused at once (UserError) unless `read_only`: a
        command that only reads it (units, show, results) may. SQLite itself would only fail at the
        first write, after a model load or an LLM call. (`Store.reader` opens one that cannot write.)"""
        self.path, self.busy_timeout = Path(path), busy_timeout
        if self.path.exists() and self.path.is_dir():
            raise UserError(f"{self.path} is a directory; pass a file path such as runs/x.db to --db.")
        if not read_only and self.path.exists() and not os.access(self.path, os.W_OK):
            raise UserError(
                f"{self.path} cannot be written: the file is read-only (its mode or attributes); make it "
                "writable (chmod u+w) or pass another --db."
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode: every transaction is explicit, and writers begin it IMMEDIATE (_write)
            # usable from another thread (a sync wrapper beside a running event loop), never from two at once
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA cache_size=-131072")  # 128 MiB: bulk unit writes stay in memory
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (sqlite3.Error, OSError) as e:
            raise (
                self._file_error(e)
                or environment_error(e, self.path)
                or UserError(f"{self.path} could not be opened as a store ({e}).")
            ) from e

    @classmethod
    def reader(cls, path: str | Path, busy_timeout: float = BUSY_TIMEOUT_S) -> Store:
        """An existing store at the current schema on a connection that cannot write (SQLite `mode=ro`
        and `query_only`): what the viewer serves from."""
        store = cls.__new__(cls)
        store.path, store.busy_timeout = Path(path), busy_timeout
        store._open_read_only()
        return store

    def _open_read_only(self) -> None:
        if not self.path.is_file():
            raise UserError(f"No store at {self.path}; run `autointerp record --db {self.path} ...` first.")
        uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            conn.execute("PRAGMA cache_size=-32768")  # 32 MiB: bounded, whatever the store size
            self.db = sqlite_utils.Database(conn)
            version = self.schema_version()
        except sqlite3.Error as e:
            raise self._file_error(e) or UserError(f"{self.path} could not be read ({e}).") from e
        if version == -1:
            raise UserError(f"{self.path} is an SQLite file but not an autointerp store; pass another --db.")
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{self.path} has store schema v{version}, not v{SCHEMA_VERSION}; open it once with write "
                "access (e.g. `autointerp units --db ...`) to upgrade it."
            )

    def _file_error(self, e: sqlite3.Error | OSError) -> UserError | None:
        """One sentence for what went wrong with the file (locked, read-only, disk full, not a store), or
        None for an error that is not about the file."""
        name = getattr(e, "sqlite_errorname", "")
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or name.startswith("SQLITE_FULL"):
            return UserError(f"The disk holding {self.path} is full; free some space and run again.")
        if name.startswith("SQLITE_BUSY"):
            return UserError(
                f"{self.path} is locked by another process writing to it (waited {self.busy_timeout:g} s); "
                "wait for it to finish, or pass another --db."
            )
        if isinstance(e, PermissionError) or name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
            return UserError(
                f"{self.path} cannot be written: the file or its directory is read-only ({e}); "
                "make it writable or pass another --db."
            )
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return UserError(f"{self.path} is not an autointerp store ({e}); pass another --db path.")
        if isinstance(e, OSError) or name.startswith("SQLITE_IOERR"):
            return UserError(f"Reading or writing {self.path} failed ({e}); check the file and its disk.")
        return None

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """A write transaction that takes the lock up front (BEGIN IMMEDIATE), waiting up to the busy
        timeout for another writer; nested, a savepoint. Lock, disk and permission errors: UserError."""
        if self.db.conn.in_transaction:
            with self.db.atomic():
                yield
            return
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.conn.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        except (sqlite3.OperationalError, OSError) as e:
            if (user_error := self._file_error(e)) is None:
                raise
            raise user_error from e

    @contextlib.contextmanager
    def claim_run(self, run_id: str, doing: str = "recording") -> Iterator[None]:
        """Hold run `run_id` for this process (an OS file lock, freed even by kill -9); UserError at once
        when another process holds it."""
        lock_path = self.path.with_name(self.path.name + ".ckpt") / f"{run_id}.lock"
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(lock_path, timeout=0)
            lock.acquire()
        except Timeout:
            raise UserError(
                f"Another process is {doing} run {run_id} into {self.path}; wait for it to finish."
            ) from None
        except OSError as e:
            if (user_error := self._file_error(e)) is None:
                raise
            raise user_error from e
        try:
            yield
        finally:
            lock.release()

    # -- schema ---------------------------------------------------------------------------------
    def schema_version(self) -> int:
        if "meta" not in self.db.table_names():
            return 0 if not self.db.table_names() else -1
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else -1

    def _migrate(self) -> None:
        if self.schema_version() == SCHEMA_VERSION:
            return
        with self._write():  # one process migrates; another waits, then finds the store current
            version = self.schema_version()
            if version == -1:
                raise UserError(
                    f"{self.path} is an SQLite file but not an autointerp store; pass another --db."
                )
            if version > SCHEMA_VERSION:
                raise UserError(
                    f"{self.path} has store schema v{version}, newer than this autointerp "
                    f"(v{SCHEMA_VERSION}); upgrade autointerp to read it."
                )
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](self.db)
                version += 1
                self.db["meta"].upsert({"key": "schema_version", "value": str(version)}, pk="key")

    # -- runs -----------------------------------------------------------------------------------
    def start_run(self, run: RunRecord) -> None:
        with self._write():
            self.db["records"].upsert(_run_row(run), pk="id")

    def finish_run(self, run_id: str, status: str, summary: dict) -> None:
        with self._write():
            self.db["records"].update(
                run_id, {"status": status, "finished_at": now(), "summary": dumps(summary)}
            )

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = list(self.db["records"].rows_where("id = ?", [run_id]))
        return _run_from_row(rows[0]) if rows else None

    def runs(self, kind: str | None = None) -> list[RunRecord]:
        where, args = ("kind = ?", [kind]) if kind else (None, None)
        return [_run_from_row(r) for r in self.db["records"].rows_where(where, args, order_by="started_at")]

    # -- units and examples ---------------------------------------------------------------------
    def write_units(self, units: Iterable[Unit], examples: Iterable[Example] | ExampleRows) -> None:
        """Replace these units and their examples in one transaction (all or nothing)."""
        units = list(units)
        cols = _EXAMPLE_COLS
        if isinstance(examples, ExampleRows):  # recorded examples: no source columns
            contexts, rows = examples.contexts, _example_rows(examples)
        else:
            examples = list(examples)
            contexts = {e.context.id: e.context for e in examples}
            cols, rows = _ALL_EXAMPLE_COLS, (tuple(_example_row(e).values()) for e in examples)
        conn = self.db.conn
        with self._write():
            for chunk in _chunks([u.id for u in units], 500):
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM examples WHERE unit_id IN ({marks})", chunk)
            conn.executemany(
                "INSERT OR IGNORE INTO contexts (id, token_ids, tokens) VALUES (?, ?, ?)",
                ((c.id, json.dumps(c.token_ids), json.dumps(c.tokens)) for c in contexts.values()),
            )
            self.db["units"].upsert_all((_unit_row(u) for u in units), pk="id", batch_size=500)
            conn.executemany(_insert_examples("INSERT", cols), rows)

    def add_examples(self, examples: Iterable[Example]) -> None:
        """Add (or replace, by unit, kind and rank) examples of recorded units, in one transaction."""
        examples = list(examples)
        unknown = {e.unit_id for e in examples} - {u for (u,) in self.db.execute("SELECT id FROM units")}
        if unknown:
            raise UserError(f"{sorted(unknown)[0]} is not recorded in {self.path}; record it first.")
        contexts = {e.context.id: e.context for e in examples}
        conn = self.db.conn
        with self._write():
            conn.executemany(
                "INSERT OR IGNORE INTO contexts (id, token_ids, tokens) VALUES (?, ?, ?)",
                ((c.id, json.dumps(c.token_ids), json.dumps(c.tokens)) for c in contexts.values()),
            )
            conn.executemany(
                _insert_examples("INSERT OR REPLACE", _ALL_EXAMPLE_COLS),
                (tuple(_example_row(e).values()) for e in examples),
            )

    def delete_examples(self, unit_id: str, kind: str) -> None:
        with self._write():
            self.db.conn.execute("DELETE FROM examples WHERE unit_id = ? AND kind = ?", [unit_id, kind])

    # -- explanations and scores ----------------------------------------------------------------
    def delete_labels(self) -> None:
        """Remove every explanation and score (a benchmark labels the same recording afresh)."""
        with self._write():
            self.db.conn.execute("DELETE FROM scores")
            self.db.conn.execute("DELETE FROM explanations")

    def put_explanation(self, explanation: Explanation, scores: Iterable[Score] = ()) -> None:
        """Write an explanation with its scores in one transaction."""
        row = explanation.model_dump()
        row["settings"] = dumps(row["settings"])
        with self._write():
            self.db["explanations"].upsert(row, pk="id")
            for score in scores:
                self._put_score(score)

    def put_scores(self, scores: Iterable[Score]) -> None:
        with self._write():
            for score in scores:
                self._put_score(score)

    def _put_score(self, score: Score) -> None:
        row = score.model_dump()
        for key in ("details", "settings"):
            row[key] = dumps(row[key])
        self.db["scores"].upsert(row, pk=("explanation_id", "scorer", "simulator", "prompt"))

    def explanations(self, unit_id: str | None = None, method: str | None = None) -> list[Explanation]:
        clauses, args = [], []
        for col, val in (("unit_id", unit_id), ("method", method)):
            if val is not None:
                clauses.append(f"{col} = ?")
                args.append(val)
        rows = self.db["explanations"].rows_where(
            " AND ".join(clauses) or None, args or None, order_by="created_at"
        )
        return [Explanation(**{**r, "settings": json.loads(r["settings"])}) for r in rows]

    def get_explanation(self, explanation_id: str) -> Explanation | None:
        rows = list(self.db["explanations"].rows_where("id = ?", [explanation_id]))
        return Explanation(**{**rows[0], "settings": json.loads(rows[0]["settings"])}) if rows else None

    def scores(self, explanation_id: str | None = None, unit_id: str | None = None) -> list[Score]:
        clauses, args = [], []
        for col, val in (("explanation_id", explanation_id), ("unit_id", unit_id)):
            if val is not None:
                clauses.append(f"{col} = ?")
                args.append(val)
        rows = self.db["scores"].rows_where(
            " AND ".join(clauses) or None, args or None, order_by="created_at, rowid"
        )
        return [
            Score(**{**r, "details": json.loads(r["details"]), "settings": json.loads(r["settings"])})
            for r in rows
        ]

    def get_unit(self, unit_id: str) -> Unit | None:
        rows = list(self.db["units"].rows_where("id = ?", [unit_id]))
        return _unit_from_row(rows[0]) if rows else None

    def units(self, hook: str | None = None, model: str | None = None) -> list[Unit]:
        clauses, args = [], []
        for col, val in (("hook", hook), ("model", model)):
            if val is not None:
                clauses.append(f"{col} = ?")
                args.append(val)
        where = " AND ".join(clauses) or None
        rows = self.db["units"].rows_where(where, args or None, order_by="model, hook, sae, idx")
        return [_unit_from_row(r) for r in rows]

    def unit_label_rows(self, hook: str | None = None, explained_only: bool = False) -> list[dict]:
        """Each unit's statistics with one of its explanations per row (unit order, oldest explanation
        first); a unit without explanations gives one row with explanation fields None (unless
        `explained_only`). The columns of the view `unit_labels` (`label_columns`), less the scores."""
        join = "JOIN" if explained_only else "LEFT JOIN"
        where, args = ("WHERE u.hook = ?", [hook]) if hook else ("", [])
        cur = self.db.execute(_LABEL_SELECT.format(join=join, where=where), args)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def label_columns(self) -> list[str]:
        cur = self.db.execute(_LABEL_SELECT.format(join="JOIN", where="WHERE 0"))
        return [d[0] for d in cur.description]

    def latest_scores(self, unit_id: str | None = None) -> dict[str, dict[str, Score]]:
        """explanation id -> scorer -> its latest score (of any simulator and prompt)."""
        out: dict[str, dict[str, Score]] = {}
        for x in self.scores(unit_id=unit_id):  # oldest first: a later row replaces an earlier one
            out.setdefault(x.explanation_id, {})[x.scorer] = x
        return out

    def find_unit_ids(self, text: str) -> list[str]:
        """Recorded unit ids equal to `text` or ending in `/text` (a short id such as HOOK/INDEX)."""
        text = text.strip().strip("/")
        cur = self.db.execute(
            "SELECT id FROM units WHERE id = ? OR substr(id, -length(?) - 1) = '/' || ? ORDER BY id",
            [text, text, text],
        )
        return [r[0] for r in cur.fetchall()]

    def glob_unit_ids(self, pattern: str) -> list[str]:
        """Recorded unit ids that match the glob `pattern` (`*`, `?`, `[...]`) whole or after a `/`."""
        cur = self.db.execute(
            "SELECT id FROM units WHERE id GLOB ? OR id GLOB '*/' || ? ORDER BY model, hook, sae, idx",
            [pattern, pattern],
        )
        return [r[0] for r in cur.fetchall()]

    def hooks(self) -> list[str]:
        """The hooks that have recorded units, sorted."""
        return [h for (h,) in self.db.execute("SELECT DISTINCT hook FROM units ORDER BY hook")]

    def count_units(self) -> int:
        return self.db["units"].count

    # -- the viewer's index ---------------------------------------------------------------------
    def unit_index(self, q: UnitQuery) -> tuple[int, list[UnitIndexRow]]:
        """One page of units matching `q` and how many match in all; `score` is each unit's best latest
        `q.scorer` value over its explanations (None without a scorer or an ok score)."""
        inner, args = [], []
        if q.source:
            hook, _, sae = q.source.partition("/sae:")
            inner.append("u.hook = ? AND " + ("u.sae = ?" if sae else "u.sae IS NULL"))
            args += [hook, sae] if sae else [hook]
        for col, op, val in (
            ("frac_firing", ">=", q.min_freq),
            ("frac_firing", "<=", q.max_freq),
            ("max", ">=", q.min_max),
            ("max", "<=", q.max_max),
        ):
            if val is not None:
                inner.append(f"u.{col} {op} ?")
                args.append(val)
        if match := fts_query(q.search):
            inner.append(
                "u.id IN (SELECT e.unit_id FROM explanations_fts f JOIN explanations e ON e.rowid = f.rowid "
                "WHERE explanations_fts MATCH ?)"
            )
            args.append(match)
        if q.explained is not None:
            inner.append(
                ("" if q.explained else "NOT ")
                + "EXISTS (SELECT 1 FROM explanations e WHERE e.unit_id = u.id)"
            )
        where = ("WHERE " + " AND ".join(inner)) if inner else ""
        n_expl = "(SELECT COUNT(*) FROM explanations e WHERE e.unit_id = u.id)"
        score = _BEST_SCORE if q.scorer else "NULL"
        cols = "u.id, u.model, u.hook, u.sae, u.idx, u.n_tokens, u.frac_firing, u.max"
        score_args = [q.scorer] if q.scorer else []
        direction = "DESC" if q.descending else "ASC"
        natural = "DESC" if q.descending and q.sort == "index" else "ASC"  # ties: in index order
        ties = f"model {natural}, hook {natural}, sae {natural}, idx {natural}"
        page = [q.per_page, (q.page - 1) * q.per_page]
        if q.sort in ("explanations", "score") or (q.min_score is not None and q.scorer):
            # every matching unit's explanation count and best score, then sort and page
            key = "n_explanations" if q.sort == "explanations" else "score"
            order = f"{key} IS NULL, {key} {direction}, " if q.sort in ("explanations", "score") else ""
            sql = f"SELECT {cols}, {n_expl} AS n_explanations, {score} AS score FROM units u {where}"
            if q.min_score is not None and q.scorer:
                sql, args = f"SELECT * FROM ({sql}) WHERE score >= ?", [*score_args, *args, q.min_score]
            else:
                args = [*score_args, *args]
            # one pass: the window count is taken before LIMIT (a page past the end counts again)
            found = self.db.execute(
                f"SELECT *, COUNT(*) OVER () FROM ({sql}) ORDER BY {order}{ties} LIMIT ? OFFSET ?",
                [*args, *page],
            ).fetchall()
            total = (
                found[0][-1]
                if found
                else self.db.execute(f"SELECT COUNT(*) FROM ({sql})", args).fetchone()[0]
            )
            cur = iter(r[:-1] for r in found)
        else:
            # sort and page on the units table (indexed), then count explanations for the page only
            key = {"freq": "frac_firing", "max": "max"}.get(q.sort)
            order = f"{key} {direction}, {ties}" if key else ties
            total = self.db.execute(f"SELECT COUNT(*) FROM units u {where}", args).fetchone()[0]
            one_page = f"SELECT {cols} FROM units u {where} ORDER BY {order} LIMIT ? OFFSET ?"
            cur = self.db.execute(
                f"SELECT u.*, {n_expl}, {score} FROM ({one_page}) u ORDER BY {order}",
                [*score_args, *args, *page],
            )
        rows = [
            UnitIndexRow(
                unit_id=r[0],
                model=r[1],
                hook=r[2],
                sae=r[3],
                index=r[4],
                n_tokens=r[5],
                frac_firing=r[6],
                max=r[7],
                n_explanations=r[8],
                score=r[9],
            )  # fmt: skip
            for r in cur
        ]
        return total, rows

    def latest_labels(self, unit_ids: list[str]) -> list[tuple[Explanation, list[Score]]]:
        """The explanations of these units (oldest first), each with its latest score per scorer, without
        settings or score details: what an index page shows, in two queries."""
        out: dict[str, tuple[Explanation, list[Score]]] = {}
        for chunk in _chunks(unit_ids, 500):
            marks = ",".join("?" * len(chunk))
            cur = self.db.execute(
                "SELECT e.id, e.unit_id, e.text, e.method, e.model, e.prompt, e.run_id, e.created_at, "
                "s.scorer, s.value, s.status, s.simulator, s.prompt FROM explanations e "
                f"LEFT JOIN scores s ON s.explanation_id = e.id AND {_LATEST} WHERE e.unit_id IN ({marks}) "
                "ORDER BY e.created_at, e.rowid",
                chunk,
            )
            for eid, uid, text, method, model, prompt, run, at, scorer, value, status, sim, sprompt in cur:
                if eid not in out:
                    e = Explanation(
                        id=eid, unit_id=uid, text=text, method=method, model=model, prompt=prompt,
                        run_id=run, created_at=at,
                    )  # fmt: skip
                    out[eid] = (e, [])
                if scorer is not None:
                    out[eid][1].append(
                        Score(
                            explanation_id=eid,
                            unit_id=uid,
                            scorer=scorer,
                            value=value,
                            status=status,
                            simulator=sim,
                            prompt=sprompt,
                        )  # fmt: skip
                    )
        return sorted(out.values(), key=lambda x: x[0].created_at)

    def existing_unit_ids(self, ids: list[str]) -> set[str]:
        """Those of `ids` that are recorded units."""
        out: set[str] = set()
        for chunk in _chunks(ids, 500):
            cur = self.db.execute(f"SELECT id FROM units WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            out.update(r[0] for r in cur.fetchall())
        return out

    def scorer_names(self) -> list[str]:
        """Every scorer with a score in the store, sorted."""
        return [s for (s,) in self.db.execute("SELECT DISTINCT scorer FROM scores ORDER BY scorer")]

    def unit_sources(self) -> list[str]:
        """Every recorded source: a hook (its neurons) or HOOK/sae:NAME (an SAE's latents), sorted; read
        again only when the file has changed since the last call (a scan of every unit)."""
        version = self.db.execute("PRAGMA data_version").fetchone()[0], self.db["units"].count
        if getattr(self, "_sources", (None, None))[0] != version:
            cur = self.db.execute("SELECT DISTINCT hook, sae FROM units ORDER BY hook, sae")
            self._sources = version, [f"{hook}/sae:{sae}" if sae else hook for hook, sae in cur.fetchall()]
        return self._sources[1]

    def examples(self, unit_id: str, kind: str | None = None) -> list[Example]:
        sql = (
            "SELECT e.*, c.token_ids, c.tokens FROM examples e JOIN contexts c ON c.id = e.context_id "
            "WHERE e.unit_id = ?" + (" AND e.kind = ?" if kind else "") + " ORDER BY e.kind, e.rank"
        )
        cur = self.db.execute(sql, [unit_id, kind] if kind else [unit_id])
        cols = [d[0] for d in cur.description]
        return [_example_from_row(dict(zip(cols, row, strict=True))) for row in cur.fetchall()]

    # -- investigations -------------------------------------------------------------------------
    def put_investigation(
        self,
        inv: Investigation,
        experiments: Iterable[Experiment] = (),
        explanation: Explanation | None = None,
        scores: Iterable[Score] = (),
    ) -> None:
        """Write an investigation's row with new experiments (and its final explanation with its scores)
        in one transaction: a step, or the end, is all or nothing."""
        row = inv.model_dump()
        for key in _INVESTIGATION_JSON:
            row[key] = dumps(row[key])
        with self._write():
            if explanation is not None:
                self.put_explanation(explanation, scores)
            self.db["investigations"].upsert(row, pk="id")
            for exp in experiments:
                erow = exp.model_dump()
                for key in _EXPERIMENT_JSON:
                    erow[key] = dumps(erow[key])
                self.db["experiments"].upsert(erow, pk=("investigation_id", "id"))

    def get_investigation(self, investigation_id: str) -> Investigation | None:
        rows = list(self.db["investigations"].rows_where("id = ?", [investigation_id]))
        return _investigation_from_row(rows[0]) if rows else None

    def investigations(self, unit_id: str | None = None) -> list[Investigation]:
        where, args = ("unit_id = ?", [unit_id]) if unit_id else (None, None)
        rows = self.db["investigations"].rows_where(where, args, order_by="created_at, rowid")
        return [_investigation_from_row(r) for r in rows]

    def experiments(self, investigation_id: str) -> list[Experiment]:
        rows = self.db["experiments"].rows_where(
            "investigation_id = ?", [investigation_id], order_by="step, rowid"
        )
        return [Experiment(**{**r, **{k: json.loads(r[k]) for k in _EXPERIMENT_JSON}}) for r in rows]

    def example_rows(self, unit_ids: list[str], kinds: Iterable[str]) -> list[tuple]:
        """(unit id, kind, context id, window position, float32 activations as bytes) of the examples of
        these kinds of these units, by unit, kind and rank: raw rows, no object per example (a merge
        reads hundreds of thousands)."""
        kinds = list(kinds)
        out: list[tuple] = []
        for chunk in _chunks(unit_ids, 500):
            unit_marks, kind_marks = ",".join("?" * len(chunk)), ",".join("?" * len(kinds))
            out += self.db.execute(
                "SELECT unit_id, kind, context_id, window_pos, acts FROM examples "
                f"WHERE unit_id IN ({unit_marks}) AND kind IN ({kind_marks}) ORDER BY unit_id, kind, rank",
                [*chunk, *kinds],
            ).fetchall()
        return out

    def contexts(self, ids: Iterable[str]) -> dict[str, Context]:
        """The stored windows with these ids."""
        out: dict[str, Context] = {}
        for chunk in _chunks(list(ids), 500):
            cur = self.db.execute(
                f"SELECT id, token_ids, tokens FROM contexts WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for cid, token_ids, tokens in cur.fetchall():
                out[cid] = Context.model_construct(
                    id=cid, token_ids=json.loads(token_ids), tokens=json.loads(tokens)
                )
        return out

    def units_of_run(self, run_id: str) -> list[Unit]:
        """The units a run recorded, by model, hook, SAE and index."""
        rows = self.db["units"].rows_where("run_id = ?", [run_id], order_by="model, hook, sae, idx")
        return [_unit_from_row(r) for r in rows]

    def copy_to(self, dest: str | Path) -> None:
        """Write a consistent copy of this store to the new file `dest` (SQLite's online backup)."""
        target = sqlite3.connect(dest)
        try:
            self.db.conn.backup(target)
        except sqlite3.Error as e:
            raise self._file_error(e) or UserError(f"Copying {self.path} to {dest} failed ({e}).") from e
        finally:
            target.close()

    def put_run(self, run: RunRecord) -> None:
        """Write a run's row as it is (status and summary included)."""
        with self._write():
            self.db["records"].upsert(_run_row(run), pk="id")

    def absorb(self, other: str | Path, skip_runs: Iterable[str] = ()) -> None:
        """Copy every row of the store at `other` that this one lacks (by primary key), in one
        transaction: runs, units and their examples and contexts, explanations, scores, LLM calls,
        provider batches and their requests.
        Runs in `skip_runs`, and the units (with examples) they recorded, are left out."""
        skip = list(skip_runs)
        marks = ",".join("?" * len(skip))
        cols = {t: [c.name for c in self.db[t].columns] for t in _ABSORB_TABLES}
        where = (
            {
                "records": f"id NOT IN ({marks})",
                "units": f"run_id NOT IN ({marks})",
                "examples": f"unit_id NOT IN (SELECT id FROM src.units WHERE run_id IN ({marks}))",
                "contexts": f"""id IN (SELECT context_id FROM src.examples WHERE unit_id NOT IN
                (SELECT id FROM src.units WHERE run_id IN ({marks})))""",
            }
            if skip
            else {}
        )
        conn = self.db.conn
        conn.execute("ATTACH DATABASE ? AS src", [str(Path(other).resolve())])
        try:
            with self._write():
                for table in _ABSORB_TABLES:
                    names = ", ".join(f'"{c}"' for c in cols[table])
                    clause = where.get(table, "1")
                    conn.execute(
                        f"INSERT OR IGNORE INTO main.{table} ({names}) SELECT {names} FROM src.{table} "
                        f"WHERE {clause}",
                        skip if table in where else [],
                    )
        finally:
            conn.execute("DETACH DATABASE src")

    # -- head detectors -------------------------------------------------------------------------
    def put_head_metrics(self, metrics: Iterable[HeadMetrics]) -> None:
        """Replace these heads' detector rows (by model, layer, head), in one transaction."""
        rows = [
            m.model_dump() | {"categories": dumps(m.categories), "settings": dumps(m.settings)}
            for m in metrics
        ]
        with self._write():
            self.db["head_metrics"].upsert_all(rows, pk=("model", "layer", "head"))

    def head_metrics(self, model: str | None = None) -> list[HeadMetrics]:
        """Stored head detector rows (of `model`, or all), by model, layer, head."""
        where, args = ("model = ?", [model]) if model else (None, None)
        rows = self.db["head_metrics"].rows_where(where, args, order_by="model, layer, head")
        return [HeadMetrics(**r | {k: json.loads(r[k]) for k in ("categories", "settings")}) for r in rows]

    # -- LLM call cache -------------------------------------------------------------------------
    def get_llm_call(self, request_hash: str) -> LLMCallRecord | None:
        rows = list(self.db["llm_calls"].rows_where("hash = ?", [request_hash]))
        if not rows:
            return None
        row = rows[0]
        return LLMCallRecord(
            **{**row, "request": json.loads(row["request"]), "response": json.loads(row["response"])}
        )

    def put_llm_call(self, call: LLMCallRecord) -> None:
        row = call.model_dump()
        row["request"] = dumps(row["request"])
        row["response"] = dumps(row["response"])
        with self._write():
            self.db["llm_calls"].upsert(row, pk="hash")

    # -- provider batches -----------------------------------------------------------------------
    def put_batch(self, batch: BatchRecord, requests: Iterable[BatchRequestRecord]) -> None:
        """A new submission and its requests, in one transaction (before the provider is asked)."""
        with self._write():
            self.db["llm_batches"].insert(batch.model_dump(), pk="id")
            self.db["llm_batch_requests"].insert_all(
                ({**_batch_request_row(r), "updated_at": now()} for r in requests), pk="custom_id"
            )

    def update_batch(self, batch_id: str, **fields: str | None) -> None:
        """Set a submission's provider id, status or detail."""
        with self._write():
            self.db["llm_batches"].update(batch_id, {**fields, "updated_at": now()})

    def open_batches(self) -> list[BatchRecord]:
        """Submissions not yet collected (preparing or submitted), oldest first."""
        rows = self.db["llm_batches"].rows_where(
            "status IN ('preparing', 'submitted')", order_by="created_at, rowid"
        )
        return [BatchRecord(**r) for r in rows]

    def batches(self) -> list[BatchRecord]:
        return [BatchRecord(**r) for r in self.db["llm_batches"].rows_where(order_by="created_at, rowid")]

    def batch_requests(self, batch_id: str) -> list[BatchRequestRecord]:
        rows = self.db["llm_batch_requests"].rows_where("batch = ?", [batch_id], order_by="rowid")
        return [_batch_request_from_row(r) for r in rows]

    def latest_batch_request(self, key: str) -> tuple[BatchRequestRecord, BatchRecord] | None:
        """The latest submission of the request with cache key `key`, and its batch."""
        rows = list(
            self.db["llm_batch_requests"].rows_where("key = ?", [key], order_by="rowid DESC", limit=1)
        )
        if not rows:
            return None
        req = _batch_request_from_row(rows[0])
        return req, BatchRecord(**self.db["llm_batches"].get(req.batch))

    def batch_attempts(self, key: str) -> int:
        """How often the request with cache key `key` reached the provider and came back without an answer."""
        sql = (
            "SELECT COUNT(*) FROM llm_batch_requests r JOIN llm_batches b ON b.id = r.batch "
            "WHERE r.key = ? AND r.status IN ('errored', 'lost', 'failed') AND b.provider_id IS NOT NULL"
        )
        return self.db.execute(sql, [key]).fetchone()[0]

    def finish_batch(
        self, batch_id: str, status: str, results: Iterable[BatchRequestRecord], detail: str = ""
    ) -> None:
        """Write a submission's results and status in one transaction; its requests that got no result
        (still `pending`) become `lost` (resubmitted later)."""
        with self._write():
            for r in results:
                row = _batch_request_row(r)
                self.db["llm_batch_requests"].update(r.custom_id, {**row, "updated_at": now()})
            self.db.execute(
                "UPDATE llm_batch_requests SET status = 'lost', updated_at = ? "
                "WHERE batch = ? AND status = 'pending'",
                [now(), batch_id],
            )
            self.db["llm_batches"].update(batch_id, {"status": status, "detail": detail, "updated_at": now()})


# What `absorb` copies, parents before children (foreign keys).
_ABSORB_TABLES = (
    "records",
    "contexts",
    "units",
    "examples",
    "llm_calls",
    "llm_batches",
    "llm_batch_requests",
    "explanations",
    "scores",
)


def discard_if_blank(path: str | Path) -> bool:
    """Remove the store at `path` (and its WAL files) when it holds nothing: no run, unit, explanation or
    LLM call. What a command that failed on its input leaves behind when it created the file. True when
    removed; a store with anything in it, or that cannot be read, is kept."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            held = [t for t in ("records", "units", "explanations", "llm_calls") if t in tables]
            if any(conn.execute(f"SELECT 1 FROM [{t}] LIMIT 1").fetchone() for t in held):
                return False
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)
    return True


# The best latest score of one scorer (the first ?) over a unit's explanations: per explanation, the
# newest row of that scorer (as `latest_scores`), then the maximum.
_LATEST = """NOT EXISTS (SELECT 1 FROM scores t WHERE t.explanation_id = s.explanation_id
    AND t.scorer = s.scorer
    AND (t.created_at > s.created_at OR (t.created_at = s.created_at AND t.rowid > s.rowid)))"""
_BEST_SCORE = f"(SELECT MAX(s.value) FROM scores s WHERE s.unit_id = u.id AND s.scorer = ? AND {_LATEST})"


def fts_query(text: str) -> str:
    """Words of a search box -> an FTS5 query that needs every word (each also as a prefix); "" for none.
    Each word is quoted, so no user text is read as FTS5 syntax."""
    return " ".join(f'"{w}"*' for w in re.findall(r"\w+", text))


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _batch_request_row(r: BatchRequestRecord) -> dict:
    row = r.model_dump()
    row["request"] = dumps(row["request"])
    row["response"] = dumps(row["response"]) if row["response"] is not None else None
    return row


def _batch_request_from_row(row: dict) -> BatchRequestRecord:
    response = json.loads(row["response"]) if row["response"] else None
    return BatchRequestRecord(**{**row, "request": json.loads(row["request"]), "response": response})


def _run_row(run: RunRecord) -> dict:
    row = run.model_dump()
    row["settings"] = dumps(row["settings"])
    row["summary"] = dumps(row["summary"])
    return row


def _run_from_row(row: dict) -> RunRecord:
    return RunRecord(
        **{**row, "settings": json.loads(row["settings"]), "summary": json.loads(row["summary"] or "{}")}
    )


def _investigation_from_row(row: dict) -> Investigation:
    return Investigation(**{**row, **{k: json.loads(row[k]) for k in _INVESTIGATION_JSON}})


def _unit_row(u: Unit) -> dict:
    s = u.stats
    return {
        "id": u.id,
        "model": u.ref.model,
        "hook": u.ref.hook,
        "sae": u.ref.sae,
        "idx": u.ref.index,
        "run_id": u.run_id,
        "n_tokens": s.n_tokens,
        "max": s.max,
        "mean": s.mean,
        "std": s.std,
        "frac_firing": s.frac_firing,
        "fire_threshold": s.fire_threshold,
        "hist": dumps({"edges": s.hist_edges, "counts": s.hist_counts}),  # outer edges: null
        "sum": s.sum,
        "sumsq": s.sumsq,
    }


def _unit_from_row(row: dict) -> Unit:
    hist = json.loads(row["hist"])
    stats = UnitStats(
        n_tokens=row["n_tokens"],
        max=row["max"],
        mean=row["mean"],
        std=row["std"],
        frac_firing=row["frac_firing"],
        fire_threshold=row["fire_threshold"],
        hist_edges=_edges(hist["edges"]),
        hist_counts=hist["counts"],
        sum=row.get("sum"),
        sumsq=row.get("sumsq"),
    )
    ref = UnitRef(model=row["model"], hook=row["hook"], index=row["idx"], sae=row["sae"])
    return Unit(ref=ref, run_id=row["run_id"], stats=stats)


def _edges(edges: list[float | None]) -> list[float]:
    """Histogram edges as stored (null for an unbounded outer edge) -> floats with -inf / +inf."""
    return [(-np.inf if i == 0 else np.inf) if x is None else x for i, x in enumerate(edges)]


_EXAMPLE_COLS = (
    "unit_id",
    "kind",
    "rank",
    "context_id",
    "acts",
    "max_act",
    "max_pos",
    "quantile",
    "provenance",
    "window_pos",
    "attn",
)
_ALL_EXAMPLE_COLS = (*_EXAMPLE_COLS, *_SOURCE_KEYS)


def _insert_examples(verb: str, cols: tuple[str, ...]) -> str:
    return f"{verb} INTO examples ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


def _example_rows(x: ExampleRows) -> Iterable[tuple]:
    """ExampleRows as insert tuples in _EXAMPLE_COLS order; acts go in as float32 bytes."""
    acts = np.ascontiguousarray(x.acts, dtype=np.float32)
    provenance = dumps(x.provenance)
    quantiles = [None if q < 0 else q for q in x.quantiles.tolist()]
    windows = itertools.repeat(None) if x.windows is None else x.windows.tolist()
    if x.attn_src is None or x.attn_w is None:
        attn: Iterable[bytes | None] = itertools.repeat(None)
    else:
        rows = itertools.repeat(True) if x.attn_rows is None else x.attn_rows.tolist()
        attn = (
            encode_attn(s, w) if head else None
            for s, w, head in zip(x.attn_src, x.attn_w, rows, strict=False)
        )
    return zip(
        x.unit_ids.tolist(),
        x.kinds.tolist(),
        x.ranks.tolist(),
        x.context_ids.tolist(),
        acts,  # each row is a buffer sqlite reads as a blob, without a copy
        acts.max(axis=1).tolist(),
        acts.argmax(axis=1).tolist(),
        quantiles,
        itertools.repeat(provenance),
        windows,
        attn,
        strict=False,  # the repeats are endless
    )


def encode_attn(src: np.ndarray, weights: np.ndarray) -> bytes:
    """(T, K) source positions (int16, -1: none) and (T, K) weights -> one blob: T, K as int32, the
    positions as int16, the weights as float32."""
    t, k = src.shape
    return (
        np.array([t, k], dtype=np.int32).tobytes()
        + np.ascontiguousarray(src, dtype=np.int16).tobytes()
        + np.ascontiguousarray(weights, dtype=np.float32).tobytes()
    )


def decode_attn(blob: bytes) -> HeadAttention:
    """`encode_attn`'s blob -> per query position, its source positions and weights (empty slots dropped)."""
    t, k = np.frombuffer(blob[:8], dtype=np.int32).tolist()
    src = np.frombuffer(blob[8 : 8 + 2 * t * k], dtype=np.int16).reshape(t, k)
    w = np.frombuffer(blob[8 + 2 * t * k :], dtype=np.float32).reshape(t, k)
    keep = src >= 0
    return HeadAttention(
        src=[row[m].tolist() for row, m in zip(src, keep, strict=True)],
        weights=[row[m].tolist() for row, m in zip(w, keep, strict=True)],
    )


def _attn_blob(attn: HeadAttention | None) -> bytes | None:
    if attn is None:
        return None
    k = max((len(s) for s in attn.src), default=0)
    src = np.full((len(attn.src), k), -1, dtype=np.int16)
    w = np.zeros((len(attn.src), k), dtype=np.float32)
    for i, (s, ws) in enumerate(zip(attn.src, attn.weights, strict=True)):
        src[i, : len(s)], w[i, : len(ws)] = s, ws
    return encode_attn(src, w)


def _example_row(e: Example) -> dict:
    acts = np.asarray(e.acts, dtype=np.float32)
    return {
        "unit_id": e.unit_id,
        "kind": e.kind,
        "rank": e.rank,
        "context_id": e.context.id,
        "acts": acts.tobytes(),
        "max_act": float(acts.max()),
        "max_pos": int(acts.argmax()),
        "quantile": e.quantile,
        "provenance": dumps(e.provenance),
        "window_pos": e.window,
        "attn": _attn_blob(e.attn),
        "source_kind": e.source.kind if e.source else None,
        "source_rank": e.source.rank if e.source else None,
        "source_context": e.source.context_id if e.source else None,
    }


def _example_from_row(row: dict) -> Example:
    context = Context(
        id=row["context_id"], token_ids=json.loads(row["token_ids"]), tokens=json.loads(row["tokens"])
    )
    return Example(
        unit_id=row["unit_id"],
        kind=row["kind"],
        rank=row["rank"],
        context=context,
        acts=np.frombuffer(row["acts"], dtype=np.float32).tolist(),
        quantile=row["quantile"],
        provenance=json.loads(row["provenance"] or "{}"),
        source=SourceRef(kind=row["source_kind"], rank=row["source_rank"], context_id=row["source_context"])
        if row["source_kind"] is not None
        else None,
        window=row.get("window_pos"),
        attn=decode_attn(row["attn"]) if row.get("attn") is not None else None,
    )
