"""The statistics back end: Mahalanobis distance of the signal-statistics vectors (the ensemble's
second branch).

MAHALANOBIS per_domain (the DCASE baseline's "selective Mahalanobis"): one Ledoit-Wolf fit per domain,
the smaller distance taken; a domain with fewer than MIN_DOMAIN_STATS normals gets no fit of its own and
the fit over all normals takes its place (said on screen). pooled: one fit over all normals. Data
without two domains always gets the one pooled fit. Training scores: out of fold over STATS_FOLDS refits
(0 = in sample).
"""

from __future__ import annotations

import numpy as np

from asd.backends.base import Backend
from asd.embed.embedding_files import Split
from asd.score.scoring import out_of_fold_scores

MAHALANOBIS_FITS = ("per_domain", "pooled")


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


class StatsMahalanobis(Backend):
    """Mahalanobis distance of the statistics vectors, per domain or pooled."""

    SETTINGS = ("mahalanobis", "min_domain_stats", "stats_folds", "seed")
    EMBEDDING = False

    def __init__(
        self, mahalanobis: str = "per_domain", min_domain_stats: int = 5, stats_folds: int = 0, seed: int = 0
    ):
        super().__init__("section", max(stats_folds, 2), seed)
        if mahalanobis not in MAHALANOBIS_FITS:
            raise ValueError(f"MAHALANOBIS must be one of {', '.join(MAHALANOBIS_FITS)}, got {mahalanobis!r}")
        if min_domain_stats < 2:
            raise ValueError(f"MIN_DOMAIN_STATS must be at least 2, got {min_domain_stats}")
        if stats_folds == 1 or stats_folds < 0:
            raise ValueError(f"STATS_FOLDS must be 0 (in-sample) or at least 2, got {stats_folds}")
        self.fit_kind, self.min_count, self.stats_folds = mahalanobis, min_domain_stats, stats_folds

    def describe(self) -> str:
        return f"Mahalanobis of the statistics ({self.fit_kind})"

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
        for note in self.notes:
            self.say(normal, note)
        return self

    def score(self, clips: Split) -> np.ndarray:
        return np.min([model.distance(clips.stats) for model in self.models], axis=0)

    def training_scores(self, normal: Split) -> np.ndarray:
        """Out of fold over STATS_FOLDS refits (each normal measured by a fit without it, as a test clip
        is); STATS_FOLDS 0: in sample."""
        if not self.stats_folds:
            return self.score(normal)
        return out_of_fold_scores(self.refit, normal, self.stats_folds, self.seed)
