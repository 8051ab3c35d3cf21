"""Shard specs `i/n`: which block of the window stream a `record` shard streams, which units a `label`
shard labels. Both splits are deterministic, so n shards partition the work of one run exactly."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from autointerp.errors import UserError

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardSpec(BaseModel):
    """Shard `index` of `count` (0-based: `0/2` and `1/2` are the two halves)."""

    model_config = ConfigDict(frozen=True)

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, option: str = "--shard") -> ShardSpec:
        """`i/n` with 0 <= i < n, or a UserError saying what is wrong."""
        m = _SPEC.match(text or "")
        if not m:
            raise UserError(f"{option} {text!r} is not of the form i/n (e.g. 0/4); fix the value.")
        index, count = int(m[1]), int(m[2])
        if count < 1 or index >= count:
            raise UserError(
                f"{option} {text!r} is out of range: i must be 0 to n-1 and n at least 1 (e.g. 0/4 .. 3/4)."
            )
        return cls(index=index, count=count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def windows(self, total: int) -> tuple[int, int]:
        """[start, end) of this shard's contiguous block of a stream of `total` windows."""
        return self.index * total // self.count, (self.index + 1) * total // self.count

    def has_unit(self, unit_id: str) -> bool:
        """Whether this shard labels `unit_id`: by a stable hash of the id, so shards partition any set."""
        return unit_of(unit_id, self.count) == self.index


def unit_of(unit_id: str, count: int) -> int:
    """The shard (of `count`) a unit id belongs to: sha1 of the id, modulo `count`."""
    return int(hashlib.sha1(unit_id.encode()).hexdigest()[:12], 16) % count


def label_shard_store(db: str | Path, spec: ShardSpec, out: str | Path | None = None) -> Path:
    """The store a label shard writes: `out` (default `DB.label-I-of-N.db` beside `db`), made as a copy
    of the recorded store `db` unless it exists already (a shard run again resumes there)."""
    from autointerp.store import Store

    db = Path(db)
    path = Path(out) if out else db.with_name(f"{db.stem}.label-{spec.index}-of-{spec.count}{db.suffix}")
    if path.resolve() == db.resolve():
        raise UserError(f"--out {path} is the recorded store itself; give the shard its own file.")
    if not path.exists():
        Store(db).copy_to(path)
    return path
