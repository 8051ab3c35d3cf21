"""Benchmark arithmetic: bootstrap confidence intervals and the scorer meta-evaluation.

The meta-evaluation asks of each scorer: given a unit's true explanation, the generated ones and
distractors (other units' true explanations, a negated truth, a near miss), does the truth score highest?
And do the scorers agree with each other (Spearman rank correlation over every scored explanation)?
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel
from scipy.stats import spearmanr

TRUE = "true"


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; (nan, nan) for no values."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def truth_rank_credit(scores: dict[str, float | None], true_key: str = TRUE) -> float | None:
    """1 if the truth scores strictly highest, 1/k if it ties k-ways for the top, else 0.

    Candidates without a value (nan / failed) are left out; None when the truth has no value or is alone.
    """
    vals = {k: v for k, v in scores.items() if v is not None and not math.isnan(v)}
    if true_key not in vals or len(vals) < 2:
        return None
    top = max(vals.values())
    if vals[true_key] < top:
        return 0.0
    return 1.0 / sum(1 for v in vals.values() if v == top)


def truth_beats(scores: dict[str, float | None], others: Sequence[str], true_key: str = TRUE) -> float | None:
    """Share of `others` the truth scores above (ties count half); None without comparable values."""
    t = scores.get(true_key)
    if t is None or math.isnan(t):
        return None
    wins = []
    for k in others:
        v = scores.get(k)
        if v is None or math.isnan(v):
            continue
        wins.append(1.0 if t > v else 0.5 if t == v else 0.0)
    return sum(wins) / len(wins) if wins else None


class ScorerMeta(BaseModel):
    scorer: str
    n_units: int  # units where the truth and at least one other candidate have a value
    truth_first: float | None  # mean rank credit among all candidates (truth, generated, distractors)
    truth_first_vs_distractors: float | None  # the same among truth + distractors only
    truth_beats_distractors: float | None  # pairwise: share of distractors scored below the truth
    mean_by_kind: dict[str, float | None]  # mean score of true / generated / each distractor kind


class SpearmanPair(BaseModel):
    a: str
    b: str
    rho: float | None
    n: int


class MetaEval(BaseModel):
    scorers: list[ScorerMeta]
    spearman: list[SpearmanPair]


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def spearman_pairs(rows: list[dict[str, float | None]], scorers: list[str]) -> list[SpearmanPair]:
    """Spearman rho between each pair of scorers over the rows where both have a value."""
    out = []
    for i, a in enumerate(scorers):
        for b in scorers[i + 1 :]:
            pairs = [
                (r[a], r[b])
                for r in rows
                if r.get(a) is not None
                and r.get(b) is not None
                and not math.isnan(r[a])
                and not math.isnan(r[b])
            ]
            rho = None
            if len(pairs) >= 3:
                xa, xb = zip(*pairs, strict=True)
                if len(set(xa)) > 1 and len(set(xb)) > 1:
                    rho = float(spearmanr(xa, xb).statistic)
            out.append(SpearmanPair(a=a, b=b, rho=rho, n=len(pairs)))
    return out


def meta_evaluate(units: list[dict[str, dict[str, float | None]]], scorers: list[str]) -> MetaEval:
    """`units`: per unit, candidate key -> scorer -> value. Keys: "true", "gen:METHOD", "dis:KIND"."""
    per: list[ScorerMeta] = []
    for sc in scorers:
        credits, credits_d, beats = [], [], []
        by_kind: dict[str, list[float]] = {}
        for cands in units:
            vals = {k: c.get(sc) for k, c in cands.items()}
            distractors = [k for k in vals if k.startswith("dis:")]
            for k, v in vals.items():
                if v is not None and not math.isnan(v):
                    kind = "generated" if k.startswith("gen:") else k
                    by_kind.setdefault(kind, []).append(v)
            c = truth_rank_credit(vals)
            if c is not None:
                credits.append(c)
            cd = truth_rank_credit({k: v for k, v in vals.items() if k == TRUE or k in distractors})
            if cd is not None:
                credits_d.append(cd)
            b = truth_beats(vals, distractors)
            if b is not None:
                beats.append(b)
        per.append(
            ScorerMeta(
                scorer=sc,
                n_units=len(credits),
                truth_first=_mean(credits),
                truth_first_vs_distractors=_mean(credits_d),
                truth_beats_distractors=_mean(beats),
                mean_by_kind={k: _mean(v) for k, v in sorted(by_kind.items())},
            )
        )
    rows = [c for cands in units for c in cands.values()]
    return MetaEval(scorers=per, spearman=spearman_pairs(rows, scorers))
