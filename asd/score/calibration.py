"""Domain-neutral calibration of any scorer's scores, from the training normals only.

A clip's raw score is compared with a reference: the mean out-of-sample score of its ``k`` nearest
training normals of the same section in embedding space (cosine distance; a training normal never
counts as its own neighbour). A target-domain clip's neighbours are mostly target normals, whose scores
run higher, so the comparison puts both domains on one scale and one threshold per section serves a
clip of unknown domain.

The comparison is the ratio raw / reference where every finite training score of the section is > 0,
else (standardised scores that can be <= 0, such as the ensemble's) the difference raw - reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

CALIBRATIONS = ("neighbours", "off")  # neighbours: the calibration above | off: the raw scores


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def neighbour_references(
    train_embeddings: np.ndarray,
    train_scores: np.ndarray,
    query_embeddings: np.ndarray,
    k: int,
    exclude_self: bool,
) -> np.ndarray:
    """The mean score of each query's ``k`` nearest training normals with a finite score (cosine
    distance); ``exclude_self``: the queries are the training normals, row for row, and none is its own
    neighbour. NaN for every query where no neighbour is available."""
    scores = np.asarray(train_scores, dtype=np.float64)
    finite = np.isfinite(scores)
    available = int(finite.sum()) - int(exclude_self)
    if available < 1:
        return np.full(len(query_embeddings), np.nan)
    distances = 1.0 - _unit_rows(query_embeddings) @ _unit_rows(train_embeddings).T
    distances[:, ~finite] = np.inf
    if exclude_self:
        np.fill_diagonal(distances, np.inf)
    count = min(k, available)
    nearest = np.argpartition(distances, count - 1, axis=1)[:, :count]
    return scores[nearest].mean(axis=1)


def calibrate(
    train_embeddings: np.ndarray,
    train_scores: np.ndarray,
    query_embeddings: np.ndarray,
    query_scores: np.ndarray,
    k: int,
    exclude_self: bool,
) -> np.ndarray:
    """``query_scores`` relative to their neighbour references (ratio where every finite training score
    is > 0, else difference; see the module docstring). With no neighbour to compare with (a section of
    one training normal) the raw scores are returned."""
    if k < 1:
        raise ValueError(f"the calibration needs k >= 1 neighbours, got {k}")
    raw = np.asarray(query_scores, dtype=np.float64)
    reference = neighbour_references(train_embeddings, train_scores, query_embeddings, k, exclude_self)
    if np.isnan(reference).all():
        return raw
    train = np.asarray(train_scores, dtype=np.float64)
    positive = bool(np.all(train[np.isfinite(train)] > 0))
    return raw / reference if positive else raw - reference


def calibrate_sections(
    normal_embeddings: np.ndarray,
    train_rows: Mapping[tuple[str, str], Sequence[int]],
    train_scores: Mapping[tuple[str, str], np.ndarray],
    clip_embeddings: np.ndarray,
    clip_rows: Mapping[tuple[str, str], Sequence[int]],
    clip_scores: np.ndarray,
    k: int,
) -> tuple[dict[tuple[str, str], np.ndarray], np.ndarray]:
    """Calibrate section by section: ``train_rows``/``clip_rows`` {(machine_type, section): rows of
    ``normal_embeddings``/``clip_embeddings``}, in the order of ``train_scores[section]``; ``clip_scores``
    the clips' raw scores, row for row. Returns (calibrated train scores per section, calibrated clip
    scores)."""
    calibrated_train = {}
    calibrated_clips = np.asarray(clip_scores, dtype=np.float64).copy()
    for key, rows in train_rows.items():
        embeddings, scores = normal_embeddings[list(rows)], np.asarray(train_scores[key], dtype=np.float64)
        calibrated_train[key] = calibrate(embeddings, scores, embeddings, scores, k, exclude_self=True)
        queries = list(clip_rows.get(key, ()))
        if queries:
            calibrated_clips[queries] = calibrate(
                embeddings, scores, clip_embeddings[queries], calibrated_clips[queries], k, exclude_self=False
            )
    return calibrated_train, calibrated_clips


def recorded_calibration(settings: Mapping) -> dict:
    """score_by_group's calibration arguments as an evaluation's settings (summary.json) record them;
    a run evaluated before calibration existed records none, and its scores were not calibrated."""
    return {key: settings[key] for key in ("calibration", "calibration_k") if key in settings}
