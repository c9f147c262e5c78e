"""The ensemble's back ends: a nearest-reference distance on embeddings + Mahalanobis distance on statistics.

Three back ends give each query its distances to a bank's references; the branch's distance is
the mean of the K smallest (K = 1: the nearest), the smaller over the domain banks:
  knn      references = the bank's normals, distance = cosine distance;
  kmeans   references = the bank's spherical k-means centres, distance = cosine distance;
  density  references = the bank's normals, distance = cosine distance / the reference's density
           (its mean cosine distance to its nearest other references).
``excluded[i, j]`` (bool [N, M]) leaves bank row j out for query i: the leave-one-out of the
training scores (a normal and the SMOTE rows made from it are never its own references).
Every scorer has the small interface of asd/scoring.py (fit, score, training_scores).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from asd.embedding_files import Split
from asd.scoring import out_of_fold_scores

BACKENDS = ("knn", "kmeans", "density")
MIN_DENSITY = 1e-6  # duplicated references would have density 0 and divide by it
INF = float("inf")


def cosine_distances(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of every query to every bank row, [N, M]: one float32 matmul (float64
    would cost 2-3x the time of bench/scoring.py's target for no change in the rankings)."""
    return 1.0 - F.normalize(queries.float(), dim=1) @ F.normalize(bank.float(), dim=1).T


def mean_of_nearest(distances: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of each row's k smallest finite distances (fewer where fewer are finite, inf where none is)."""
    top = distances.topk(min(k, distances.shape[1]), dim=1, largest=False).values
    valid = torch.isfinite(top)
    mean = torch.where(valid, top, 0.0).sum(1) / valid.sum(1).clamp(min=1)
    return torch.where(valid.any(1), mean, INF)


class KnnBank:
    """References: the bank rows; distance: cosine distance."""

    def __init__(self, bank: torch.Tensor):
        self.bank = bank

    def distances(self, queries: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
        distances = cosine_distances(queries, self.bank)
        return distances if excluded is None else distances.masked_fill(excluded, INF)


def knn_distance(
    queries: torch.Tensor, bank: torch.Tensor, k: int, excluded: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cosine distance of each query to its k nearest bank rows (inf where none is left)."""
    return mean_of_nearest(KnnBank(bank).distances(queries, excluded), k)


def spherical_kmeans(bank: torch.Tensor, clusters: int, seed: int, iterations: int = 100) -> torch.Tensor:
    """Cluster of every bank row: k-means on the unit sphere (cosine similarity, centre = normalised
    sum of the members), k-means++ seeding drawn from numpy's generator ``seed``; at most
    ``clusters`` centres, fewer when the bank has fewer distinct directions."""
    unit = F.normalize(bank.double(), dim=1)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(unit)))]
    nearest = 1.0 - unit @ unit[chosen[0]]
    while len(chosen) < min(clusters, len(unit)):
        weights = np.where(nearest.numpy() > 1e-12, nearest.numpy(), 0.0)
        if weights.sum() == 0:  # every row already lies on a centre
            break
        chosen.append(int(rng.choice(len(unit), p=weights / weights.sum())))
        nearest = torch.minimum(nearest, 1.0 - unit @ unit[chosen[-1]])
    centres, assignment = unit[chosen], None
    for _ in range(iterations):
        new = (unit @ centres.T).argmax(1)
        if assignment is not None and torch.equal(new, assignment):
            break
        assignment = new
        sums = torch.zeros_like(centres).index_add_(0, assignment, unit)
        centres = torch.where(sums.norm(dim=1, keepdim=True) > 0, F.normalize(sums, dim=1), centres)
    return assignment


class KMeansBank:
    """References: the spherical k-means centres of the bank; distance: cosine distance.

    With ``excluded`` each centre is recomputed for each query without the rows excluded for it
    (the clustering itself is kept); a centre left without members is no reference for that query.
    """

    def __init__(self, bank: torch.Tensor, clusters: int, seed: int):
        self.unit = F.normalize(bank.double(), dim=1)
        self.assignment = spherical_kmeans(bank, clusters, seed)
        self.clusters = [torch.nonzero(self.assignment == c).squeeze(1) for c in self.assignment.unique()]

    def distances(self, queries: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
        unit_queries = F.normalize(queries.double(), dim=1)
        if excluded is None:
            excluded = torch.zeros(len(queries), len(self.unit), dtype=torch.bool)
        columns = []
        for rows in self.clusters:
            left_out = excluded[:, rows].double()
            centre = F.normalize(self.unit[rows].sum(0) - left_out @ self.unit[rows], dim=1)  # [N, D]
            similarity = (unit_queries * centre).sum(1)
            columns.append(torch.where(left_out.sum(1) < len(rows), 1.0 - similarity, INF))
        return torch.stack(columns, dim=1)


class DensityBank:
    """References: the bank rows; distance: cosine distance / the reference's density, the mean
    cosine distance of the reference to its ``neighbours`` nearest other bank rows (without the rows
    excluded for the query). A reference without another row to measure it by is no reference."""

    CHUNK = 64  # queries at a time: the leave-one-out densities take [CHUNK, M, width]

    def __init__(self, bank: torch.Tensor, neighbours: int):
        self.bank, self.neighbours = bank, neighbours
        among = cosine_distances(bank, bank).fill_diagonal_(INF)
        self.sorted, self.order = among.sort(dim=1)  # each row's other rows, nearest first

    def distances(self, queries: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
        distances = cosine_distances(queries, self.bank)
        if excluded is None:
            excluded = torch.zeros(distances.shape, dtype=torch.bool)
        return torch.cat(
            [self._rescaled(d, e) for d, e in zip(distances.split(self.CHUNK), excluded.split(self.CHUNK))]
        )

    def _rescaled(self, distances: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
        most_excluded = int(excluded.sum(1).max()) if len(excluded) else 0
        width = min(len(self.bank) - 1, self.neighbours + most_excluded)  # enough to skip the excluded
        order, near = self.order[:, :width], self.sorted[:, :width]  # [M, width]
        keep = ~excluded[:, order]  # [n, M, width]
        take = keep & (keep.int().cumsum(2) <= self.neighbours)
        count = take.sum(2)
        density = (near * take).sum(2) / count.clamp(min=1)
        rescaled = distances / density.clamp(min=MIN_DENSITY)
        return rescaled.masked_fill(excluded | (count == 0), INF)


def smote_count(n_majority: int, n_minority: int, ratio: float) -> int:
    """Synthetic rows for imbalanced-learn's float ``sampling_strategy``: minority / majority =
    ``ratio`` after resampling, so round(ratio * n_majority) - n_minority, and none when the
    minority is already that large (imbalanced-learn truncates and raises there instead)."""
    return max(0, round(ratio * n_majority) - n_minority)


def smote(minority: np.ndarray, n_new: int, neighbours: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_new`` SMOTE rows x + u * (y - x): x a random minority row, y one of its ``neighbours``
    nearest other minority rows (Euclidean, as imbalanced-learn), u ~ U(0, 1), all drawn from numpy's
    generator ``seed``. Returns the rows [n_new, D] and their (x, y) row indices [n_new, 2]; no rows
    when the minority has a single row (``neighbours`` is capped at the other rows' count)."""
    from scipy.spatial.distance import cdist

    x = np.asarray(minority, dtype=np.float64)
    neighbours = min(neighbours, len(x) - 1)
    if n_new <= 0 or neighbours < 1:
        return np.empty((0, x.shape[1])), np.empty((0, 2), dtype=np.int64)
    between = cdist(x, x)
    np.fill_diagonal(between, np.inf)
    nearest = np.argsort(between, axis=1, kind="stable")[:, :neighbours]
    rng = np.random.default_rng(seed)
    origin = rng.integers(len(x), size=n_new)
    partner = nearest[origin, rng.integers(neighbours, size=n_new)]
    steps = rng.uniform(size=(n_new, 1))
    return x[origin] + steps * (x[partner] - x[origin]), np.stack([origin, partner], axis=1)


class Mahalanobis:
    """Mahalanobis distance under a Ledoit-Wolf covariance of column-standardised training rows."""

    def __init__(self, x: np.ndarray):
        from sklearn.covariance import LedoitWolf

        x = np.asarray(x, dtype=np.float64)
        self.mean, scale = x.mean(0), x.std(0)
        self.scale = np.where(scale > 1e-12, scale, 1.0)  # constant columns would divide by zero
        self.precision = LedoitWolf(assume_centered=True).fit((x - self.mean) / self.scale).precision_

    def inverse_covariance(self) -> np.ndarray:
        """The precision matrix in the original units (for checks against scipy)."""
        return self.precision / np.outer(self.scale, self.scale)

    def distance(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, self.precision, z), 0.0))


MAHALANOBIS_FITS = ("per_domain", "pooled")


class StatsMahalanobis:
    """Mahalanobis distance of the statistics vectors.

    per_domain (the DCASE baseline's "selective Mahalanobis"): one Ledoit-Wolf fit per domain, the
    smaller distance taken; a domain with fewer than ``min_count`` normals gets no fit of its own and
    the fit over all normals takes its place (``notes`` says so). pooled: one fit over all normals.
    Data without two domains always gets the one pooled fit.
    """

    def __init__(self, fit: str = "per_domain", min_count: int = 5):
        if fit not in MAHALANOBIS_FITS:
            raise ValueError(f"MAHALANOBIS must be one of {', '.join(MAHALANOBIS_FITS)}, got {fit!r}")
        if min_count < 2:
            raise ValueError(f"MIN_DOMAIN_STATS must be at least 2, got {min_count}")
        self.fit_kind, self.min_count = fit, min_count

    def fit(self, normal: Split) -> StatsMahalanobis:
        domains = np.array([str(r.domain) for r in normal.records])
        self.models, self.notes = [], []
        if self.fit_kind == "per_domain" and {"source", "target"} <= set(domains):
            for domain in ("source", "target"):
                count = int(np.sum(domains == domain))
                if count >= self.min_count:
                    self.models.append(Mahalanobis(normal.stats[domains == domain]))
                else:
                    self.notes.append(
                        f"{count} {domain} normals (< MIN_DOMAIN_STATS {self.min_count}): "
                        "the fit over all normals takes the place of its own"
                    )
        if len(self.models) < 2:
            self.models.append(Mahalanobis(normal.stats))
        return self

    def score(self, clips: Split) -> np.ndarray:
        return np.min([model.distance(clips.stats) for model in self.models], axis=0)


def standardiser(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """z-scores by the (finite) training distribution."""
    finite = train[np.isfinite(train)]
    mean = finite.mean() if finite.size else 0.0
    std = finite.std() if finite.size > 1 and finite.std() > 0 else 1.0
    return lambda values: (values - mean) / std


class KnnMahalanobis:
    """W * z(nearest-reference distance of the embeddings) + (1 - W) * z(Mahalanobis distance of the statistics).

    Embedding branch: the backend's (``knn``, ``kmeans`` or ``density``) mean distance to the K
    nearest references of the section, with one memory bank per domain (the smaller distance is
    taken: target normals are few) or one for all. With ``smote_ratio`` > 0 the target normals are
    joined by SMOTE rows (``smote``) until target / source = ``smote_ratio``: they go into the bank
    holding the target normals; the source bank is never enlarged. Each branch is standardised by its
    own scores on the training normals, leave-one-out: a normal's embedding distance never counts
    itself or a SMOTE row made from it as a reference (kmeans: its centre is recomputed without
    them; density: the references' densities too).
    """

    def __init__(
        self,
        k: int = 1,
        w: float = 0.5,
        separate_domain_banks: bool = True,
        backend: str = "knn",
        kmeans_clusters: int = 16,
        density_neighbours: int = 4,
        smote_ratio: float = 0.0,
        smote_neighbours: int = 2,
        seed: int = 0,
        mahalanobis: str = "pooled",
        min_domain_stats: int = 5,
        stats_folds: int = 0,
    ):
        for name, value in (
            ("K", k),
            ("KMEANS_CLUSTERS", kmeans_clusters),
            ("DENSITY_NEIGHBOURS", density_neighbours),
            ("SMOTE_NEIGHBOURS", smote_neighbours),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if backend not in BACKENDS:
            raise ValueError(f"BACKEND must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if not 0.0 <= w <= 1.0 or smote_ratio < 0:
            raise ValueError(f"W must lie in [0, 1] and SMOTE_RATIO be >= 0, got {w} and {smote_ratio}")
        self.k, self.w, self.separate, self.backend = k, w, separate_domain_banks, backend
        self.kmeans_clusters, self.density_neighbours = kmeans_clusters, density_neighbours
        self.smote_ratio, self.smote_neighbours, self.seed = smote_ratio, smote_neighbours, seed
        StatsMahalanobis(mahalanobis, min_domain_stats)  # refuses bad settings here
        if stats_folds == 1 or stats_folds < 0:
            raise ValueError(f"STATS_FOLDS must be 0 (in-sample) or at least 2, got {stats_folds}")
        self.mahalanobis, self.min_domain_stats, self.stats_folds = mahalanobis, min_domain_stats, stats_folds

    def _references(self, normal: Split) -> tuple[np.ndarray, list, np.ndarray]:
        """Bank rows (the normals, then the SMOTE rows), the domain of each, and ``excluded``
        [normals, rows]: which rows each normal is or was made from (its leave-one-out)."""
        domains = [r.domain for r in normal.records]
        target = np.array([i for i, d in enumerate(domains) if d == "target"], dtype=np.int64)
        n_new = smote_count(domains.count("source"), len(target), self.smote_ratio)
        synthetic, parents = smote(normal.embeddings[target], n_new, self.smote_neighbours, self.seed)
        n, s = len(normal), len(synthetic)
        excluded = np.zeros((n, n + s), dtype=bool)
        excluded[np.arange(n), np.arange(n)] = True
        for column in range(2):
            excluded[target[parents[:, column]], n + np.arange(s)] = True
        rows = np.concatenate([normal.embeddings, synthetic.astype(normal.embeddings.dtype)])
        return rows, domains + ["target"] * s, excluded

    def _bank(self, rows: torch.Tensor):
        if self.backend == "kmeans":
            return KMeansBank(rows, self.kmeans_clusters, self.seed)
        if self.backend == "density":
            return DensityBank(rows, self.density_neighbours)
        return KnnBank(rows)

    def _distance(self, queries: np.ndarray, leave_one_out: bool) -> np.ndarray:
        queries = torch.from_numpy(queries)
        distance = torch.full((len(queries),), INF, dtype=torch.float64)
        for rows, bank in self.banks:
            excluded = torch.from_numpy(self.excluded[:, rows]) if leave_one_out else None
            distance = torch.minimum(distance, mean_of_nearest(bank.distances(queries, excluded), self.k))
        return distance.numpy()

    def fit(self, normal: Split) -> KnnMahalanobis:
        references, domains, self.excluded = self._references(normal)
        keys = [d if self.separate else None for d in domains]
        self.banks = []
        for key in sorted(set(keys), key=str):
            rows = np.array([i for i, x in enumerate(keys) if x == key])
            self.banks.append((rows, self._bank(torch.from_numpy(references[rows]))))
        make = lambda: StatsMahalanobis(self.mahalanobis, self.min_domain_stats)  # noqa: E731
        self.stats_model = make().fit(normal)
        if normal.records:
            where = f"{normal.records[0].machine_type} section {normal.records[0].section}"
            for note in self.stats_model.notes:
                print(f"{where}: {note}")
        self.train_knn = self._distance(normal.embeddings, leave_one_out=True)
        in_sample = self.stats_model.score(normal)
        # the branch is standardised as before (in sample: it weighs the branches, the ranking is
        # unchanged), but the training scores that set the threshold are out of sample: each normal
        # measured by a fit without it, as a test clip is
        self.train_maha = (
            out_of_fold_scores(make, normal, self.stats_folds, self.seed) if self.stats_folds else in_sample
        )
        self.z_knn, self.z_maha = standardiser(self.train_knn), standardiser(in_sample)
        return self

    def _combine(self, distance: np.ndarray, maha: np.ndarray) -> np.ndarray:
        return self.w * self.z_knn(distance) + (1 - self.w) * self.z_maha(maha)

    def score(self, clips: Split) -> np.ndarray:
        return self._combine(
            self._distance(clips.embeddings, leave_one_out=False), self.stats_model.score(clips)
        )

    def training_scores(self, normal: Split) -> np.ndarray:
        """The fitted normals' own scores (``normal`` must be the split given to ``fit``)."""
        if len(normal) != len(self.excluded):
            raise ValueError(
                f"training_scores needs the {len(self.excluded)} fitted normals, got {len(normal)} rows"
            )
        return self._combine(self.train_knn, self.train_maha)


def ensemble_factory(settings: dict):
    """A scoring.score_by_group factory: the ensemble fitted on one section's normals, configured by
    ``settings`` (evaluate.py's constants, lower-case, as in an evaluation's summary.json)."""
    names = list(inspect.signature(KnnMahalanobis).parameters)
    missing = [name for name in names if name not in settings]
    if missing:
        raise ValueError(
            f"ensemble settings lack {', '.join(missing)} (an evaluation by an older evaluate.py: rerun it)"
        )
    chosen = {name: settings[name] for name in names}
    KnnMahalanobis(**chosen)  # refuses bad settings before any fitting
    return lambda key, normal: KnnMahalanobis(**chosen).fit(normal)
