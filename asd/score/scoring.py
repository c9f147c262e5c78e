"""One interface for every scorer, and the grouping that fits one scorer per group.

Every scorer has one small interface: ``fit(normal)`` on the normals of one group (a section for
the ensemble, a machine type for Deep SVDD), ``score(clips)``, and ``training_scores(normal)``
(the fitted normals' own scores, leave-one-out where it matters, for the decision threshold).
``score_by_group`` does the grouping for every scorer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from asd.data.names import ClipRecord
from asd.embed.embedding_files import Split
from asd.score.calibration import CALIBRATIONS, calibrate_sections

GROUPINGS = ("section", "machine_type")


class TrainScores(dict):
    """{(machine_type, section): out-of-sample scores of its training normals}, with ``domains``
    {(machine_type, section): the domain of each score}: what the decision thresholds are set from."""

    def __init__(self, scores=(), domains=None):
        super().__init__(scores)
        self.domains = dict(domains or {})


class Scorer(Protocol):
    def fit(self, normal: Split) -> Scorer: ...

    def score(self, clips: Split) -> np.ndarray: ...

    def training_scores(self, normal: Split) -> np.ndarray: ...


def group_key(record: ClipRecord, by: str) -> tuple[str, ...]:
    if by not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {by!r}")
    return (record.machine_type, record.section) if by == "section" else (record.machine_type,)


def row_groups(records: Sequence[ClipRecord], by: str) -> dict[tuple[str, ...], list[int]]:
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(group_key(record, by), []).append(i)
    return dict(sorted(groups.items()))


def score_by_group(
    normal: Split,
    clips: Split,
    scorer_for: Callable[[tuple[str, ...], Split], Scorer],
    by: str,
    calibration: str = "off",
    calibration_k: int = 5,
) -> tuple[dict[str, float], dict[tuple[str, str], np.ndarray]]:
    """Scores of ``clips`` {path: score}, each by the scorer of its group, and the training normals'
    scores (``training_scores``: out of sample) per (machine_type, section), with their domains, for
    the decision thresholds.

    ``scorer_for(key, normals)`` returns a scorer fitted on that group's normals (fits it, or loads
    a saved one). ``calibration`` "neighbours": both the clips' and the training normals' scores are
    calibrated per section by their ``calibration_k`` nearest training normals (asd/score/calibration.py).
    """
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    normal_groups = row_groups(normal.records, by)
    missing = sorted(set(row_groups(clips.records, by)) - set(normal_groups))
    if missing:
        raise ValueError(
            f"test clips of {', '.join('/'.join(k) for k in missing)} have no training normals "
            "to compare with"
        )
    scores: dict[str, float] = {}
    train_scores: dict[tuple[str, str], list[float]] = {}
    train_rows: dict[tuple[str, str], list[int]] = {}
    domains: dict[tuple[str, str], list] = {}
    clip_groups = row_groups(clips.records, by)
    for key, rows in normal_groups.items():
        group_normal = normal.rows(rows)
        scorer = scorer_for(key, group_normal)
        for row, record, value in zip(rows, group_normal.records, scorer.training_scores(group_normal)):
            train_rows.setdefault((record.machine_type, record.section), []).append(row)
            train_scores.setdefault((record.machine_type, record.section), []).append(float(value))
            domains.setdefault((record.machine_type, record.section), []).append(record.domain)
        if key in clip_groups:
            group_clips = clips.rows(clip_groups[key])
            scores.update(zip((r.path for r in group_clips.records), map(float, scorer.score(group_clips))))
    train_scores = {key: np.asarray(values) for key, values in train_scores.items()}
    if calibration == "neighbours":
        paths = [r.path for r in clips.records]
        train_scores, calibrated = calibrate_sections(
            normal.embeddings,
            train_rows,
            train_scores,
            clips.embeddings,
            row_groups(clips.records, "section"),
            np.array([scores[p] for p in paths]),
            calibration_k,
        )
        scores = dict(zip(paths, map(float, calibrated)))
    return scores, TrainScores(train_scores, domains)


def out_of_fold_scores(make_scorer: Callable[[], Scorer], normal: Split, folds: int, seed: int) -> np.ndarray:
    """Each training normal scored by a scorer fitted without it: ``folds`` folds, stratified by domain
    where the normals have two (shuffled by ``seed``); each fold scored by a fresh scorer fitted on the
    others."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if folds < 2:
        raise ValueError(f"out-of-fold scores need at least 2 folds, got {folds}")
    domains = np.array([str(r.domain) for r in normal.records])
    smallest = min(np.unique(domains, return_counts=True)[1])
    if len(set(domains)) > 1 and smallest >= 2:
        splits = StratifiedKFold(min(folds, smallest), shuffle=True, random_state=seed).split(
            domains, domains
        )
    else:
        splits = KFold(min(folds, len(normal)), shuffle=True, random_state=seed).split(domains)
    scores = np.empty(len(normal))
    for fit_rows, held_out in splits:
        scores[held_out] = make_scorer().fit(normal.rows(fit_rows)).score(normal.rows(held_out))
    return scores
