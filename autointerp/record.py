"""Python API for recording: `autointerp.record_units(...)` mirrors `autointerp record`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from autointerp.store import Store
from autointerp.subject.model import SubjectModel, load_subject
from autointerp.subject.recorder import Recorder, RecordResult, neuron_sources
from autointerp.types import RecordSettings


def record_units(
    db: str | Path,
    hooks: list[str],
    units: list[int] | None = None,
    model: str = "gemma-3-270m",
    model_path: str | None = None,
    subject: SubjectModel | None = None,
    progress: Callable[[int, int], None] | None = None,
    **settings,
) -> RecordResult:
    """Record neurons of `hooks` (all, or the `units` indices) into the store at `db`.

    Extra keyword arguments are RecordSettings fields (corpus, max_tokens, ctx, batch_size, top_k, ...).
    A run with the same settings resumes from its checkpoint, or does nothing when already complete.
    """
    store = Store(db)  # open (and check) the store before the slow model load
    subject = subject or load_subject(model, model_path)
    s = RecordSettings(model=subject.name, hooks=hooks, units=units, **settings)
    sources = neuron_sources(subject, hooks, units)
    return Recorder(subject, s, sources).run(store, progress=progress)
