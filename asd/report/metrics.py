"""DCASE Task 2 metric definitions, exactly as the official evaluator computes them.

pAUC is always ``sklearn.metrics.roc_auc_score(y, score, max_fpr=0.1)``: the McClish-standardised
partial AUC (chance 0.5, perfect 1), the value the evaluator, the baselines and published tables use.
The harmonic mean floors every value at the machine epsilon first, as the evaluator does. Which
values enter a year's score is asd/report/evaluation.py's job.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.stats
from sklearn.metrics import roc_auc_score

MAX_FPR = 0.1  # pAUC range, as in the DCASE task description
EPSILON = sys.float_info.epsilon  # the evaluator floors every value at this before a harmonic mean


def pauc(y_true: Sequence[int], y_score: Sequence[float], max_fpr: float = MAX_FPR) -> float:
    """DCASE pAUC: scikit-learn's McClish-standardised partial AUC over FPR [0, max_fpr]."""
    return float(
        roc_auc_score(np.asarray(y_true, dtype=int), np.asarray(y_score, dtype=np.float64), max_fpr=max_fpr)
    )


def harmonic_mean(values: Iterable[float]) -> float:
    """The evaluator's harmonic mean: every value floored at EPSILON first; nan when empty."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        return float("nan")
    return float(scipy.stats.hmean(np.maximum(values, EPSILON)))


def arithmetic_mean(values: Iterable[float]) -> float:
    """The plain mean; nan when empty."""
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def auc_between(
    normal_scores: Sequence[float], anomaly_scores: Sequence[float], partial: bool = False
) -> float:
    """AUC (or with ``partial`` the pAUC) of normal scores against anomalous ones."""
    y_true = [0] * len(normal_scores) + [1] * len(anomaly_scores)
    y_score = list(normal_scores) + list(anomaly_scores)
    return pauc(y_true, y_score) if partial else float(roc_auc_score(y_true, y_score))


def precision_recall_f1(labels: Sequence[int], decisions: Sequence[int]) -> tuple[float, float, float]:
    """The evaluator's precision, recall and F1 of anomaly decisions (denominators floored at EPSILON)."""
    labels, decisions = np.asarray(labels, dtype=int), np.asarray(decisions, dtype=int)
    tp = float(np.sum((labels == 1) & (decisions == 1)))
    fp = float(np.sum((labels == 0) & (decisions == 1)))
    fn = float(np.sum((labels == 1) & (decisions == 0)))
    precision = tp / max(tp + fp, EPSILON)
    recall = tp / max(tp + fn, EPSILON)
    return precision, recall, 2.0 * precision * recall / max(precision + recall, EPSILON)
