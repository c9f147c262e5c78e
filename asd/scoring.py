"""The scorers' side of the pipeline: embedding files in, anomaly scores out.

The four files extract_embeddings.py writes are the only contract between the encoder and the
scorers (nothing here imports model.py or loads EAT):
  normal_embeddings.pt, normal_stats.pt    the training normals
  test_embeddings.pt,   test_stats.pt      the test clips
each {"matrix": Tensor[N, F], "records": [ClipRecord dicts], "columns": stat names or None,
"fingerprint": {...}}. ``load_features`` reads them and checks that they agree (same tuned model,
same data folder, same settings, same clips in embeddings and statistics) and are current (the
data folder and the tuned model on disk unchanged); otherwise it stops naming the command to run.

Every scorer has one small interface: ``fit(normal)`` on the normals of one group (a section for
the ensemble, a machine type for Deep SVDD), ``score(clips)``, and ``training_scores(normal)``
(the fitted normals' own scores, leave-one-out where it matters, for the decision threshold).
``score_by_group`` does the grouping for every scorer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.preprocessing import StandardScaler

from dataset import ClipRecord, discover_clips

FEATURES_FORMAT = "eat-lora-asd/features-v2"
FEATURE_FILES = {
    "train": ("normal_embeddings.pt", "normal_stats.pt"),
    "test": ("test_embeddings.pt", "test_stats.pt"),
}
GROUPINGS = ("section", "machine_type")


# -----------------------------------------------------------------------------
# the embedding files


def feature_paths(embed_dir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(embeddings file, statistics file) of a split ("train" = the normals, or "test")."""
    if split not in FEATURE_FILES:
        raise ValueError(f"split must be one of {sorted(FEATURE_FILES)}, got {split!r}")
    return tuple(Path(embed_dir) / name for name in FEATURE_FILES[split])


def split_records(data_dir: str | os.PathLike, split: str) -> list[ClipRecord]:
    """The clips of a split, sorted by path: the training normals, or every test clip."""
    records = discover_clips(data_dir, splits=(split,))
    if split == "train":
        records = [r for r in records if r.label == "normal"]
    if not records:
        raise ValueError(f"{data_dir}: no {'normal training' if split == 'train' else 'test'} clips found")
    return records


def data_fingerprint(records: Sequence[ClipRecord]) -> str:
    """sha256 over every clip's absolute path, size, modification time and parsed metadata."""
    digest = hashlib.sha256()
    for record in records:
        stat = os.stat(record.path)
        metadata = {key: value for key, value in record.to_dict().items() if key != "path"}
        item = [str(Path(record.path).resolve()), stat.st_size, stat.st_mtime_ns, metadata]
        digest.update(json.dumps(item, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (the tuned model's identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_feature_file(path: Path) -> dict | None:
    """A features file, or None when it is missing or unreadable (never unpickles code)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        print(f"{path}: unreadable ({type(error).__name__}: {error})")
        return None
    ok = isinstance(payload, dict) and payload.get("fingerprint", {}).get("format") == FEATURES_FORMAT
    return payload if ok else None


@dataclass
class Split:
    """Embeddings, statistics and ClipRecords of the same clips, row for row."""

    embeddings: np.ndarray  # [N, D] float32
    stats: np.ndarray  # [N, S] float32
    stat_names: list[str]
    records: list[ClipRecord]

    def rows(self, rows: Sequence[int]) -> Split:
        rows = list(rows)
        return Split(
            self.embeddings[rows], self.stats[rows], self.stat_names, [self.records[i] for i in rows]
        )

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class Features:
    """Both splits and what they were built from (tuned model, data folder, settings)."""

    normal: Split
    test: Split | None
    fingerprint: dict  # the normal embeddings' fingerprint

    @property
    def data_dir(self) -> str:
        return self.fingerprint["data_dir"]

    def embedding_maps(self) -> dict[str, dict]:
        """{"train"/"test": {"matrix", "records"}}: what report.py maps."""
        return {
            name: {"matrix": split.embeddings, "records": split.records}
            for name, split in (("train", self.normal), ("test", self.test))
            if split is not None
        }


def extract_command(embed_dir, fingerprint: dict | None) -> str:
    data = (fingerprint or {}).get("data_dir", "<data folder>")
    model = (fingerprint or {}).get("model_path", "<best_encoder_model.pth>")
    return f"python extract_embeddings.py --data_dir {data} --model_path {model} --embed_dir {embed_dir}"


def _disagreement(split: str, emb: dict, stats: dict, reference: dict) -> str | None:
    """Why a split's two files do not go with each other or with the normal embeddings."""
    fp, st = emb["fingerprint"], stats["fingerprint"]
    if [r["path"] for r in emb["records"]] != [r["path"] for r in stats["records"]] or fp["data"] != st[
        "data"
    ]:
        return f"the {split} embeddings and statistics describe different clips"
    for key, what in (
        ("model_sha256", "another tuned model"),
        ("settings", "other embedding settings"),
        ("precision", "another precision"),
        ("data_dir", "another data folder"),
    ):
        if fp.get(key) != reference.get(key):
            return f"the {split} embeddings come from {what} than the normal embeddings"
    return None


def _stale(fingerprint: dict, split: str) -> str | None:
    """Why the files no longer describe what is on disk (None when they do)."""
    data_dir, model_path = Path(fingerprint["data_dir"]), Path(fingerprint["model_path"])
    if data_dir.is_dir():
        try:
            if data_fingerprint(split_records(data_dir, split)) != fingerprint["data"]:
                return (
                    f"the {split} clips in {data_dir} changed (added, removed or rewritten) since extraction"
                )
        except (ValueError, FileNotFoundError) as error:
            return f"{data_dir}: {error}"
    if model_path.is_file() and file_sha256(model_path) != fingerprint["model_sha256"]:
        return f"{model_path} changed (retrained?) since extraction"
    return None


def load_features(embed_dir: str | os.PathLike, splits: Sequence[str] = ("train", "test")) -> Features:
    """Read and check the embedding and statistics files of ``splits`` in ``embed_dir``.

    Raises FileNotFoundError / ValueError naming the file, what is wrong and the command to run.
    """
    embed_dir = Path(embed_dir)
    loaded = {}
    for split in splits:
        emb_path, stats_path = feature_paths(embed_dir, split)
        emb, stats = read_feature_file(emb_path), read_feature_file(stats_path)
        for path, payload in ((emb_path, emb), (stats_path, stats)):
            if payload is None:
                reference = next((p["fingerprint"] for p, _ in loaded.values()), None)
                raise FileNotFoundError(
                    f"{path} is missing, unreadable or in an older format: run "
                    f"{extract_command(embed_dir, reference)}"
                )
        loaded[split] = (emb, stats)
    reference = loaded[splits[0]][0]["fingerprint"]
    for split, (emb, stats) in loaded.items():
        problem = _disagreement(split, emb, stats, reference) or _stale(emb["fingerprint"], split)
        if problem:
            raise ValueError(f"{embed_dir}: {problem}; run {extract_command(embed_dir, emb['fingerprint'])}")

    def to_split(pair) -> Split:
        emb, stats = pair
        return Split(
            emb["matrix"].float().numpy(),
            stats["matrix"].float().numpy(),
            list(stats["columns"]),
            [ClipRecord.from_dict(d) for d in emb["records"]],
        )

    return Features(
        to_split(loaded["train"]) if "train" in loaded else None,
        to_split(loaded["test"]) if "test" in loaded else None,
        reference,
    )


# -----------------------------------------------------------------------------
# one interface for every scorer


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
    normal: Split, clips: Split, scorer_for: Callable[[tuple[str, ...], Split], Scorer], by: str
) -> tuple[dict[str, float], dict[tuple[str, str], np.ndarray]]:
    """Scores of ``clips`` {path: score}, each by the scorer of its group, and the training normals'
    scores per (machine_type, section) for the decision thresholds.

    ``scorer_for(key, normals)`` returns a scorer fitted on that group's normals (fits it, or loads
    a saved one).
    """
    normal_groups = row_groups(normal.records, by)
    missing = sorted(set(row_groups(clips.records, by)) - set(normal_groups))
    if missing:
        raise ValueError(
            f"test clips of {', '.join('/'.join(k) for k in missing)} have no training normals "
            "to compare with"
        )
    scores: dict[str, float] = {}
    train_scores: dict[tuple[str, str], list[float]] = {}
    clip_groups = row_groups(clips.records, by)
    for key, rows in normal_groups.items():
        group_normal = normal.rows(rows)
        scorer = scorer_for(key, group_normal)
        for record, value in zip(group_normal.records, scorer.training_scores(group_normal)):
            train_scores.setdefault((record.machine_type, record.section), []).append(float(value))
        if key in clip_groups:
            group_clips = clips.rows(clip_groups[key])
            scores.update(zip((r.path for r in group_clips.records), map(float, scorer.score(group_clips))))
    return scores, {key: np.asarray(values) for key, values in train_scores.items()}


def expected_sections(normal: Split, test: Split) -> set[tuple[str, str]]:
    """Every (machine_type, section) the data holds."""
    return {(r.machine_type, r.section) for r in normal.records + test.records}


def write_scorer_results(
    features: Features, scores: dict[str, float], train_scores: dict, cfg, scorer: str, title: str
) -> dict:
    """metrics.write_results for a scorer script (its RESULTS_DIR, PLOTS, REPORT, DCASE_YEAR) over
    ``features``: official CSVs, tables, plots and report; returns the summary."""
    from asd import metrics
    from asd.cli import config_to_dict

    return metrics.write_results(
        scores,
        features.test.records,
        train_scores,
        cfg.results_dir,
        scorer=scorer,
        settings=config_to_dict(cfg),
        plots=cfg.plots,
        report=cfg.report,
        embeddings=features.embedding_maps(),
        title=title,
        expected=expected_sections(features.normal, features.test),
        year=cfg.dcase_year,
        data_dir=features.data_dir,
    )


# -----------------------------------------------------------------------------
# ensemble: a nearest-reference distance on embeddings + Mahalanobis distance on statistics
#
# Three backends give each query its distances to a bank's references; the branch's distance is
# the mean of the K smallest (K = 1: the nearest), the smaller over the domain banks:
#   knn      references = the bank's normals, distance = cosine distance;
#   kmeans   references = the bank's spherical k-means centres, distance = cosine distance;
#   density  references = the bank's normals, distance = cosine distance / the reference's density
#            (its mean cosine distance to its nearest other references).
# ``excluded[i, j]`` (bool [N, M]) leaves bank row j out for query i: the leave-one-out of the
# training scores (a normal and the SMOTE rows made from it are never its own references).

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
        self.mahalanobis = Mahalanobis(normal.stats)
        self.z_knn = standardiser(self._distance(normal.embeddings, leave_one_out=True))
        self.z_maha = standardiser(self.mahalanobis.distance(normal.stats))
        return self

    def _combine(self, distance: np.ndarray, stats: np.ndarray) -> np.ndarray:
        return self.w * self.z_knn(distance) + (1 - self.w) * self.z_maha(self.mahalanobis.distance(stats))

    def score(self, clips: Split) -> np.ndarray:
        return self._combine(self._distance(clips.embeddings, leave_one_out=False), clips.stats)

    def training_scores(self, normal: Split) -> np.ndarray:
        """The fitted normals' own scores (``normal`` must be the split given to ``fit``)."""
        if len(normal) != len(self.excluded):
            raise ValueError(
                f"training_scores needs the {len(self.excluded)} fitted normals, got {len(normal)} rows"
            )
        return self._combine(self._distance(normal.embeddings, leave_one_out=True), normal.stats)


# -----------------------------------------------------------------------------
# Deep SVDD (pyod), one per machine type

SVDD_FORMAT = "eat-lora-asd/deepsvdd-v1"


class DeepSVDDScorer:
    """A StandardScaler and a pyod DeepSVDD on the embeddings (with the statistics appended when
    ``use_stats``); score = squared distance to the hypersphere centre."""

    def __init__(
        self,
        use_stats: bool = False,
        hidden_neurons: Sequence[int] = (256, 64),
        epochs: int = 50,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        dropout: float = 0.0,
        weight_decay: float = 1e-6,
        seed: int = 0,
        threads: int = 1,
    ):
        self.settings = {
            "use_stats": use_stats,
            "hidden_neurons": list(hidden_neurons),
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "dropout": dropout,
            "weight_decay": weight_decay,
            "seed": seed,
            "threads": threads,
        }

    def inputs(self, clips: Split) -> np.ndarray:
        x = clips.embeddings.astype(np.float64)
        return (
            np.concatenate([x, clips.stats.astype(np.float64)], axis=1) if self.settings["use_stats"] else x
        )

    def _detector(self, n_features: int):
        from pyod.models.deep_svdd import DeepSVDD

        s = self.settings
        return DeepSVDD(
            n_features=n_features,
            hidden_neurons=list(s["hidden_neurons"]),
            epochs=s["epochs"],
            batch_size=s["batch_size"],
            learning_rate=s["learning_rate"],
            dropout_rate=s["dropout"],
            l2_regularizer=s["weight_decay"],
            preprocessing=False,
            verbose=0,
            random_state=s["seed"],
        )

    def fit(self, normal: Split) -> DeepSVDDScorer:
        from asd.runtime import seed_everything

        x = self.inputs(normal)
        if len(x) < 2:
            raise ValueError(f"Deep SVDD needs at least 2 training rows, got {len(x)}")
        seed_everything(self.settings["seed"])  # pyod seeds torch only; its shuffle uses numpy's generator
        scaler = StandardScaler().fit(x)
        self.mean, self.scale = scaler.mean_, scaler.scale_
        self.detector = self._detector(x.shape[1])
        previous = torch.get_num_threads()
        torch.set_num_threads(self.settings["threads"])  # a small network: more threads only add overhead
        try:
            self.detector.fit((x - self.mean) / self.scale)
        finally:
            torch.set_num_threads(previous)
        return self

    def score(self, clips: Split) -> np.ndarray:
        x = (self.inputs(clips) - self.mean) / self.scale
        return np.asarray(self.detector.decision_function(x), dtype=np.float64)

    def training_scores(self, normal: Split) -> np.ndarray:
        return self.score(normal)

    def state(self) -> dict:
        """Tensors and plain data only: loadable with torch.load(weights_only=True)."""
        return {
            "format": SVDD_FORMAT,
            "settings": self.settings,
            "n_features": len(self.mean),
            "mean": torch.from_numpy(self.mean),
            "scale": torch.from_numpy(self.scale),
            "network": self.detector.model_.state_dict(),
            "centre": self.detector.c_.detach().clone(),
        }

    @classmethod
    def from_state(cls, state: dict) -> DeepSVDDScorer:
        from pyod.models.deep_svdd import InnerDeepSVDD

        scorer = cls(**state["settings"])
        scorer.mean, scorer.scale = state["mean"].numpy(), state["scale"].numpy()
        detector = scorer._detector(state["n_features"])
        detector.model_ = InnerDeepSVDD(
            state["n_features"],
            use_ae=False,
            hidden_neurons=detector.hidden_neurons,
            hidden_activation=detector.hidden_activation,
            output_activation=detector.output_activation,
            dropout_rate=detector.dropout_rate,
            l2_regularizer=detector.l2_regularizer,
        )
        detector.model_.load_state_dict(state["network"])
        detector.c_ = state["centre"]
        scorer.detector = detector
        return scorer
