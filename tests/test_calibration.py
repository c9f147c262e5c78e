"""The domain-neutral score calibration (asd/score/calibration.py) and its wiring through score_by_group."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asd.data.dataset import ClipRecord
from asd.embed.embedding_files import Split
from asd.score.calibration import calibrate, neighbour_references
from asd.score.scoring import score_by_group
from asd.score.thresholds import threshold_info


def _two_domains(rng, n_source, n_target):
    """Embeddings of two domains apart from each other; target scores 3x the source's (gamma)."""
    centres = {"source": np.r_[5.0, np.zeros(7)], "target": np.r_[0.0, 5.0, np.zeros(6)]}
    domains = ["source"] * n_source + ["target"] * n_target
    embeddings = np.stack([centres[d] + rng.normal(size=8) for d in domains])
    scores = rng.gamma(4.0, 1.0, size=len(domains)) * np.where(np.array(domains) == "target", 3.0, 1.0)
    return embeddings, scores, np.array(domains)


def test_one_threshold_flags_the_nominal_share_of_both_domains_only_after_calibration():
    rng = np.random.default_rng(0)
    train_emb, train_scores, _ = _two_domains(rng, 300, 60)
    test_emb, test_scores, test_domains = _two_domains(rng, 400, 400)
    target = test_domains == "target"

    raw_threshold = threshold_info(train_scores)["threshold"]
    raw_target_rate = np.mean(test_scores[target] > raw_threshold)

    calibrated_train = calibrate(train_emb, train_scores, train_emb, train_scores, 5, exclude_self=True)
    calibrated_test = calibrate(train_emb, train_scores, test_emb, test_scores, 5, exclude_self=False)
    threshold = threshold_info(calibrated_train)["threshold"]
    rates = [np.mean(calibrated_test[of] > threshold) for of in (~target, target)]

    assert raw_target_rate > 0.4  # far above the nominal 10 %
    assert all(0.03 <= rate <= 0.2 for rate in rates), rates


def test_differences_where_scores_can_be_negative():
    train_emb = np.eye(4)
    train_scores = np.array([-1.0, 2.0, 3.0, 4.0])
    calibrated = calibrate(train_emb, train_scores, train_emb[:1], np.array([5.0]), 1, exclude_self=False)
    assert calibrated.tolist() == [6.0]  # 5 - (-1): its nearest neighbour is row 0


def test_a_training_normal_is_never_its_own_neighbour():
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1 coincide
    scores = np.array([1.0, 10.0, 100.0])
    references = neighbour_references(embeddings, scores, embeddings, 1, exclude_self=True)
    assert references[0] == 10.0 and references[1] == 1.0
    # NaN scores (no out-of-sample score) are never neighbours
    with_nan = neighbour_references(embeddings, np.array([1.0, np.nan, 100.0]), embeddings, 1, True)
    assert with_nan[0] == 100.0


class _MeanScorer:
    """Score = distance to the normals' mean (a stand-in for any scorer)."""

    def fit(self, normal):
        self.mean = normal.embeddings.mean(axis=0)
        return self

    def score(self, clips):
        return np.linalg.norm(clips.embeddings - self.mean, axis=1)

    def training_scores(self, normal):
        return self.score(normal)


def _split(embeddings, domains, split):
    records = [
        ClipRecord(
            f"/x/fan/{split}/section_00_{d}_{split}_normal_{i:04d}.wav", "fan", "00", d, split, "normal"
        )
        for i, d in enumerate(domains)
    ]
    n = len(records)
    return Split(np.asarray(embeddings, dtype=np.float32), np.zeros((n, 1), np.float32), ["a"], records)


def test_off_leaves_the_scores_byte_identical_and_neighbours_changes_them():
    rng = np.random.default_rng(1)
    train_emb, _, train_domains = _two_domains(rng, 20, 6)
    test_emb, _, test_domains = _two_domains(rng, 5, 5)
    normal, clips = _split(train_emb, train_domains, "train"), _split(test_emb, test_domains, "test")

    def factory(key, normals):
        return _MeanScorer().fit(normals)

    raw, raw_train = score_by_group(normal, clips, factory, "section")
    off, off_train = score_by_group(normal, clips, factory, "section", "off", 5)
    assert json.dumps(off) == json.dumps(raw)
    assert all(off_train[k].tobytes() == raw_train[k].tobytes() for k in raw_train)
    calibrated, calibrated_train = score_by_group(normal, clips, factory, "section", "neighbours", 3)
    assert set(calibrated) == set(raw) and calibrated != raw
    assert calibrated_train.domains == raw_train.domains
    with pytest.raises(ValueError, match="calibration must be one of"):
        score_by_group(normal, clips, factory, "section", "none")


def test_evaluate_writes_calibrated_scores_and_records_the_setting(tmp_path, write_features):
    import evaluate

    write_features(tmp_path, np.random.default_rng(11))
    common = ["--embed_dir", str(tmp_path), "--dcase_year", "2022+", "--plots", "false", "--report", "false"]
    summaries = {
        cal: evaluate.main([*common, "--results_dir", str(tmp_path / cal), "--calibration", cal])
        for cal in ("off", "neighbours")
    }
    assert summaries["neighbours"]["settings"]["calibration"] == "neighbours"
    score_file = "anomaly_score_fan_section_00_test.csv"
    off_text = (tmp_path / "off" / score_file).read_text()
    neighbours_text = (tmp_path / "neighbours" / score_file).read_text()
    assert off_text != neighbours_text
    aucs = [s["values"]["AUC (source)"] for s in summaries["neighbours"]["sections"]]
    assert min(aucs) > 0.9, aucs
