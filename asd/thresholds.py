"""The decision threshold of each section from its training normals' scores, and the decisions."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats

from asd.evaluation import group_by_section

DECISION_PERCENTILE = 0.9  # decision threshold = this quantile of a gamma fitted to training normals


def gamma_threshold(train_scores: Sequence[float], percentile: float = DECISION_PERCENTILE) -> float:
    """The ``percentile`` quantile of a gamma distribution fitted to the training normals' scores.

    A gamma lives on positive numbers but standardised scores can be negative, so the scores are
    shifted to start just above zero before the (3-parameter) fit and the quantile is shifted
    back. With too few or constant scores the empirical quantile is used instead.
    """
    scores = np.asarray(train_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise ValueError("gamma_threshold needs at least one finite training score")
    spread = float(np.std(scores))
    if scores.size < 5 or spread == 0.0:
        return float(np.quantile(scores, percentile))
    shift = 1e-3 * spread - float(scores.min()) if scores.min() <= 0 else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            params = scipy.stats.gamma.fit(scores + shift)
            threshold = float(scipy.stats.gamma.ppf(percentile, *params)) - shift
        except Exception:  # scipy's optimiser can fail on odd samples
            threshold = float("nan")
    if not np.isfinite(threshold):
        threshold = float(np.quantile(scores, percentile))
    return threshold


def section_thresholds(records: Sequence, train_scores: Mapping[tuple[str, str], Sequence[float]]) -> dict:
    """Decision threshold per (machine_type, section) of ``records`` from its training normals' scores."""
    thresholds = {}
    for key in group_by_section(records):
        if key not in train_scores or len(train_scores[key]) == 0:
            raise ValueError(
                f"no training scores for {key[0]} section {key[1]}: "
                "cannot set the decision threshold (is the section missing from train/?)"
            )
        thresholds[key] = gamma_threshold(train_scores[key])
    return thresholds


def decide(
    scores: Mapping[str, float], records: Sequence, thresholds: Mapping[tuple[str, str], float]
) -> dict[str, int]:
    """{path: 1 if the clip's score is above its section's threshold else 0}."""
    return {r.path: int(scores[r.path] > thresholds[(r.machine_type, r.section)]) for r in records}
