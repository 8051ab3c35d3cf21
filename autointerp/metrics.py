"""Score arithmetic: correlation exactly as OpenAI's automated-interpretability defines it, and AUC.

Undefined values are NaN, never 0: the caller records them with status "nan" and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

# A read-out from token probabilities (the exact simulator's digits, a judge's "1"/"0") is trusted only
# where the model put at least this much probability on the answer tokens (median over positions);
# below it the prediction is read from noise and the score is stored as failed, with the mass.
MASS_FLOOR = 0.5


def correlation(true_seqs: Sequence[Sequence[float]], pred_seqs: Sequence[Sequence[float]]) -> float:
    """Concatenate all sequences, then Pearson (OpenAI score_from_simulation); NaN if either is constant."""
    if len(true_seqs) != len(pred_seqs) or any(
        len(t) != len(p) for t, p in zip(true_seqs, pred_seqs, strict=True)
    ):
        raise ValueError("true and predicted activations differ in shape")
    t = np.concatenate([np.asarray(x, dtype=np.float64) for x in true_seqs]) if true_seqs else np.array([])
    p = np.concatenate([np.asarray(x, dtype=np.float64) for x in pred_seqs]) if pred_seqs else np.array([])
    if t.size < 2 or np.ptp(t) == 0 or np.ptp(p) == 0:
        return math.nan
    return float(np.corrcoef(t, p)[0, 1])


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) statistic, ties counted half; NaN with a single class."""
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def nan_reason(value: float, what: str) -> str:
    return "" if not math.isnan(value) else what
