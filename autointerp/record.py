"""Python API for recording: `autointerp.record_units(...)` mirrors `autointerp record`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from autointerp import corpus
from autointerp.store import Store
from autointerp.subject.model import SubjectModel, load_subject, precheck_hooks
from autointerp.subject.recorder import Recorder, RecordResult, neuron_sources, run_id_for
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

    Extra keyword arguments are RecordSettings fields (corpus, encoding, max_tokens, ctx, batch_size, top_k,
    include_special: keep BOS and other special-token positions, ...). Settings, store, corpus and
    (once the model has loaded before) hooks and indices are checked before the model loads. The run is
    named by a hash of the settings, SAE content hashes included, so replaced SAE weights make a new run.
    A run with the same settings resumes from its checkpoint, or does nothing when already complete.
    """
    store = Store(db)  # open (and check) the store before the slow model load
    name = subject.name if subject else model
    sae_paths, sae_hashes = {}, {}
    if saes:
        from autointerp.subject.sae import resolve_sae_path, sae_sha256

        sae_paths = {h: str(resolve_sae_path(p).resolve()) for h, p in saes.items()}
        sae_hashes = {h: sae_sha256(p) for h, p in sae_paths.items()}
    all_hooks = list(dict.fromkeys([*hooks, *sae_paths]))
    s = RecordSettings(
        model=name, hooks=all_hooks, units=units, sae=sae_paths, sae_sha256=sae_hashes, **settings
    )
    # Everything that can fail without the model fails here, before the ~30 s load.
    existing = store.get_run(run_id_for(s))
    if existing and existing.status == "complete":
        return RecordResult(existing.id, 0, 0, 0.0, 0.0, already_complete=True)
    corpus.check_sources(s.corpus, s.encoding)
    precheck_hooks(name, model_path, [h for h in all_hooks if h not in sae_paths], units)
    precheck_hooks(name, model_path, list(sae_paths), None)
    subject = subject or load_subject(model, model_path)
    sae_sources = []
    if sae_paths:
        from autointerp.subject.sae import sae_source

        sae_sources = [sae_source(subject, p, hook=h, latents=units)[0] for h, p in sae_paths.items()]
    sources = neuron_sources(subject, [h for h in all_hooks if h not in s.sae], units) + sae_sources
    return Recorder(subject, s, sources).run(store, progress=progress)
