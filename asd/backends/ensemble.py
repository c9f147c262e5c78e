"""The ensemble: W * z(embedding back end) + (1 - W) * z(statistics back end), per section.

The embedding branch is the registry's EMBEDDING_BACKEND (knn, smote_knn, kmeans, rescale), the
statistics branch its mahalanobis back end. Each branch is standardised by its own scores on the
training normals: the embedding branch by its out-of-sample training scores, the statistics branch by its
in-sample distances (they weigh the branches; the ranking is unchanged), while the training scores that
set the decision threshold are out of sample in both branches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from asd.backends.base import Backend, pick
from asd.embed.embedding_files import Split


def standardiser(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """z-scores by the (finite) training distribution."""
    finite = train[np.isfinite(train)]
    mean = finite.mean() if finite.size else 0.0
    std = finite.std() if finite.size > 1 and finite.std() > 0 else 1.0
    return lambda values: (values - mean) / std


class Ensemble(Backend):
    """W * z(embedding branch) + (1 - W) * z(statistics branch)."""

    SETTINGS = ("embedding_backend", "w")
    EMBEDDING = False

    def __init__(self, embedding: Backend, statistics: Backend, w: float = 0.5, name: str = ""):
        super().__init__("section")
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"W must lie in [0, 1], got {w}")
        self.embedding, self.statistics, self.w, self.name = embedding, statistics, w, name

    @classmethod
    def from_settings(cls, settings: Mapping, make: Callable[[str, Mapping], Backend]) -> Ensemble:
        chosen = pick(settings, cls.SETTINGS)
        embedding = make(chosen["embedding_backend"], settings)
        if not embedding.EMBEDDING:
            raise ValueError(
                f"EMBEDDING_BACKEND must name a back end of the embeddings alone, got {chosen['embedding_backend']!r}"
            )
        return cls(embedding, make("mahalanobis", settings), chosen["w"], chosen["embedding_backend"])

    def describe(self) -> str:
        return f"{self.name or self.embedding.describe()} x {self.w:g} + Mahalanobis x {1 - self.w:g}"

    def fresh(self) -> Ensemble:
        return Ensemble(self.embedding.fresh(), self.statistics.fresh(), self.w, self.name)

    def fit(self, normal: Split) -> Ensemble:
        self.embedding.fit(normal)
        self.train_embedding = self.embedding.training_scores(normal)
        self.statistics.fit(normal)
        in_sample = self.statistics.score(normal)
        self.train_statistics = self.statistics.training_scores(normal)
        self.z_embedding, self.z_statistics = standardiser(self.train_embedding), standardiser(in_sample)
        self.n_fitted = len(normal)
        return self

    def _combine(self, embedding: np.ndarray, statistics: np.ndarray) -> np.ndarray:
        return self.w * self.z_embedding(embedding) + (1 - self.w) * self.z_statistics(statistics)

    def score(self, clips: Split) -> np.ndarray:
        return self._combine(self.embedding.score(clips), self.statistics.score(clips))

    def training_scores(self, normal: Split) -> np.ndarray:
        """The fitted normals' own scores (``normal`` must be the split given to ``fit``)."""
        if len(normal) != self.n_fitted:
            raise ValueError(
                f"training_scores needs the {self.n_fitted} fitted normals, got {len(normal)} rows"
            )
        return self._combine(self.train_embedding, self.train_statistics)
