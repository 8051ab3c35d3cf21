"""Which recorded examples an explainer sees and which ones score its explanation.

The split is deterministic: the explainer reads every other top example; the scorers read the other
top examples plus uniform random windows (OpenAI's top + random mix), the quantile samples, and
non-firing windows. Best-of-k and revision choose on a validation set kept apart from the test set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from pydantic import BaseModel

from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import Example, SourceRef, Unit


class SampleSettings(BaseModel):
    n_explain: int = 10  # top examples shown to the explainer
    n_test_top: int = 10  # held-out top examples in the correlation test set
    n_test_random: int = 10  # random windows in the correlation test set
    n_negatives: int = 10  # non-firing windows for contrast, detection and embedding
    explain_window: int = 24  # tokens around each peak shown to the explainer (0: whole window)
    low_fraction: float = 0.25  # a random window peaking below this share of the unit's max is a negative


class Unlabellable(UserError):
    """A unit that cannot be labelled (it never fired, or too few windows); a label run skips it."""


class UnitSample(BaseModel):
    unit: Unit
    explain: list[Example]  # what the explainer reads
    test: list[Example]  # held-out top + random: the correlation score
    quantile: list[Example]  # firing windows by activation quantile: per-quantile scores, detection
    negatives: list[Example]  # windows where the unit does not fire
    validation: list[Example]  # best-of-k / revision choose on these, never on `test`
    contrast: list[Example]  # `off` edits of `explain` examples, hard negatives, negatives: contrastive
    counterfactual_pairs: list[tuple[Example, Example]] = []  # (held-out source, verified edit of it)


def sample_unit(store: Store, unit_id: str, s: SampleSettings) -> UnitSample:
    unit = store.get_unit(unit_id)
    if unit is None:
        raise UserError(
            f"{unit_id} is not recorded in {store.path}; run `autointerp record` for its hook first."
        )
    by_kind: dict[str, list[Example]] = {}
    for e in store.examples(unit_id):
        by_kind.setdefault(e.kind, []).append(e)
    top = by_kind.get("top", [])
    if not top or top[0].max_act <= unit.stats.fire_threshold:
        run = store.get_run(unit.run_id)
        if run is not None and not run.settings.get("include_special", True):
            raise Unlabellable(
                f"{unit_id} has no activating examples in {store.path}; it never fired on the corpus "
                "outside BOS and other special tokens, which record leaves out unless given --keep-bos."
            )
        raise Unlabellable(
            f"{unit_id} has no activating examples in {store.path}; it never fired on the corpus."
        )
    random = by_kind.get("random", [])
    explain, held = top[0::2][: s.n_explain], top[1::2]
    test = held[: s.n_test_top] + random[: s.n_test_random]
    # Non-firing windows; for dense units (GELU neurons fire a little almost everywhere) also random
    # windows that stay below a quarter of the unit's max.
    low = s.low_fraction * unit.stats.max
    negatives = (by_kind.get("negative", []) + [e for e in random if e.max_act < low])[: s.n_negatives]
    validation = held[s.n_test_top :] + random[s.n_test_random :] + by_kind.get("quantile", [])[::2]
    # Counterfactuals of examples the explainer reads are shown to it (contrastive); those of held-out
    # examples score it (counterfactual scorer), so no explanation is scored on edits it has seen.
    # The typed link (kind, rank and window of the source) decides: an edit of a window the explainer
    # read is never paired for scoring.
    seen = {SourceRef.of(e) for e in explain}
    index = {SourceRef.of(e): e for es in by_kind.values() for e in es if e.kind != "counterfactual"}
    cfs = by_kind.get("counterfactual", [])
    off = [e for e in cfs if e.provenance.get("direction") == "off" and e.source in seen]
    contrast = off + by_kind.get("hard_negative", []) + negatives
    pairs = [(index[e.source], e) for e in cfs if e.source in index and e.source not in seen]
    return UnitSample(
        unit=unit,
        explain=explain,
        test=test,
        quantile=by_kind.get("quantile", []),
        negatives=negatives,
        validation=validation,
        contrast=contrast,
        counterfactual_pairs=pairs,
    )


def digest(examples: Iterable[Example]) -> str:
    """A short hash of which examples these are (kind, rank, window, peak): it changes when the store's do."""
    key = [(e.kind, e.rank, e.context.id, round(e.max_act, 5)) for e in examples]
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:12]
