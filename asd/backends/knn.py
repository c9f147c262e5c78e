"""k-NN back ends: the mean distance to the K nearest training normals, one memory bank per domain.

knn        banks = the normals (SEPARATE_DOMAIN_BANKS: a source and a target bank, the smaller distance
           taken; else one bank); distance METRIC on L2_NORMALISE'd rows. BANK_NORMALISE "loo" divides
           the distance to a bank by the bank's typical leave-one-out neighbour distance (the median over
           its normals of their mean distance to their K nearest other normals of the bank): a
           domain-calibrated score whose scale does not depend on the bank's density, so one threshold
           fits both domains; "off" keeps the raw distance.
smote_knn  knn with the target bank grown first by imbalanced-learn's SMOTE(sampling_strategy=SMOTE_RATIO,
           k_neighbors=SMOTE_NEIGHBOURS, random_state=SEED) on the (normalised) training rows, the new rows
           renormalised (ASDKit's smote_knn with K 1, metric euclidean, per machine type).
Training scores: leave-one-out (a normal is never its own reference); with SMOTE out of fold (its new
rows are made from the normals).
"""

from __future__ import annotations

import numpy as np

from asd.backends.base import METRICS, Backend, distances, l2_normalise, mean_of_nearest
from asd.embed.embedding_files import Split

BANK_NORMALISATIONS = ("off", "loo")
_MIN_SCALE = 1e-12  # a bank of duplicates would have typical distance 0 and divide by it


def count_new_rows(n_majority: int, n_minority: int, ratio: float) -> int:
    """imbalanced-learn's count for a float sampling_strategy: int(ratio * n_majority - n_minority)
    (Python float arithmetic, truncated); ValueError when that is not positive (imbalanced-learn
    refuses it too, and ASDKit's scoring stops there)."""
    count = int(n_majority * ratio - n_minority)
    if count <= 0:
        raise ValueError(
            f"SMOTE: {n_minority} target vs {n_majority} source rows leave int({ratio} * {n_majority} - "
            f"{n_minority}) = {count} rows to make; imbalanced-learn needs a positive count"
        )
    return count


def smote_rows(
    source: np.ndarray, target: np.ndarray, ratio: float, neighbours: int, seed: int
) -> np.ndarray:
    """imbalanced-learn's SMOTE rows made from the target rows, both domains passed to fit_resample and
    the target domain the minority, as ASDKit calls it."""
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


def knn_distance(
    queries: np.ndarray, bank: np.ndarray, k: int, metric: str = "cosine", itself: np.ndarray | None = None
) -> np.ndarray:
    """Mean distance of each query to its k nearest bank rows; ``itself[i]`` (>= 0) is a bank row query i
    must not count (its leave-one-out); inf where no row is left."""
    matrix = distances(queries, bank, metric)
    if itself is not None:
        rows = np.flatnonzero(itself >= 0)
        matrix[rows, itself[rows]] = np.inf
    return mean_of_nearest(matrix, k)


class Knn(Backend):
    """Mean distance to the K nearest normals of each domain bank, the smallest over the banks."""

    SETTINGS = (
        "k",
        "metric",
        "l2_normalise",
        "separate_domain_banks",
        "bank_normalise",
        "group_by",
        "folds",
        "seed",
    )

    def __init__(
        self,
        k: int = 1,
        metric: str = "cosine",
        l2_normalise: bool = True,
        separate_domain_banks: bool = True,
        bank_normalise: str = "off",
        smote_ratio: float = 0.0,
        smote_neighbours: int = 2,
        group_by: str = "section",
        folds: int = 5,
        seed: int = 0,
    ):
        super().__init__(group_by, folds, seed)
        if k < 1 or smote_neighbours < 1:
            raise ValueError(f"K and SMOTE_NEIGHBOURS must be at least 1, got {k} and {smote_neighbours}")
        if metric not in METRICS:
            raise ValueError(f"METRIC must be one of {', '.join(METRICS)}, got {metric!r}")
        if bank_normalise not in BANK_NORMALISATIONS:
            raise ValueError(
                f"BANK_NORMALISE must be one of {', '.join(BANK_NORMALISATIONS)}, got {bank_normalise!r}"
            )
        if smote_ratio < 0:
            raise ValueError(f"SMOTE_RATIO must be >= 0, got {smote_ratio}")
        self.k, self.metric, self.normalise = k, metric, l2_normalise
        self.separate, self.bank_normalise = separate_domain_banks, bank_normalise
        self.smote_ratio, self.smote_neighbours = smote_ratio, smote_neighbours

    def describe(self) -> str:
        banks = "source and target banks" if self.separate else "one bank"
        smote = f", SMOTE {self.smote_ratio:g}" if self.smote_ratio else ""
        return f"k-NN (K={self.k}, {self.metric}, {banks}{smote}, bank scale {self.bank_normalise})"

    def _rows(self, embeddings: np.ndarray) -> np.ndarray:
        return l2_normalise(embeddings) if self.normalise else np.asarray(embeddings)

    def _typical(self, bank: np.ndarray) -> float:
        """The median over the bank's rows of their mean distance to their K nearest other rows."""
        if len(bank) < 2:
            return float("nan")
        itself = np.arange(len(bank))
        return max(float(np.median(knn_distance(bank, bank, self.k, self.metric, itself))), _MIN_SCALE)

    def _smote(self, rows: np.ndarray, is_target: np.ndarray, normal: Split) -> np.ndarray:
        try:
            new = smote_rows(
                rows[~is_target], rows[is_target], self.smote_ratio, self.smote_neighbours, self.seed
            )
        except ValueError as error:
            self.say(normal, f"no SMOTE rows: {error}")
            return rows[:0]
        return self._rows(new)

    def fit(self, normal: Split) -> Knn:
        rows = self._rows(normal.embeddings)
        is_target = np.array([r.domain == "target" for r in normal.records], dtype=bool)
        members = {"source": ~is_target, "target": is_target} if self.separate else {"all": is_target | True}
        new = self._smote(rows, is_target, normal) if self.smote_ratio > 0 else rows[:0]
        self.banks = []  # (name, the normals' row numbers, bank rows: the normals then any SMOTE rows, scale)
        for name, member in members.items():
            index = np.flatnonzero(member)
            if len(index) == 0:
                continue
            bank = rows[index]
            scale = self._typical(bank) if self.bank_normalise == "loo" else 1.0
            if name != "source" and len(new):
                bank = np.concatenate([bank, new.astype(bank.dtype)])
            self.banks.append((name, index, bank, scale))
        self._check_banks(normal)
        self.n_fitted = len(normal)
        return self

    def _check_banks(self, normal: Split) -> None:
        """Say when K exceeds a bank; a bank too small for its own scale takes the others' median."""
        for name, _, bank, _ in self.banks:
            if self.k > len(bank):
                self.say(
                    normal, f"K {self.k} > the {name} bank's {len(bank)} rows: the mean over all of them"
                )
        scales = [s for *_, s in self.banks if np.isfinite(s)]
        for i, (name, index, bank, scale) in enumerate(self.banks):
            if not np.isfinite(scale):
                fill = float(np.median(scales)) if scales else 1.0
                self.say(
                    normal, f"the {name} bank has {len(index)} normal: its scale is the others' {fill:.4g}"
                )
                self.banks[i] = (name, index, bank, fill)

    def score(self, clips: Split) -> np.ndarray:
        return self._distance(self._rows(clips.embeddings), leave_one_out=False)

    def _distance(self, queries: np.ndarray, leave_one_out: bool) -> np.ndarray:
        best = np.full(len(queries), np.inf)
        for _, index, bank, scale in self.banks:
            itself = None
            if leave_one_out:
                itself = np.full(len(queries), -1)
                itself[index] = np.arange(len(index))
            best = np.minimum(best, knn_distance(queries, bank, self.k, self.metric, itself) / scale)
        return best

    def training_scores(self, normal: Split) -> np.ndarray:
        """Leave-one-out distances of the fitted normals (``normal`` must be the split given to fit);
        out of fold with SMOTE."""
        if len(normal) != self.n_fitted:
            raise ValueError(
                f"training_scores needs the {self.n_fitted} fitted normals, got {len(normal)} rows"
            )
        if self.smote_ratio > 0:
            return super().training_scores(normal)
        return self._distance(self._rows(normal.embeddings), leave_one_out=True)


class SmoteKnn(Knn):
    """knn with the target bank grown by SMOTE (SMOTE_RATIO, SMOTE_NEIGHBOURS)."""

    SETTINGS = Knn.SETTINGS + ("smote_ratio", "smote_neighbours")
