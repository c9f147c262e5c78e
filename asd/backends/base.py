"""What every back end is: a scorer fitted on one group's training normals, built from named settings.

A back end (a registry entry, asd/backends/registry.py) has the scorer interface of asd/score/scoring.py:
``fit(normal)`` on the normals of one group (``group_by``: a section or a machine type), ``score(clips)``
(higher = more anomalous) and ``training_scores(normal)`` (the fitted normals' own scores, out of
sample, for the decision thresholds: by default out of fold, FOLDS refits). ``from_settings`` builds it
from evaluate.py's settings (lower-case names), reading the ones it names in ``SETTINGS``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import numpy as np

from asd.embed.embedding_files import Split
from asd.score.scoring import GROUPINGS, out_of_fold_scores

METRICS = ("cosine", "euclidean")
_MIN_NORM = 1e-12


def pick(settings: Mapping, names: tuple[str, ...]) -> dict:
    """{name: settings[name]} for ``names``; ValueError naming the missing ones."""
    missing = [name for name in names if name not in settings]
    if missing:
        raise ValueError(
            f"back-end settings lack {', '.join(missing)} (an evaluation by an older evaluate.py: rerun it)"
        )
    return {name: settings[name] for name in names}


def where(normal: Split) -> str:
    """'fan section 00' ('fan sections 00,01') for messages about a group's normals."""
    if not normal.records:
        return "a group without normals"
    sections = sorted({r.section for r in normal.records})
    machine = normal.records[0].machine_type
    return (
        f"{machine} section {sections[0]}"
        if len(sections) == 1
        else f"{machine} sections {','.join(sections)}"
    )


def l2_normalise(rows: np.ndarray) -> np.ndarray:
    """u = e / max(||e||, 1e-12) row-wise, in the rows' own precision (ASDKit's np_util.normalize)."""
    rows = np.asarray(rows)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), _MIN_NORM)


def distances(queries: np.ndarray, bank: np.ndarray, metric: str) -> np.ndarray:
    """[N, M] float64 distances of every query to every bank row.

    cosine: 1 - cosine similarity, in float64: near-duplicate rows have distances near float32's
    resolution, where a float32 matmul gives a clip a score that depends on the other clips scored with
    it (the BLAS kernel changes with the batch); euclidean: half the Euclidean distance, in float64
    (ASDKit's k-NN scale: for unit rows it lies in [0, 1] like the cosine distance).
    """
    if metric == "cosine":
        q, b = l2_normalise(np.asarray(queries, np.float64)), l2_normalise(np.asarray(bank, np.float64))
        return 1.0 - q @ b.T
    q, b = np.asarray(queries, np.float64), np.asarray(bank, np.float64)
    squared = (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * q @ b.T
    return np.sqrt(np.maximum(squared, 0.0)) / 2.0


def mean_of_nearest(matrix: np.ndarray, k: int) -> np.ndarray:
    """Mean of each row's k smallest finite entries (fewer where fewer are finite, inf where none is)."""
    k = min(k, matrix.shape[1])
    if k == 0:
        return np.full(len(matrix), np.inf)
    nearest = np.partition(matrix, k - 1, axis=1)[:, :k]
    finite = np.isfinite(nearest)
    count = finite.sum(1)
    total = np.where(finite, nearest, 0.0).sum(1)
    return np.where(count > 0, total / np.maximum(count, 1), np.inf)


class Backend:
    """The scorer interface with its settings; subclasses implement fit and score."""

    SETTINGS: tuple[str, ...] = ()  # the settings from_settings reads (besides the built parts)
    EMBEDDING = True  # scores the embeddings alone: can be the ensemble's embedding branch

    def __init__(self, group_by: str = "section", folds: int = 5, seed: int = 0):
        if group_by not in GROUPINGS:
            raise ValueError(f"GROUP_BY must be one of {', '.join(GROUPINGS)}, got {group_by!r}")
        if folds < 2:
            raise ValueError(f"FOLDS must be at least 2, got {folds}")
        self.group_by, self.folds, self.seed = group_by, folds, seed
        self.quiet = False  # refits do not repeat what the fit said

    @classmethod
    def from_settings(cls, settings: Mapping, make: Callable[[str, Mapping], Backend]) -> Backend:
        """The back end configured by ``settings``; ``make`` (the registry's make_backend) builds the
        back ends it is made of."""
        return cls(**pick(settings, cls.SETTINGS))

    def describe(self) -> str:
        """One line for the results' title."""
        return type(self).__name__

    def fresh(self) -> Backend:
        """A back end with the same settings for a refit (fit sets every fitted attribute anew)."""
        return copy.copy(self)

    def refit(self) -> Backend:
        """A fresh back end that does not repeat what the fit said on screen."""
        model = self.fresh()
        model.quiet = True
        return model

    def say(self, normal: Split, text: str) -> None:
        """One line about a group's normals, unless this is a refit."""
        if not self.quiet:
            print(f"{where(normal)}: {text}")

    def fit(self, normal: Split) -> Backend:
        raise NotImplementedError

    def score(self, clips: Split) -> np.ndarray:
        raise NotImplementedError

    def training_scores(self, normal: Split) -> np.ndarray:
        """Out-of-fold scores of the training normals: FOLDS refits, each scoring the normals it left out."""
        return out_of_fold_scores(self.refit, normal, self.folds, self.seed)
