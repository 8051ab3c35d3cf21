"""The Ray driver behind `autointerp scale record|label`: n shards as Ray tasks, retried, then merged.

Each shard runs the ordinary `autointerp record --shard i/n` (a GPU task when the cluster has GPUs) or
`autointerp label --shard i/n` (a CPU task; point its LLM at a shared server with --base-url) in a
subprocess of its Ray worker, writing its own store under `OUT.shards/` (on a file system every node
sees). A shard that fails for any reason but bad input (exit 2) is retried up to `max_retries` times;
a retried record shard resumes from its checkpoint. Then `merge_stores` joins the shard stores.
Needs the `scale` extra (`pip install 'autointerp[scale]'`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from autointerp.errors import UserError
from autointerp.scale.merge import MergeResult, merge_stores
from autointerp.scale.shards import ShardSpec

Kind = Literal["record", "label"]
CONNECT_TIMEOUT_S = 5.0


class ShardFailed(RuntimeError):
    """A shard's command failed in a way a retry may fix (a crash, a lost node, a transient error)."""


class ShardOutcome(BaseModel):
    spec: str
    store: str
    exit_code: int
    stderr_tail: str = ""


class ScaleResult(BaseModel):
    shards: list[ShardOutcome]
    merged: MergeResult


def shard_store(out: Path, kind: Kind, spec: ShardSpec) -> Path:
    """Where shard `spec` of a scaled run writes: `OUT.shards/KIND-I-of-N.db`."""
    return out.with_name(out.name + ".shards") / f"{kind}-{spec.index}-of-{spec.count}.db"


def shard_command(kind: Kind, args: list[str], db: Path, out: Path, spec: ShardSpec) -> list[str]:
    """The autointerp command line of one shard: `record` writes its store; `label` reads `db` and
    writes its copy (`--out`)."""
    cmd = [sys.executable, "-m", "autointerp", kind, *args, "--shard", str(spec)]
    if kind == "record":
        return [*cmd, "--db", str(shard_store(out, kind, spec))]
    return [*cmd, "--db", str(db), "--out", str(shard_store(out, kind, spec))]


def run_shard(cmd: list[str], cwd: str | None = None) -> ShardOutcome:
    """Run one shard's command (in the driver's folder `cwd` where this node has it, so relative paths
    read the same); bad input (exit 2) comes back as is, any other failure raises (Ray retries it)."""
    cwd = cwd if cwd and os.path.isdir(cwd) else None
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    spec = cmd[cmd.index("--shard") + 1]
    store = cmd[cmd.index("--out") + 1] if "--out" in cmd else cmd[cmd.index("--db") + 1]
    tail = proc.stderr.strip()[-2000:]
    if proc.returncode not in (0, 1, 2):  # 1: label finished with failed units (its summary says which)
        raise ShardFailed(f"shard {spec} exited with code {proc.returncode}: {tail[-500:]}")
    return ShardOutcome(spec=spec, store=store, exit_code=proc.returncode, stderr_tail=tail)


def check_args(args: list[str]) -> None:
    """The pass-through options may not set what the driver sets per shard."""
    for opt in ("--shard", "--out"):
        if any(a == opt or a.startswith(opt + "=") for a in args):
            raise UserError(f"{opt} is set per shard by `autointerp scale`; leave it out.")


def connect(address: str, num_cpus: int | None = None) -> None:
    """ray.init on `address` ("local": a new local Ray; HOST:PORT or ray://HOST:PORT: a cluster), or a
    UserError in one sentence when Ray is missing or the cluster cannot be reached."""
    if find_spec("ray") is None:
        raise UserError(
            "autointerp scale needs the scale extra (ray missing): pip install 'autointerp[scale]'."
        )
    import ray

    if address != "local" and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except (OSError, ValueError) as e:
            raise UserError(
                f"The Ray cluster at {address} cannot be reached ({type(e).__name__}); check the address "
                "(`ray status` on its head node) or use --ray local."
            ) from None
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError) as e:
        raise UserError(
            f"Ray could not connect to {address} ({e}); check the address or use --ray local."
        ) from e


def run_scaled(
    kind: Kind,
    args: list[str],
    *,
    db: Path,
    out: Path,
    shards: int,
    address: str = "local",
    max_retries: int = 2,
    num_cpus: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> ScaleResult:
    """Run `kind` as `shards` Ray tasks (record: a GPU each when the cluster has GPUs), retry failed ones
    up to `max_retries` times, then merge their stores into `out`. `args`: the command's other options."""
    if shards < 1:
        raise UserError(f"--shards must be 1 or more, not {shards}.")
    if max_retries < 0:
        raise UserError(f"--max-retries must be 0 or more, not {max_retries}.")
    check_args(args)
    if out.exists():
        raise UserError(f"{out} already exists; give the merged store a new path.")
    if kind == "label" and not db.exists():
        raise UserError(f"No store at {db}; run `autointerp record --db {db} ...` first.")
    connect(address, num_cpus)
    import ray

    try:
        gpus = ray.cluster_resources().get("GPU", 0) if kind == "record" else 0
        task = ray.remote(run_shard).options(
            num_cpus=1, num_gpus=1 if gpus else 0, max_retries=max_retries, retry_exceptions=[ShardFailed]
        )
        specs = [ShardSpec(index=i, count=shards) for i in range(shards)]
        shard_store(out, kind, specs[0]).parent.mkdir(parents=True, exist_ok=True)
        log(f"{shards} {kind} shards on Ray ({'GPU' if gpus else 'CPU'} tasks, up to {max_retries} retries)")
        here = os.getcwd()
        refs = [
            task.remote(shard_command(kind, args, db.resolve(), out.resolve(), spec), here) for spec in specs
        ]
        try:
            outcomes = ray.get(refs)
        except ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None) or e
            raise UserError(
                f"A shard failed after {max_retries} retries ({str(cause).strip()[:300]})."
            ) from e
    finally:
        ray.shutdown()
    for o in outcomes:
        if o.exit_code == 2:  # bad input: every shard says the same; no retry helps
            _, found, message = o.stderr_tail.rpartition("error:")
            raise UserError(" ".join(message.split()) if found else f"Shard {o.spec} failed: {o.stderr_tail}")
    merged = merge_stores(out, [o.store for o in outcomes])
    return ScaleResult(shards=outcomes, merged=merged)
