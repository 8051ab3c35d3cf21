"""What a store holds, for reading: units with their best explanation and scores, and `results(db)`:
one pandas row per explanation (the same columns as the SQL view `unit_labels`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from autointerp.errors import UserError
from autointerp.store import BUILTIN_SCORERS, Store
from autointerp.types import Explanation, Score

if TYPE_CHECKING:
    import pandas as pd

Sort = Literal["index", "freq", "max", "score"]


class ScoredExplanation(BaseModel):
    explanation: Explanation
    scores: dict[str, Score] = Field(default_factory=dict)  # scorer -> its latest score

    def value(self, scorer: str) -> float | None:
        s = self.scores.get(scorer)
        return s.value if s else None


class UnitSummary(BaseModel):
    """One unit's statistics and its best explanation (by `scorer`, the main score of the store)."""

    unit_id: str
    hook: str
    n_tokens: int
    n_firing: int  # tokens it fired on (activation above its threshold)
    frac_firing: float
    max: float
    n_explanations: int = 0
    best: ScoredExplanation | None = None
    scorer: str | None = None  # what `score` is

    @property
    def fired(self) -> bool:
        return self.n_firing > 0

    @property
    def score(self) -> float | None:
        return self.best.value(self.scorer) if self.best and self.scorer else None


def main_scorer(scorers: set[str]) -> str | None:
    """The score that ranks explanations: the first built-in scorer present (correlation first)."""
    return next((s for s in BUILTIN_SCORERS if s in scorers), min(scorers, default=None))


def best_explanation(explained: list[ScoredExplanation], scorer: str | None) -> ScoredExplanation | None:
    """The explanation with the highest `scorer` value (undefined scores last; ties: the latest)."""
    if not explained:
        return None

    def key(se: ScoredExplanation) -> float:
        v = se.value(scorer) if scorer else None
        return -math.inf if v is None else v

    return max(reversed(explained), key=key)


def unit_explanations(store: Store, unit_id: str) -> list[ScoredExplanation]:
    """A unit's explanations (oldest first), each with its latest score per scorer."""
    scores = store.latest_scores(unit_id)
    return [
        ScoredExplanation(explanation=e, scores=scores.get(e.id, {})) for e in store.explanations(unit_id)
    ]


def unit_summaries(store: Store, hook: str | None = None, sort: Sort = "index") -> list[UnitSummary]:
    """Every recorded unit (of `hook`) with its statistics and best explanation, sorted largest first
    by `sort` (freq: firing frequency, max: max activation, score: the best explanation's main score)."""
    rows = store.unit_label_rows(hook)
    scores = store.latest_scores()
    scorer = main_scorer({name for by in scores.values() for name in by})
    explanations = {e.id: e for e in store.explanations()}
    units: dict[str, UnitSummary] = {}
    explained: dict[str, list[ScoredExplanation]] = {}
    for r in rows:
        units.setdefault(r["unit_id"], UnitSummary(**r))
        if r["explanation_id"]:
            se = ScoredExplanation(
                explanation=explanations[r["explanation_id"]], scores=scores.get(r["explanation_id"], {})
            )
            explained.setdefault(r["unit_id"], []).append(se)
    for uid, u in units.items():
        u.n_explanations, u.scorer = len(explained.get(uid, [])), scorer
        u.best = best_explanation(explained.get(uid, []), scorer)
    out = list(units.values())
    keys = {
        "freq": lambda u: u.frac_firing,
        "max": lambda u: u.max,
        "score": lambda u: -math.inf if u.score is None else u.score,
    }
    return sorted(out, key=keys[sort], reverse=True) if sort in keys else out


def results(db: str | Path) -> pd.DataFrame:
    """One row per explanation: its unit's statistics, the explanation and its latest value of each scorer
    (a column per scorer; NaN where undefined or failed), as the SQL view `unit_labels` gives them."""
    try:
        import pandas as pd
    except ImportError:
        raise UserError("autointerp.results needs pandas; install it with `pip install pandas`.") from None
    if not Path(db).exists():
        raise UserError(f"No store at {db}; run `autointerp record --db {db} ...` first.")
    store = Store(db, read_only=True)
    rows = store.unit_label_rows(explained_only=True)
    scores = store.latest_scores()
    names = {name for by in scores.values() for name in by}
    ordered = [s for s in BUILTIN_SCORERS if s in names] + sorted(names - set(BUILTIN_SCORERS))
    for r in rows:
        by = scores.get(r["explanation_id"], {})
        r.update({name: by[name].value if name in by else None for name in ordered})
    frame = pd.DataFrame(rows, columns=store.label_columns() + ordered)
    return frame.astype({name: float for name in ordered})
