"""ASDKit's four scoring back ends (TakuyaFujimura/dcase-asd-toolkit at ed27d82, config/score/experiments/
default.yaml), exactly: every one on L2-normalised embeddings, one bank per machine type (all its
sections together, ASDKit's sep_section false).

  knn        k-NN, k = 1, a source bank and a target bank: score = min(d_source, d_target) / 2, d the
             Euclidean distance to the nearest bank row (sqrt(2 - 2 cos));
  smote_knn  as knn, the target bank grown first by imbalanced-learn's
             SMOTE(sampling_strategy=0.2, k_neighbors=2, random_state=0) on the normalised training
             rows (int(0.2 * n_source - n_target) new rows, renormalised);
  kmeans     scikit-learn KMeans(n_clusters=16, random_state=0) on the normalised source rows, its
             centres renormalised, every normalised target row a centre of its own: score =
             min over centres of ||u - c||^2 / 2 (= 1 - cos);
  rescale    KnnRescale: one pooled bank R of all normalised training rows, c_j = mean Euclidean distance
             of R_j to its 4 nearest other rows: score = min_j ||u - R_j|| / c_j.

The project's own back ends (spherical k-means, per-domain density ratio, the ensemble's SMOTE) stay
in asd/backends.py. Training normals get out-of-fold scores (asd.scoring.out_of_fold_scores) for the
decision threshold.
"""

from __future__ import annotations

import numpy as np

from asd.embedding_files import Split
from asd.scoring import out_of_fold_scores

ASDKIT_BACKENDS = ("knn", "smote_knn", "kmeans", "rescale")
SMOTE_RATIO = 0.2  # ASDKit: smote_ratio
SMOTE_NEIGHBOURS = 2  # ASDKit: smote k_neighbors
KMEANS_CLUSTERS = 16  # ASDKit: n_clusters
K_REF = 4  # ASDKit: k_ref_normalize
SEED = 0  # ASDKit fixes random_state 0 for SMOTE and KMeans
_MIN_NORM = 1e-12


def normalise(rows: np.ndarray) -> np.ndarray:
    """u = e / max(||e||, 1e-12) row-wise, in the rows' own precision (ASDKit's np_util.normalize)."""
    rows = np.asarray(rows)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), _MIN_NORM)


def euclidean(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Euclidean distances [N, M] (float64)."""
    q, b = np.asarray(queries, np.float64), np.asarray(bank, np.float64)
    squared = (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * q @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def nearest(queries: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance to the nearest bank row, its index) of every query."""
    distances = euclidean(queries, bank)
    index = distances.argmin(1)
    return distances[np.arange(len(queries)), index], index


def knn_score(test: np.ndarray, source_bank: np.ndarray, target_bank: np.ndarray) -> np.ndarray:
    """ASDKit's Knn (k = 1) on normalised rows: min(d_source, d_target) / 2."""
    return np.minimum(nearest(test, source_bank)[0], nearest(test, target_bank)[0]) / 2.0


def count_new_rows(n_majority: int, n_minority: int, ratio: float = SMOTE_RATIO) -> int:
    """imbalanced-learn's count for a float sampling_strategy: int(ratio * n_majority - n_minority)
    (Python float arithmetic, truncated); ValueError when that is not positive (imbalanced-learn
    refuses it too, and ASDKit's scoring stops there)."""
    count = int(n_majority * ratio - n_minority)
    if count <= 0:
        raise ValueError(
            f"SMOTE: {n_minority} target vs {n_majority} source rows leave int({ratio} * {n_majority} - "
            f"{n_minority}) = {count} rows to make; imbalanced-learn needs a positive count (ASDKit stops here)"
        )
    return count


def smote_rows(
    source: np.ndarray,
    target: np.ndarray,
    ratio: float = SMOTE_RATIO,
    neighbours: int = SMOTE_NEIGHBOURS,
    seed: int = SEED,
) -> np.ndarray:
    """imbalanced-learn's SMOTE rows (not renormalised) made from the normalised target rows, both domains
    passed to fit_resample and the target domain the minority, as ASDKit calls it."""
    from imblearn.over_sampling import SMOTE

    count_new_rows(len(source), len(target), ratio)  # the clear error before imbalanced-learn's
    if len(target) <= neighbours:
        raise ValueError(
            f"SMOTE with {neighbours} neighbours needs at least {neighbours + 1} target rows, got {len(target)}"
        )
    rows = np.concatenate([source, target])
    is_target = np.r_[np.zeros(len(source), dtype=int), np.ones(len(target), dtype=int)]
    smote = SMOTE(sampling_strategy=ratio, k_neighbors=neighbours, random_state=seed)
    resampled, _ = smote.fit_resample(rows, is_target)
    return resampled[len(rows) :]  # imbalanced-learn appends the new rows after the given ones


def smote_target_bank(source: np.ndarray, target: np.ndarray, **smote) -> np.ndarray:
    """The target bank of smote_knn: the normalised target rows followed by the SMOTE rows, renormalised."""
    return normalise(np.concatenate([target, smote_rows(source, target, **smote)]))


def fit_kmeans(source: np.ndarray, clusters: int = KMEANS_CLUSTERS, seed: int = SEED):
    """scikit-learn KMeans(clusters, random_state=seed) fitted on the normalised source rows."""
    from sklearn.cluster import KMeans

    if len(source) < clusters:
        raise ValueError(
            f"k-means with {clusters} clusters needs at least {clusters} source rows, got {len(source)}"
        )
    return KMeans(n_clusters=clusters, random_state=seed).fit(source)


def kmeans_centres(
    source: np.ndarray, target: np.ndarray, clusters: int = KMEANS_CLUSTERS, seed: int = SEED
) -> np.ndarray:
    """The k-means centres of the normalised source rows, renormalised, then every normalised target row."""
    centres = fit_kmeans(source, clusters, seed).cluster_centers_.astype(source.dtype)
    return np.concatenate([normalise(centres), target])


def kmeans_score(test: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """min over centres of ||u - c||^2 / 2."""
    return nearest(test, centres)[0] ** 2 / 2.0


def rescale_constants(bank: np.ndarray, k_ref: int = K_REF) -> np.ndarray:
    """c_j: the mean distance of bank row j to its ``k_ref`` nearest other rows (the sorted column of
    the bank's distance matrix without its first entry, the row itself)."""
    if len(bank) <= k_ref:
        raise ValueError(
            f"KnnRescale with k_ref {k_ref} needs at least {k_ref + 1} training rows, got {len(bank)}"
        )
    return np.sort(euclidean(bank, bank), axis=0)[1 : k_ref + 1].mean(0)


def rescale_score(test: np.ndarray, bank: np.ndarray, constants: np.ndarray) -> np.ndarray:
    """min_j ||u - R_j|| / c_j."""
    return (euclidean(test, bank) / constants[None, :]).min(1)


class AsdkitBackend:
    """One of ASDKit's back ends behind the scorer interface (fit, score, training_scores)."""

    def __init__(self, name: str, folds: int = 5, seed: int = SEED):
        if name not in ASDKIT_BACKENDS:
            raise ValueError(f"ASDKit back end must be one of {', '.join(ASDKIT_BACKENDS)}, got {name!r}")
        self.name, self.folds, self.seed = name, folds, seed

    @staticmethod
    def _domains(normal: Split) -> tuple[np.ndarray, np.ndarray]:
        """(normalised source rows, normalised target rows); clips without a domain count as source."""
        rows = normalise(normal.embeddings)
        is_target = np.array([r.domain == "target" for r in normal.records])
        return rows[~is_target], rows[is_target]

    def fit(self, normal: Split) -> AsdkitBackend:
        source, target = self._domains(normal)
        if self.name in ("knn", "smote_knn", "kmeans") and (len(source) == 0 or len(target) == 0):
            where = normal.records[0].machine_type if normal.records else "a machine type"
            raise ValueError(
                f"{where}: ASDKit's {self.name} back end needs source and target training normals, got "
                f"{len(source)} and {len(target)} (as in ASDKit; leave it out with --asdkit_backends)"
            )
        if self.name == "knn":
            self.banks = (source, target)
        elif self.name == "smote_knn":
            self.banks = (source, smote_target_bank(source, target))
        elif self.name == "kmeans":
            self.centres = kmeans_centres(source, target)
        else:
            self.bank = np.concatenate([source, target])
            self.constants = rescale_constants(self.bank)
        return self

    def score(self, clips: Split) -> np.ndarray:
        test = normalise(clips.embeddings)
        if self.name in ("knn", "smote_knn"):
            return knn_score(test, *self.banks)
        if self.name == "kmeans":
            return kmeans_score(test, self.centres)
        return rescale_score(test, self.bank, self.constants)

    def training_scores(self, normal: Split) -> np.ndarray:
        """Out-of-fold scores of the training normals (a normal is never its own reference)."""
        return out_of_fold_scores(
            lambda: AsdkitBackend(self.name, self.folds, self.seed), normal, self.folds, self.seed
        )


def asdkit_factory(name: str):
    """A scoring.score_by_group factory (group by machine type, as ASDKit)."""
    AsdkitBackend(name)  # refuses a bad name before any fitting
    return lambda key, normal: AsdkitBackend(name).fit(normal)
