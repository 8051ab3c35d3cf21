"""What a run stores: derived examples, each with a typed link (`Example.source`) to the example it was
made from, and attributions in their top example's provenance."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from autointerp.counterfactual.probe import make_context
from autointerp.counterfactual.types import Attribution, Candidate, MinimalResult
from autointerp.types import Example, SourceRef

if TYPE_CHECKING:
    from autointerp.subject.model import SubjectModel


def with_attribution(top: Example, att: Attribution, key: str) -> Example:
    """The top example with its attribution (JSON) and the settings key in its provenance."""
    prov = {**top.provenance, "attribution": att.model_dump_json(), "attribution_settings": key}
    return top.model_copy(update={"provenance": prov})


def attribution_of(example: Example) -> Attribution | None:
    """The attribution stored in a top example's provenance, if `generate_counterfactuals` wrote one."""
    raw = example.provenance.get("attribution")
    return Attribution.model_validate_json(raw) if isinstance(raw, str) else None


def minimal_of(subject: SubjectModel, top: Example, m: MinimalResult, keep_frac: float, key: str) -> Example:
    """A `minimal` example (rank: its top example's)."""
    return Example(
        unit_id=top.unit_id,
        kind="minimal",
        rank=top.rank,
        context=make_context(subject, m.token_ids),
        acts=m.acts,
        source=SourceRef.of(top),
        provenance={
            "start": m.start,
            "original_length": m.original_length,
            "original_act": m.original_act,
            "kept_fraction": m.kept_fraction,
            "keep_frac": keep_frac,
            "settings": key,
        },
    )


def counterfactual_of(
    subject: SubjectModel,
    unit_id: str,
    rank: int,
    cand: Candidate,
    ids: list[int],
    acts: np.ndarray,
    generator: str,
    prompt: str,
    key: str,
) -> Example:
    """A verified edit as a `counterfactual` example, linked to the example whose text was edited."""
    return Example(
        unit_id=unit_id,
        kind="counterfactual",
        rank=rank,
        context=make_context(subject, ids),
        acts=acts.tolist(),
        source=cand.source,
        provenance={
            "direction": cand.direction,
            "original_text": cand.original_text,
            "edited_text": cand.edited_text,
            "original_act": cand.original_act,
            "edited_act": cand.edited_act,
            "generator": generator,
            "prompt": prompt,
            "settings": key,
        },
    )


def hard_negative_of(
    window: Example, rank: int, similarity: float, nearest_top_rank: int, key: str
) -> Example:
    """A `hard_negative` example: the window itself, linked to the stored example (or corpus window, rank
    -1) it came from."""
    source = (
        SourceRef.of(window) if window.rank >= 0 else SourceRef(kind="corpus", context_id=window.context.id)
    )
    return Example(
        unit_id=window.unit_id,
        kind="hard_negative",
        rank=rank,
        context=window.context,
        acts=window.acts,
        source=source,
        provenance={
            "similarity": similarity,
            "nearest_top_rank": nearest_top_rank,
            "embedder": "all-MiniLM-L6-v2",
            "settings": key,
        },
    )
