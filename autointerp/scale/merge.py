"""`autointerp merge OUT.db SHARD.db...`: join shard stores into the store one process would have written.

Record shards (`record --shard i/n`) stream contiguous blocks of one run's window stream. Every kept set
is a pure function of that stream (ties go to the earlier window; reservoir keys are hashes of seed,
unit and window position), so the merge is exact: per unit and kind, the union of the shards' kept
windows, re-ranked by the same keys, cut to the same size, gives the single run's examples; counts,
sums, sums of squares, histograms and maxima add up (mean and std are recomputed from the sums: equal
up to float64 rounding). Label shards (`label --shard i/n`) are unioned by their stable ids.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from autointerp.errors import UserError, require_local
from autointerp.scale.shards import ShardSpec
from autointerp.store import SCHEMA_VERSION, Store
from autointerp.types import Context, ExampleRows, RecordSettings, RunRecord, Unit, now

CHUNK_UNITS = 256  # units merged (and written) at a time: memory stays bounded for wide SAEs


class MergeResult(BaseModel):
    out: str
    inputs: int
    record_runs: list[str]  # the runs whose shards were merged
    units: int  # units written from merged shards
    label_runs: list[str]


class _Shard(BaseModel):
    path: str
    run: RunRecord
    spec: ShardSpec


def merge_stores(
    out: str | Path, inputs: list[str | Path], progress: Callable[[int, int], None] | None = None
) -> MergeResult:
    """Merge the shard stores `inputs` into the new store `out`; UserError (one sentence) on stores that
    do not belong together, a missing or repeated shard, or an `out` that already exists."""
    out = Path(out)
    if not inputs:
        raise UserError("Give the shard stores to merge after OUT.db.")
    if out.exists():
        raise UserError(f"{out} already exists; merge into a new file.")
    paths = [str(p) for p in inputs]
    if len(set(map(_real, paths))) < len(paths):
        raise UserError("A store is given twice; pass each shard store once.")
    stores = [Store.reader(p) for p in paths]
    for p, st in zip(paths, stores, strict=True):
        if (v := st.schema_version()) != SCHEMA_VERSION:
            raise UserError(
                f"{p} has store schema v{v}, not v{SCHEMA_VERSION} like this autointerp; record or label "
                "its shards again with this version."
            )
    groups, label_runs = _plan(paths, stores)
    if groups:
        require_local("autointerp merge of record shards", ("torch",))
    target = Store(out)
    n_units = 0
    for base, shards in groups.items():
        n_units += _merge_record_group(target, base, shards, progress)
    skip = [s.run.id for shards in groups.values() for s in shards]
    for p in paths:
        target.absorb(p, skip_runs=skip)
    for runs in label_runs.values():
        target.put_run(_combine_label_runs(runs))
    return MergeResult(
        out=str(out), inputs=len(paths), record_runs=list(groups), units=n_units, label_runs=list(label_runs)
    )


def _real(path: str) -> str:
    return str(Path(path).resolve())


def _identity(run: RunRecord) -> str:
    """What a record run is a part of: its base run for a shard, itself otherwise."""
    shard = run.summary.get("shard") or {}
    return shard.get("run_id") or run.id


def _differing(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if k != "shard" and a.get(k) != b.get(k))
    return ", ".join(keys) or "their unit sets"


def _plan(
    paths: list[str], stores: list[Store]
) -> tuple[dict[str, list[_Shard]], dict[str, list[RunRecord]]]:
    """Check the inputs belong together; their record shards by base run, their label runs by id."""
    records = {p: [r for r in st.runs("record")] for p, st in zip(paths, stores, strict=True)}
    labels = {p: [r for r in st.runs("label")] for p, st in zip(paths, stores, strict=True)}
    first = paths[0]
    for p in paths[1:]:
        mine = {_identity(r): r for r in records[first]}
        theirs = {_identity(r): r for r in records[p]}
        if set(mine) != set(theirs):
            a = next((r for k, r in mine.items() if k not in theirs), None) or next(iter(mine.values()), None)
            b = next((r for k, r in theirs.items() if k not in mine), None) or next(
                iter(theirs.values()), None
            )
            what = _differing(a.settings, b.settings) if a and b else "one holds no recording"
            raise UserError(
                f"{first} and {p} hold different recordings (they differ in: {what}); merge only the "
                "shards of one run, recorded with the same settings, model and SAEs."
            )
        if {r.id for r in labels[first]} != {r.id for r in labels[p]}:
            raise UserError(
                f"{first} and {p} hold label runs of different settings; label every shard with the same "
                "options."
            )
    groups: dict[str, list[_Shard]] = defaultdict(list)
    for p in paths:
        for run in records[p]:
            spec = run.settings.get("shard")
            if not spec:
                continue
            if run.status != "complete":
                raise UserError(
                    f"Shard {spec} in {p} is {run.status}, not complete; rerun its record command to "
                    "finish it first."
                )
            groups[_identity(run)].append(_Shard(path=p, run=run, spec=ShardSpec.parse(spec)))
    for base, shards in groups.items():
        _check_complete(base, [(s.path, s.spec) for s in shards])
    label_runs: dict[str, list[RunRecord]] = defaultdict(list)
    for p in paths:
        for run in labels[p]:
            label_runs[run.id].append(run)
    for run_id in label_runs:
        specs = [
            (p, ShardSpec.parse(r.summary["shard"]))
            for p in paths
            for r in labels[p]
            if r.id == run_id and r.summary.get("shard")
        ]
        if specs:
            _check_complete(run_id, specs)
    return dict(groups), dict(label_runs)


def _check_complete(run_id: str, specs: list[tuple[str, ShardSpec]]) -> None:
    """Every shard 0..n-1 of `run_id` exactly once, all of the same n."""
    counts = {s.count for _, s in specs}
    if len(counts) > 1:
        raise UserError(
            f"The shards of run {run_id} were cut {' and '.join(map(str, sorted(counts)))} ways; "
            "merge shards of one split only."
        )
    (n,) = counts
    seen: dict[int, str] = {}
    for path, spec in specs:
        if spec.index in seen:
            raise UserError(
                f"Shard {spec} of run {run_id} is in both {seen[spec.index]} and {path}; "
                "pass each shard once."
            )
        seen[spec.index] = path
    missing = [i for i in range(n) if i not in seen]
    if missing:
        raise UserError(f"Shard {missing[0]}/{n} of run {run_id} is missing; pass its store too.")


def _merge_record_group(
    target: Store, base: str, shards: list[_Shard], progress: Callable[[int, int], None] | None
) -> int:
    """Write the merged units and examples of one sharded recording, then its run row."""
    from autointerp.subject.recorder import KINDS, finish_stats

    shards = sorted(shards, key=lambda s: s.spec.index)
    settings = RecordSettings(**{**shards[0].run.settings, "shard": None})
    readers = [Store.reader(s.path) for s in shards]
    unit_lists = [r.units_of_run(s.run.id) for r, s in zip(readers, shards, strict=True)]
    ids = [u.id for u in unit_lists[0]]
    for s, units in zip(shards[1:], unit_lists[1:], strict=True):
        if [u.id for u in units] != ids:
            raise UserError(f"{s.path} holds other units than {shards[0].path}; record every shard alike.")
    if any(u.stats.sum is None for units in unit_lists for u in units):
        raise UserError("A shard store lacks the raw sums merging needs; record its shards again.")
    provenance = {"run_id": base, "special_tokens": "included" if settings.include_special else "excluded"}
    runs = [s.run for s in shards]
    summaries = [r.summary for r in runs]
    run = RunRecord(
        id=base,
        kind="record",
        settings=settings.model_dump(),
        code_version=runs[0].code_version,
        started_at=min(r.started_at for r in runs),
        summary={"merged_from": [f"{s.spec} {s.path}" for s in shards]},
    )
    target.put_run(run)  # its units refer to it; `running` until every unit is written
    for start in range(0, len(ids), CHUNK_UNITS):
        chunk = slice(start, start + CHUNK_UNITS)
        per_unit = [units[chunk] for units in unit_lists]  # [shard][unit]
        examples: dict[tuple[str, str], list[tuple]] = defaultdict(list)
        for n, reader in enumerate(readers):
            for unit_id, kind, context_id, window, acts in reader.example_rows(ids[chunk], KINDS):
                examples[unit_id, kind].append((context_id, window, acts, n))
        merged_units = []
        for column in zip(*per_unit, strict=True):
            u0 = column[0]
            stats = finish_stats(
                sum(u.stats.n_tokens for u in column),
                np.array([sum(u.stats.sum for u in column)]),
                np.array([sum(u.stats.sumsq for u in column)]),
                np.array([max(u.stats.max for u in column)]),
                np.array([sum(round(u.stats.frac_firing * u.stats.n_tokens) for u in column)]),
                np.array([np.sum([u.stats.hist_counts for u in column], axis=0)]),
                u0.stats.fire_threshold,
            )[0]
            merged_units.append(Unit.model_construct(ref=u0.ref, run_id=base, stats=stats))
        rows = _merged_rows(merged_units, examples, settings, provenance, readers)
        target.write_units(merged_units, rows)
        if progress:
            progress(min(start + CHUNK_UNITS, len(ids)), len(ids))
    run.summary |= {
        "windows": sum(x["windows"] for x in summaries),
        "tokens": sum(x["tokens"] for x in summaries),
        "units": summaries[0]["units"],
        "special_tokens": summaries[0]["special_tokens"],
        "special_positions": sum(x["special_positions"] for x in summaries),
    }
    finished = max((r.finished_at or now()) for r in runs)
    target.put_run(run.model_copy(update={"status": "complete", "finished_at": finished}))
    return len(ids)


def _keys(kind: str, unit: Unit, windows: np.ndarray, acts: np.ndarray, seed: int) -> np.ndarray:
    """The recorder's key of each example's window for this kind (see `recorder.SourceState.update`)."""
    import torch

    from autointerp.subject.recorder import RANDOM_SALT, sample_keys, source_key, source_salt

    if kind == "top":  # the window's max: stored activations never peak at a left-out position
        return acts.max(axis=1).astype(np.float64)
    wids = torch.from_numpy(windows)
    if kind == "random":
        return sample_keys(seed, RANDOM_SALT, wids)[:, 0].numpy().astype(np.float64)
    salt = source_salt(source_key(unit.ref.hook, unit.ref.sae))
    return sample_keys(seed, salt, wids, torch.tensor([unit.ref.index]))[:, 0].numpy().astype(np.float64)


def _merged_rows(
    units: list[Unit],
    examples: dict[tuple[str, str], list[tuple]],
    s: RecordSettings,
    provenance: dict,
    readers: list[Store],
) -> ExampleRows:
    """Per unit and kind, the shards' examples (context id, window, activation bytes, shard) re-ranked by
    the recorder's keys and cut to its sizes; the kept windows' contexts read from their shards."""
    from autointerp.subject.recorder import KINDS, kind_rows

    sizes = {"top": s.top_k, "quantile": s.quantile_pool, "random": s.n_random, "negative": s.n_negative}
    cols: dict[str, list] = {k: [] for k in ("unit_ids", "kinds", "ranks", "quantiles", "context_ids")}
    acts_parts: list[np.ndarray] = []
    window_parts: list[np.ndarray] = []
    wanted: dict[str, int] = {}  # context id -> a shard holding it
    for unit in units:
        for kind in KINDS:
            cands = examples.get((unit.id, kind), [])
            k = sizes[kind]
            if not cands or k == 0:
                continue
            if any(c[1] is None for c in cands):
                raise UserError("A shard store lacks the window positions merging needs; record it again.")
            windows = np.array([c[1] for c in cands], dtype=np.int64)
            all_acts = np.frombuffer(b"".join(c[2] for c in cands), dtype=np.float32).reshape(len(cands), -1)
            keys = _keys(kind, unit, windows, all_acts, s.seed)
            chosen = np.lexsort((windows, -keys))[:k]  # key descending, ties: the earlier window
            acts = np.zeros((1, k, s.ctx), dtype=np.float32)
            acts[0, : len(chosen)] = all_acts[chosen]
            keep, rank, quantile = kind_rows(kind, acts, np.array([len(chosen)]), s.n_quantiles)
            n = len(chosen)
            cols["unit_ids"] += [unit.id] * n
            cols["kinds"] += [kind] * n
            cols["ranks"] += rank[keep].tolist()
            cols["quantiles"] += quantile[keep].tolist()
            cols["context_ids"] += [cands[i][0] for i in chosen]
            acts_parts.append(acts[keep])
            window_parts.append(windows[chosen])
            for i in chosen:
                wanted.setdefault(cands[i][0], cands[i][3])
    contexts: dict[str, Context] = {}
    for n, reader in enumerate(readers):
        contexts |= reader.contexts([cid for cid, holder in wanted.items() if holder == n])
    ctx = s.ctx
    return ExampleRows(
        unit_ids=np.array(cols["unit_ids"], dtype=object),
        kinds=np.array(cols["kinds"], dtype=object),
        ranks=np.array(cols["ranks"], dtype=np.int64),
        context_ids=np.array(cols["context_ids"], dtype=object),
        acts=np.concatenate(acts_parts) if acts_parts else np.zeros((0, ctx), dtype=np.float32),
        quantiles=np.array(cols["quantiles"], dtype=np.int64),
        provenance=provenance,
        contexts=contexts,
        windows=np.concatenate(window_parts) if window_parts else np.zeros(0, dtype=np.int64),
    )


def _combine_label_runs(runs: list[RunRecord]) -> RunRecord:
    """One label run's row from its shards' rows: counts and usage added, lists joined."""
    if len(runs) == 1:
        return runs[0]
    sums: dict = {}
    for key in ("units", "labelled", "resumed"):
        sums[key] = sum(r.summary.get(key, 0) for r in runs)
    sums["unlabellable"] = {k: v for r in runs for k, v in (r.summary.get("unlabellable") or {}).items()}
    sums["failures"] = [f for r in runs for f in r.summary.get("failures") or []]
    sums["score_failures"] = [f for r in runs for f in r.summary.get("score_failures") or []]
    sums["scores"] = _add_dicts([r.summary.get("scores") or {} for r in runs])
    sums["usage"] = {
        role: _add_dicts([(r.summary.get("usage") or {}).get(role) or {} for r in runs])
        for role in {role for r in runs for role in r.summary.get("usage") or {}}
    }
    sums["seconds"] = max(r.summary.get("seconds", 0.0) for r in runs)
    sums["merged_from"] = sorted(str(r.summary.get("shard")) for r in runs)
    status = "complete" if all(r.status == "complete" for r in runs) else "failed"
    return runs[0].model_copy(
        update={
            "summary": sums,
            "status": status,
            "started_at": min(r.started_at for r in runs),
            "finished_at": max((r.finished_at or now()) for r in runs),
        }
    )


def _add_dicts(dicts: list[dict]) -> dict:
    """Key-wise sums of numbers (None where every value is None)."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[k] = (out.get(k) or 0) + v
            else:
                out.setdefault(k, v)
    return out
