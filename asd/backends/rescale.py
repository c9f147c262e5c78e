"""k-NN rescaled (ASDKit's KnnRescale): each reference's distance divided by its own local density.

One bank R of all the L2_NORMALISE'd training normals (both domains: the rescaling is what calibrates
them); c_j = the mean distance (METRIC) of R_j to its RESCALE_NEIGHBOURS nearest other rows; score =
min_j d(u, R_j) / c_j. With METRIC euclidean it is ASDKit's KnnRescale (k_ref_normalize 4). Training
scores: out of fold.
"""

from __future__ import annotations

import numpy as np

from asd.backends.base import METRICS, Backend, distances, l2_normalise
from asd.embed.embedding_files import Split

MIN_DENSITY = 1e-12  # duplicated references would have density 0 and divide by it


def rescale_constants(bank: np.ndarray, neighbours: int, metric: str) -> np.ndarray:
    """c_j: the mean distance of bank row j to its ``neighbours`` nearest other rows (the sorted column
    of the bank's distance matrix without its first entry, the row itself)."""
    if len(bank) <= neighbours:
        raise ValueError(
            f"k-NN rescaled with {neighbours} neighbours needs at least {neighbours + 1} training rows, "
            f"got {len(bank)}"
        )
    return np.sort(distances(bank, bank, metric), axis=0)[1 : neighbours + 1].mean(0)


class Rescale(Backend):
    """min over the normals of (distance to it) / (its mean distance to its nearest other normals)."""

    SETTINGS = ("metric", "l2_normalise", "rescale_neighbours", "group_by", "folds", "seed")

    def __init__(
        self,
        metric: str = "euclidean",
        l2_normalise: bool = True,
        rescale_neighbours: int = 4,
        group_by: str = "section",
        folds: int = 5,
        seed: int = 0,
    ):
        super().__init__(group_by, folds, seed)
        if metric not in METRICS:
            raise ValueError(f"METRIC must be one of {', '.join(METRICS)}, got {metric!r}")
        if rescale_neighbours < 1:
            raise ValueError(f"RESCALE_NEIGHBOURS must be at least 1, got {rescale_neighbours}")
        self.metric, self.normalise, self.neighbours = metric, l2_normalise, rescale_neighbours

    def describe(self) -> str:
        return f"k-NN rescaled ({self.metric}, density of {self.neighbours} neighbours)"

    def _rows(self, embeddings: np.ndarray) -> np.ndarray:
        return l2_normalise(embeddings) if self.normalise else np.asarray(embeddings)

    def fit(self, normal: Split) -> Rescale:
        self.bank = self._rows(normal.embeddings)
        self.constants = np.maximum(rescale_constants(self.bank, self.neighbours, self.metric), MIN_DENSITY)
        return self

    def score(self, clips: Split) -> np.ndarray:
        return (
            distances(self._rows(clips.embeddings), self.bank, self.metric) / self.constants[None, :]
        ).min(1)
