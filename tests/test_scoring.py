"""scoring.py: k-NN against brute force, Mahalanobis against scipy, Deep SVDD fitting and saving."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cosine, mahalanobis

import scoring
from dataset import ClipRecord


def _brute_knn(queries: np.ndarray, bank: np.ndarray, k: int, skip: list[int | None] | None = None) -> np.ndarray:
    """Mean cosine distance to the k nearest bank rows, one pair at a time."""
    out = []
    for i, q in enumerate(queries):
        d = sorted(cosine(q, b) for j, b in enumerate(bank) if skip is None or skip[i] != j)
        out.append(np.mean(d[:k]) if d else np.inf)
    return np.array(out)


def test_knn_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(40, 16)), rng.normal(size=(7, 16))
    for k in (1, 3, 40, 100):      # k beyond the bank uses the whole bank
        ours = scoring.knn_distance(torch.tensor(queries), torch.tensor(bank), k).numpy()
        np.testing.assert_allclose(ours, _brute_knn(queries, bank, k), atol=1e-5)


def test_knn_leave_one_out_excludes_only_the_clip_itself():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(12, 8))
    bank[5] = bank[4] * 2.0                   # an exact (cosine) duplicate of row 4 stays a neighbour
    self_index = torch.arange(12)
    ours = scoring.knn_distance(torch.tensor(bank), torch.tensor(bank), 2, self_index).numpy()
    np.testing.assert_allclose(ours, _brute_knn(bank, bank, 2, skip=list(range(12))), atol=1e-5)
    assert ours[4] == pytest.approx(_brute_knn(bank[4:5], np.delete(bank, 4, axis=0), 2)[0], abs=1e-5)
    nearest = scoring.knn_distance(torch.tensor(bank), torch.tensor(bank), 1, self_index).numpy()
    assert nearest[4] == pytest.approx(0.0, abs=1e-6) and nearest[5] == pytest.approx(0.0, abs=1e-6)
    single = scoring.knn_distance(torch.tensor(bank[:1]), torch.tensor(bank[:1]), 1, torch.tensor([0]))
    assert torch.isinf(single).all()          # nothing left to compare with


def _split(embeddings: np.ndarray, domains: list, stats: np.ndarray | None = None) -> scoring.Split:
    records = [ClipRecord(f"/d/fan/train/{i}.wav", "fan", "00", d, "train", "normal") for i, d in enumerate(domains)]
    stats = np.zeros((len(domains), 3)) if stats is None else stats
    return scoring.Split(embeddings.astype(np.float32), stats.astype(np.float32), ["a", "b", "c"], records)


def test_ensemble_uses_separate_domain_banks_and_takes_the_smaller():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(30, 8)).astype(np.float32)
    domains = ["source"] * 25 + ["target"] * 5
    test = rng.normal(size=(6, 8)).astype(np.float32)
    normal, clips = _split(train, domains), _split(test, ["source"] * 6)
    src, tgt = train[:25], train[25:]
    for k in (1, 3):
        scorer = scoring.KnnMahalanobis(k, w=1.0).fit(normal)       # k-NN branch alone
        loo_src = np.minimum(_brute_knn(src, src, k, list(range(25))), _brute_knn(src, tgt, k))
        loo_tgt = np.minimum(_brute_knn(tgt, src, k), _brute_knn(tgt, tgt, k, list(range(5))))
        loo = np.concatenate([loo_src, loo_tgt])
        z = lambda d: (d - loo.mean()) / loo.std()
        np.testing.assert_allclose(scorer.training_scores(normal), z(loo), atol=1e-4)
        expected = np.minimum(_brute_knn(test, src, k), _brute_knn(test, tgt, k))
        np.testing.assert_allclose(scorer.score(clips), z(expected), atol=1e-4)
    pooled = scoring.KnnMahalanobis(3, w=1.0, separate_domain_banks=False).fit(normal)
    pooled_loo = _brute_knn(train, train, 3, list(range(30)))
    np.testing.assert_allclose(pooled.score(clips), (_brute_knn(test, train, 3) - pooled_loo.mean()) / pooled_loo.std(),
                               atol=1e-4)


def test_ensemble_mixes_both_branches_by_w():
    rng = np.random.default_rng(5)
    normal = _split(rng.normal(size=(40, 8)), ["source"] * 40, rng.normal(size=(40, 3)))
    clips = _split(rng.normal(size=(5, 8)), ["source"] * 5, rng.normal(size=(5, 3)) * 3)
    knn = scoring.KnnMahalanobis(2, w=1.0).fit(normal).score(clips)
    maha = scoring.KnnMahalanobis(2, w=0.0).fit(normal).score(clips)
    np.testing.assert_allclose(scoring.KnnMahalanobis(2, w=0.3).fit(normal).score(clips), 0.3 * knn + 0.7 * maha)


def test_score_by_group_fits_one_scorer_per_group_and_names_groups_without_normals():
    rng = np.random.default_rng(6)
    records = [ClipRecord(f"/d/{m}/train/{i}.wav", m, "00", "source", "train", "normal")
               for m in ("fan", "pump") for i in range(5)]
    normal = scoring.Split(rng.normal(size=(10, 4)).astype(np.float32), np.zeros((10, 1), np.float32), ["x"], records)
    fitted = []

    class Mean:
        def fit(self, split):
            fitted.append({r.machine_type for r in split.records})
            self.centre = split.embeddings.mean(0)
            return self

        def score(self, clips):
            return np.linalg.norm(clips.embeddings - self.centre, axis=1)

        training_scores = score

    scores, train = scoring.score_by_group(normal, normal, lambda key, split: Mean().fit(split), "machine_type")
    assert fitted == [{"fan"}, {"pump"}] and len(scores) == 10
    assert scores[records[0].path] == pytest.approx(np.linalg.norm(normal.embeddings[0] - normal.embeddings[:5].mean(0)))
    assert sorted(train) == [("fan", "00"), ("pump", "00")] and len(train[("fan", "00")]) == 5
    lonely = scoring.Split(normal.embeddings[:1], normal.stats[:1], ["x"],
                           [ClipRecord("/d/valve/test/a.wav", "valve", "00", "source", "test", "normal")])
    with pytest.raises(ValueError, match="valve/00 have no training normals"):
        scoring.score_by_group(normal, lonely, lambda key, split: Mean().fit(split), "section")


def test_mahalanobis_matches_scipy_with_the_same_covariance():
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(5, 5)) * [1, 10, 0.1, 3, 100]
    train = rng.normal(size=(200, 5)) @ mixing + [0, 5, -2, 1, 50]
    test = rng.normal(size=(10, 5)) @ mixing * 1.5
    maha = scoring.Mahalanobis(train)
    vi = maha.inverse_covariance()
    expected = [mahalanobis(x, maha.mean, vi) for x in test]
    np.testing.assert_allclose(maha.distance(test), expected, rtol=1e-6)
    # shrinkage keeps a constant column and more columns than rows well defined
    wide = np.concatenate([rng.normal(size=(6, 20)), np.ones((6, 1))], axis=1)
    assert np.isfinite(scoring.Mahalanobis(wide).distance(wide)).all()


def test_standardiser_uses_the_training_distribution():
    z = scoring.standardiser(np.array([1.0, 2.0, 3.0, np.inf]))
    assert z(np.array([2.0, 5.0])) == pytest.approx([0.0, 3.0 / np.std([1, 2, 3])])


def test_deep_svdd_fitting_lowers_training_distances_and_survives_saving(tmp_path):
    """pyod < 3.6.3 never trained; epochs=0 gives the same untrained network to compare with."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 24)) @ rng.normal(size=(24, 24)) + 3.0
    normal = _split(x, ["source"] * 200)
    settings = dict(hidden_neurons=[32, 8], batch_size=50, learning_rate=1e-3, dropout=0.0, seed=0)
    untrained = scoring.DeepSVDDScorer(epochs=0, **settings).fit(normal)
    trained = scoring.DeepSVDDScorer(epochs=20, **settings).fit(normal)
    assert torch.equal(untrained.detector.c_, trained.detector.c_)          # same start, same centre
    before, after = untrained.training_scores(normal).mean(), trained.training_scores(normal).mean()
    print(f"mean training distance: untrained {before:.4g}, trained {after:.4g}")
    assert after < 0.5 * before
    outliers = _split(x[:20] + 25.0 * rng.normal(size=(20, 24)), ["source"] * 20)
    assert trained.score(outliers).mean() > after
    # saved as tensors and plain data, read back with weights_only=True: the same scores
    torch.save(trained.state(), tmp_path / "svdd.pt")
    loaded = scoring.DeepSVDDScorer.from_state(torch.load(tmp_path / "svdd.pt", weights_only=True))
    np.testing.assert_allclose(loaded.score(outliers), trained.score(outliers), rtol=1e-6)
