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
    saes: dict[str, str] | None = None,
    **settings,
) -> RecordResult:
    """Record neurons of `hooks` (all, or the `units` indices) into the store at `db`.

    `saes` maps a hook to an SAE directory (or "embedded"): that hook records the SAE's latents
    (all, or the `units` latent indices) instead of its neurons; its hook need not be in `hooks`.

    Extra keyword arguments are RecordSettings fields (corpus, max_tokens, ctx, batch_size, top_k,
    include_special: keep BOS and other special-token positions, ...). The run is named by a hash of the
    settings, SAE content hashes included, so replaced SAE weights make a new run.
    A run with the same settings resumes from its checkpoint, or does nothing when already complete.
    """
    store = Store(db)  # open (and check) the store before the slow model load
    subject = subject or load_subject(model, model_path)
    sae_sources, sae_hashes = [], {}
    if saes:
        from autointerp.subject.sae import resolve_sae_path, sae_source

        saes = {h: str(resolve_sae_path(p).resolve()) for h, p in saes.items()}
        for h, p in saes.items():
            source, info = sae_source(subject, p, hook=h, latents=units)
            sae_sources.append(source)
            sae_hashes[h] = info.sha256
        hooks = list(dict.fromkeys([*hooks, *saes]))
    s = RecordSettings(
        model=subject.name, hooks=hooks, units=units, sae=saes or {}, sae_sha256=sae_hashes, **settings
    )
    sources = neuron_sources(subject, [h for h in hooks if h not in s.sae], units) + sae_sources
    return Recorder(subject, s, sources).run(store, progress=progress)
