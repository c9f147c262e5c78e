"""k-means back end (ASDKit's Kmeans): the cosine distance to the nearest centre.

Centres: scikit-learn KMeans(KMEANS_CLUSTERS, n_init=KMEANS_N_INIT, random_state=SEED) fitted on the
L2-normalised source normals, its centres renormalised, and every normalised target normal as a centre
of its own (the target normals are few). Score = min over centres of 1 - cos (= ||u - c||^2 / 2).
ASDKit ran scikit-learn's default n_init="auto", which is 1 for k-means++ seeding: KMEANS_N_INIT 1
gives its centres. Training scores: out of fold.
"""

from __future__ import annotations

import numpy as np

from asd.backends.base import Backend, l2_normalise
from asd.embed.embedding_files import Split


def fit_kmeans(source: np.ndarray, clusters: int, n_init: int, seed: int):
    """scikit-learn KMeans(clusters, n_init, random_state=seed) fitted on the normalised source rows."""
    from sklearn.cluster import KMeans

    if len(source) < clusters:
        raise ValueError(
            f"k-means with {clusters} clusters needs at least {clusters} source rows, got {len(source)}"
        )
    return KMeans(n_clusters=clusters, n_init=n_init, random_state=seed).fit(source)


class KMeansBackend(Backend):
    """The cosine distance to the nearest of the source normals' k-means centres and the target normals."""

    SETTINGS = ("kmeans_clusters", "kmeans_n_init", "group_by", "folds", "seed")

    def __init__(
        self,
        kmeans_clusters: int = 16,
        kmeans_n_init: int = 1,
        group_by: str = "section",
        folds: int = 5,
        seed: int = 0,
    ):
        super().__init__(group_by, folds, seed)
        if kmeans_clusters < 1 or kmeans_n_init < 1:
            raise ValueError(
                f"KMEANS_CLUSTERS and KMEANS_N_INIT must be at least 1, got {kmeans_clusters} and {kmeans_n_init}"
            )
        self.clusters, self.n_init = kmeans_clusters, kmeans_n_init

    def describe(self) -> str:
        return f"k-means ({self.clusters} source centres, every target normal a centre)"

    def fit(self, normal: Split) -> KMeansBackend:
        rows = l2_normalise(normal.embeddings)
        is_target = np.array([r.domain == "target" for r in normal.records], dtype=bool)
        source = rows[~is_target]
        centres = fit_kmeans(source, self.clusters, self.n_init, self.seed).cluster_centers_.astype(
            rows.dtype
        )
        self.centres = np.concatenate([l2_normalise(centres), rows[is_target]])
        return self

    def score(self, clips: Split) -> np.ndarray:
        test = np.asarray(l2_normalise(clips.embeddings), np.float64)
        return (1.0 - test @ self.centres.astype(np.float64).T).min(1)
