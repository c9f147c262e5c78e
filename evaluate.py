"""Scorer B: k-NN cosine distance on embeddings + Mahalanobis distance on signal statistics.

For each machine type and section:
  k-NN branch   mean cosine distance to the K nearest training normals, with separate source and
                target memory banks (the smaller distance is taken: target has few clips);
  stats branch  Mahalanobis distance of the statistics vector under a shrinkage (Ledoit-Wolf)
                covariance of the training normals' statistics;
each branch is standardised by its own distribution on the training normals (leave-one-out for
k-NN, so a clip is never its own neighbour), then  score = W * knn + (1 - W) * mahalanobis.

    python evaluate.py -k 3 --w 0.7
    python evaluate.py --sweep            # official score over a grid of K and W (analysis only)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from utils import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf

import metrics
from extract_embeddings import load_split_features
from utils import config_to_dict, parse_config, print_config

DATA_DIR = "dev_data"                      # DCASE folder: <machine>/{train,test}/*.wav
MODEL_PATH = "best_encoder_model.pth"      # tuned encoder (only needed when embeddings must be (re)built)
EMBED_DIR = "."                            # folder of normal_/test_ embeddings and stats (.pt)
RESULTS_DIR = "results/ensemble"           # official CSVs, summary, plots
K = 1                                      # neighbours of the k-NN branch (1 = nearest, the usual DCASE choice)
W = 0.5                                    # weight of the k-NN branch; 1 - W goes to Mahalanobis
SEPARATE_DOMAIN_BANKS = True               # source and target memory banks, smaller distance taken
SWEEP = False                              # print the official score over SWEEP_KS x SWEEP_WS, then stop
SWEEP_KS = [1, 2, 3, 5, 10]            # k values of the sweep
SWEEP_WS = [0.0, 0.25, 0.5, 0.75, 1.0] # w values of the sweep (0 = Mahalanobis only, 1 = k-NN only)
DEVICE = "auto"                            # for embedding clips when a cache has to be rebuilt
BATCH_SIZE = 16                            # idem
REBUILD = False                            # force re-embedding of the test clips
PLOTS = True                               # ROC curves and score histograms (PNG)
# allowed values of the constants above, checked by utils.parse_config
_LIMITS = {"K": (1, None), "W": (0.0, 1.0), "SWEEP_KS": (1, None), "SWEEP_WS": (0.0, 1.0),
           "BATCH_SIZE": (1, None)}

# -----------------------------------------------------------------------------
# k-NN on cosine distance


def nearest_similarities(queries: torch.Tensor, bank: torch.Tensor, k: int,
                         self_index: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarities of each query to its ``k`` most similar bank rows, [N, min(k, M)], descending.

    ``self_index[i]`` >= 0 marks query i as bank row ``self_index[i]``: that entry is excluded
    (leave-one-out) and shows up as -inf when the bank has no other row to offer.
    """
    q = F.normalize(queries.float(), dim=1)
    b = F.normalize(bank.float(), dim=1)
    sims = q @ b.T
    if self_index is not None:
        members = torch.nonzero(self_index >= 0).squeeze(1)
        sims[members, self_index[members]] = float("-inf")
    return sims.topk(min(k, b.shape[0]), dim=1).values


def distance_from_similarities(top: torch.Tensor, k: int) -> torch.Tensor:
    """Mean cosine distance over the first ``k`` neighbours (inf where none is valid)."""
    top = top[:, :k]
    valid = torch.isfinite(top)
    mean_sim = torch.where(valid, top, 0.0).sum(1) / valid.sum(1).clamp(min=1)
    return torch.where(valid.any(1), 1.0 - mean_sim, torch.tensor(float("inf")))


def knn_distance(queries: torch.Tensor, bank: torch.Tensor, k: int,
                 self_index: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cosine distance of each query to its k nearest bank rows (matrix product, no loops)."""
    return distance_from_similarities(nearest_similarities(queries, bank, k, self_index), k)


def knn_section_distances(train: torch.Tensor, train_domains: Sequence, test: torch.Tensor,
                          ks: Sequence[int], separate_domains: bool = True) -> tuple[dict, dict]:
    """k-NN distances of one section for every k in ``ks``: ({k: train[N]}, {k: test[M]}).

    One memory bank per domain (or one for all); each clip takes its smallest distance over the
    banks. Training clips are scored leave-one-out.
    """
    domains = list(train_domains) if separate_domains else [None] * len(train_domains)
    k_max = max(ks)
    train_d = {k: torch.full((len(train),), float("inf")) for k in ks}
    test_d = {k: torch.full((len(test),), float("inf")) for k in ks}
    for domain in sorted(set(domains), key=str):
        rows = torch.tensor([i for i, d in enumerate(domains) if d == domain])
        self_index = torch.full((len(train),), -1, dtype=torch.long)
        self_index[rows] = torch.arange(len(rows))
        top_train = nearest_similarities(train, train[rows], k_max, self_index)
        top_test = nearest_similarities(test, train[rows], k_max)
        for k in ks:
            train_d[k] = torch.minimum(train_d[k], distance_from_similarities(top_train, k))
            test_d[k] = torch.minimum(test_d[k], distance_from_similarities(top_test, k))
    return ({k: v.numpy().astype(np.float64) for k, v in train_d.items()},
            {k: v.numpy().astype(np.float64) for k, v in test_d.items()})


# -----------------------------------------------------------------------------
# Mahalanobis on statistics


@dataclass
class Mahalanobis:
    """Mahalanobis distance under a Ledoit-Wolf covariance of column-standardised training rows."""

    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray      # inverse shrunk covariance, in standardised units

    @classmethod
    def fit(cls, x: np.ndarray) -> "Mahalanobis":
        x = np.asarray(x, dtype=np.float64)
        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 1e-12, scale, 1.0)   # constant columns would divide by zero
        z = (x - mean) / scale
        precision = LedoitWolf(assume_centered=True).fit(z).precision_
        return cls(mean, scale, precision)

    def inverse_covariance(self) -> np.ndarray:
        """The precision matrix in the original units (for checks against scipy)."""
        return self.precision / np.outer(self.scale, self.scale)

    def distance(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, self.precision, z), 0.0))


# -----------------------------------------------------------------------------
# the ensemble


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-scores of both by the (finite) training distribution."""
    finite = train[np.isfinite(train)]
    mean = finite.mean() if finite.size else 0.0
    std = finite.std() if finite.size > 1 and finite.std() > 0 else 1.0
    return (train - mean) / std, (test - mean) / std


@dataclass
class SectionComponents:
    """Both branches' standardised scores for one machine type and section."""

    train_records: list
    test_records: list
    knn_train: dict            # k -> z-scores of the training normals (leave-one-out)
    knn_test: dict             # k -> z-scores of the test clips
    maha_train: np.ndarray
    maha_test: np.ndarray

    def combine(self, k: int, w: float) -> tuple[np.ndarray, np.ndarray]:
        return (w * self.knn_train[k] + (1 - w) * self.maha_train,
                w * self.knn_test[k] + (1 - w) * self.maha_test)


def section_components(normal_emb: dict, normal_stats: dict, test_emb: dict, test_stats: dict,
                       ks: Sequence[int], separate_domains: bool = True) -> dict[tuple[str, str], SectionComponents]:
    """Standardised k-NN and Mahalanobis scores per (machine_type, section) of the test set."""
    from dataset import ClipRecord

    train_records = [ClipRecord.from_dict(d) for d in normal_emb["records"]]
    test_records = [ClipRecord.from_dict(d) for d in test_emb["records"]]
    _check_aligned(normal_emb, normal_stats, "normal")
    _check_aligned(test_emb, test_stats, "test")
    train_groups = _row_groups(train_records)
    out = {}
    for key, test_rows in _row_groups(test_records).items():
        if key not in train_groups:
            raise ValueError(f"test clips of {key[0]} section {key[1]} have no training normals to compare with")
        train_rows = train_groups[key]
        knn_train, knn_test = knn_section_distances(
            normal_emb["matrix"][train_rows], [train_records[i].domain for i in train_rows],
            test_emb["matrix"][test_rows], ks, separate_domains)
        maha = Mahalanobis.fit(normal_stats["matrix"][train_rows].numpy())
        maha_train, maha_test = standardise(maha.distance(normal_stats["matrix"][train_rows].numpy()),
                                            maha.distance(test_stats["matrix"][test_rows].numpy()))
        z = {k: standardise(knn_train[k], knn_test[k]) for k in ks}
        out[key] = SectionComponents(
            [train_records[i] for i in train_rows], [test_records[i] for i in test_rows],
            {k: v[0] for k, v in z.items()}, {k: v[1] for k, v in z.items()}, maha_train, maha_test)
    return out


def _row_groups(records: Sequence) -> dict[tuple[str, str], list[int]]:
    groups: dict[tuple[str, str], list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault((record.machine_type, record.section), []).append(i)
    return dict(sorted(groups.items()))


def _check_aligned(emb: dict, stats: dict, split: str) -> None:
    if [r["path"] for r in emb["records"]] != [r["path"] for r in stats["records"]]:
        raise ValueError(f"{split} embeddings and statistics list different clips; rebuild them "
                         "with extract_embeddings.py")


def ensemble_scores(components: dict, k: int, w: float) -> tuple[dict[str, float], dict[tuple[str, str], np.ndarray]]:
    """Test scores {path: score} and training-normal scores per section for one (k, w)."""
    test_scores, train_scores = {}, {}
    for key, c in components.items():
        train, test = c.combine(k, w)
        train_scores[key] = train
        test_scores.update({r.path: float(s) for r, s in zip(c.test_records, test)})
    return test_scores, train_scores


def sweep(components: dict, test_records: list, ks: Sequence[int], ws: Sequence[float]) -> np.ndarray:
    """Official score for every (k, w); prints the grid. Choosing K and W on the test set overfits it:
    use this to understand the data, then fix K and W on development data."""
    grid = np.zeros((len(ks), len(ws)))
    for i, k in enumerate(ks):
        for j, w in enumerate(ws):
            scores, _ = ensemble_scores(components, k, w)
            grid[i, j] = metrics.compute_official(scores, test_records)[1]
    print("official score (harmonic mean) over K (rows) and W (columns); analysis only: "
          "picking K and W from this grid tunes them on the test set")
    print("K \\ W " + "".join(f"{w:>8.2f}" for w in ws))
    for k, row in zip(ks, grid):
        print(f"{k:<6d}" + "".join(f"{v:>8.4f}" for v in row))
    return grid


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(globals(), argv, description=__doc__, aliases={"-k": "K", "--w": "W"})
    print_config(cfg)
    if not 0.0 <= cfg.w <= 1.0:
        raise ValueError(f"W must lie in [0, 1], got {cfg.w}")
    if cfg.w in (0.0, 1.0) and not cfg.sweep:
        print(f"note: W={cfg.w} uses only the {'k-NN' if cfg.w == 1.0 else 'Mahalanobis'} branch")
    normal_emb, normal_stats = load_split_features("train", cfg.data_dir, cfg.model_path, cfg.embed_dir,
                                                   device=cfg.device, batch_size=cfg.batch_size)
    test_emb, test_stats = load_split_features("test", cfg.data_dir, cfg.model_path, cfg.embed_dir,
                                               device=cfg.device, batch_size=cfg.batch_size, rebuild=cfg.rebuild)
    ks = sorted(set(cfg.sweep_ks) | {cfg.k}) if cfg.sweep else [cfg.k]
    components = section_components(normal_emb, normal_stats, test_emb, test_stats, ks, cfg.separate_domain_banks)
    test_records = [r for c in components.values() for r in c.test_records]
    if cfg.sweep:
        grid = sweep(components, test_records, cfg.sweep_ks, cfg.sweep_ws)
        return {"sweep": grid.tolist(), "ks": cfg.sweep_ks, "ws": cfg.sweep_ws}
    scores, train_scores = ensemble_scores(components, cfg.k, cfg.w)
    title = f"ensemble: k-NN (K={cfg.k}) x {cfg.w} + Mahalanobis x {1 - cfg.w:g}"
    return metrics.write_results(scores, test_records, train_scores, cfg.results_dir, scorer="ensemble",
                                 settings=config_to_dict(cfg), plots=cfg.plots, title=title)


if __name__ == "__main__":
    main()
