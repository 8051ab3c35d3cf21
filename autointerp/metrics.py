"""Score arithmetic: correlation as OpenAI's automated-interpretability defines it, AUC, and the
classification metrics (balanced accuracy, F1) as delphi defines them.

Undefined values are NaN, never 0: the caller records them with status "nan" and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel
from scipy.stats import rankdata


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


# Judges and simulators that read token probabilities: below this median probability on the answer
# candidates ("1"/"0", or "0".."9") the read-out measures the prompt format, not the explanation, and
# the score is stored as failed with the mass named, never as a number.
MASS_FLOOR = 0.5


class Classification(BaseModel):
    """Binary verdicts against labels, with delphi's definitions (delphi/log/result_analysis.py)."""

    tp: int
    tn: int
    fp: int
    fn: int
    balanced_accuracy: float  # (TP/P + TN/N) / 2; NaN without both classes
    precision: float  # TP / (TP + FP); 0 when nothing is predicted positive
    recall: float  # TP / P; NaN without positives
    f1: float  # 2 precision recall / (precision + recall); 0 when both are 0, NaN without positives


def classification(labels: Sequence[int], predicted: Sequence[int]) -> Classification:
    """Confusion counts, balanced accuracy, precision, recall and F1 of 1/0 predictions."""
    if len(labels) != len(predicted):
        raise ValueError("labels and predictions differ in length")
    pairs = list(zip((bool(x) for x in labels), (bool(x) for x in predicted), strict=True))
    tp = sum(y and p for y, p in pairs)
    tn = sum(not y and not p for y, p in pairs)
    fp = sum(not y and p for y, p in pairs)
    fn = sum(y and not p for y, p in pairs)
    pos, neg = tp + fn, tn + fp
    recall = tp / pos if pos else math.nan
    balanced = (recall + tn / neg) / 2 if pos and neg else math.nan
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    if not pos:
        f1 = math.nan
    return Classification(
        tp=tp, tn=tn, fp=fp, fn=fn, balanced_accuracy=balanced, precision=precision, recall=recall, f1=f1
    )
