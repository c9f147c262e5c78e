"""Scoring building blocks: k-NN against brute force, Mahalanobis against scipy, Deep SVDD fitting."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cosine, mahalanobis

import evaluate
import train_deepSVDD


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
        ours = evaluate.knn_distance(torch.tensor(queries), torch.tensor(bank), k).numpy()
        np.testing.assert_allclose(ours, _brute_knn(queries, bank, k), atol=1e-5)


def test_knn_leave_one_out_excludes_only_the_clip_itself():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(12, 8))
    bank[5] = bank[4] * 2.0                   # an exact (cosine) duplicate of row 4 stays a neighbour
    self_index = torch.arange(12)
    ours = evaluate.knn_distance(torch.tensor(bank), torch.tensor(bank), 2, self_index).numpy()
    np.testing.assert_allclose(ours, _brute_knn(bank, bank, 2, skip=list(range(12))), atol=1e-5)
    assert ours[4] == pytest.approx(_brute_knn(bank[4:5], np.delete(bank, 4, axis=0), 2)[0], abs=1e-5)
    nearest = evaluate.knn_distance(torch.tensor(bank), torch.tensor(bank), 1, self_index).numpy()
    assert nearest[4] == pytest.approx(0.0, abs=1e-6) and nearest[5] == pytest.approx(0.0, abs=1e-6)
    single = evaluate.knn_distance(torch.tensor(bank[:1]), torch.tensor(bank[:1]), 1, torch.tensor([0]))
    assert torch.isinf(single).all()          # nothing left to compare with


def test_section_distances_use_separate_domain_banks_and_take_the_smaller():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(30, 8))
    domains = ["source"] * 25 + ["target"] * 5
    test = rng.normal(size=(6, 8))
    train_d, test_d = evaluate.knn_section_distances(torch.tensor(train), domains, torch.tensor(test), [1, 3])
    src, tgt = train[:25], train[25:]
    for k in (1, 3):
        expected_test = np.minimum(_brute_knn(test, src, k), _brute_knn(test, tgt, k))
        np.testing.assert_allclose(test_d[k], expected_test, atol=1e-5)
        loo_src = np.minimum(_brute_knn(src, src, k, list(range(25))), _brute_knn(src, tgt, k))
        loo_tgt = np.minimum(_brute_knn(tgt, src, k), _brute_knn(tgt, tgt, k, list(range(5))))
        np.testing.assert_allclose(train_d[k], np.concatenate([loo_src, loo_tgt]), atol=1e-5)
    pooled_train, pooled_test = evaluate.knn_section_distances(
        torch.tensor(train), domains, torch.tensor(test), [3], separate_domains=False)
    np.testing.assert_allclose(pooled_test[3], _brute_knn(test, train, 3), atol=1e-5)


def test_mahalanobis_matches_scipy_with_the_same_covariance():
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(5, 5)) * [1, 10, 0.1, 3, 100]
    train = rng.normal(size=(200, 5)) @ mixing + [0, 5, -2, 1, 50]
    test = rng.normal(size=(10, 5)) @ mixing * 1.5
    maha = evaluate.Mahalanobis.fit(train)
    vi = maha.inverse_covariance()
    expected = [mahalanobis(x, maha.mean, vi) for x in test]
    np.testing.assert_allclose(maha.distance(test), expected, rtol=1e-6)
    # shrinkage keeps a constant column and more columns than rows well defined
    wide = np.concatenate([rng.normal(size=(6, 20)), np.ones((6, 1))], axis=1)
    assert np.isfinite(evaluate.Mahalanobis.fit(wide).distance(wide)).all()


def test_standardise_uses_the_training_distribution():
    train, test = np.array([1.0, 2.0, 3.0, np.inf]), np.array([2.0, 5.0])
    z_train, z_test = evaluate.standardise(train, test)
    assert z_test == pytest.approx([0.0, 3.0 / np.std([1, 2, 3])])
    assert z_train[:3].mean() == pytest.approx(0.0)


def test_deep_svdd_fitting_lowers_training_distances():
    """pyod < 3.6.3 never trained; epochs=0 gives the same untrained network to compare with."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 24)) @ rng.normal(size=(24, 24)) + 3.0
    settings = dict(hidden_neurons=[32, 8], batch_size=50, learning_rate=1e-3, dropout=0.0, seed=0)
    scaler0, untrained = train_deepSVDD.fit_svdd(x, epochs=0, **settings)
    scaler, trained = train_deepSVDD.fit_svdd(x, epochs=20, **settings)
    assert torch.equal(untrained.c_, trained.c_)                     # same start, same centre
    before = train_deepSVDD.svdd_scores(scaler0, untrained, x).mean()
    after = train_deepSVDD.svdd_scores(scaler, trained, x).mean()
    print(f"mean training distance: untrained {before:.4g}, trained {after:.4g}")
    assert after < 0.5 * before
    outliers = x[:20] + 25.0 * rng.normal(size=(20, 24))
    assert train_deepSVDD.svdd_scores(scaler, trained, outliers).mean() > after
