"""asd/backends/, asd/score/scoring.py: the back ends (k-NN, SMOTE k-NN, k-means, rescale) against brute force,
Mahalanobis against scipy, the ensemble's mix, evaluate.py with each back end, Deep SVDD fitting and saving."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cosine, mahalanobis

from asd.backends.ensemble import Ensemble, standardiser
from asd.backends.kmeans import KMeansBackend
from asd.backends.knn import Knn, SmoteKnn, knn_distance
from asd.backends.mahalanobis import Mahalanobis, StatsMahalanobis
from asd.backends.registry import backend_factory
from asd.backends.rescale import Rescale
from asd.data.names import ClipRecord
from asd.embed import embedding_files
from asd.score import scoring, svdd
from asd.score.calibration import recorded_calibration


def _brute_knn(
    queries: np.ndarray, bank: np.ndarray, k: int, skip: list[int | None] | None = None
) -> np.ndarray:
    """Mean cosine distance to the k nearest bank rows, one pair at a time."""
    out = []
    for i, q in enumerate(queries):
        d = sorted(cosine(q, b) for j, b in enumerate(bank) if skip is None or skip[i] != j)
        out.append(np.mean(d[:k]) if d else np.inf)
    return np.array(out)


def test_knn_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(40, 16)), rng.normal(size=(7, 16))
    for k in (1, 3, 40, 100):  # k beyond the bank uses the whole bank
        ours = knn_distance(queries, bank, k)
        np.testing.assert_allclose(ours, _brute_knn(queries, bank, k), atol=1e-5)


def test_knn_leave_one_out_excludes_only_the_clip_itself():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(12, 8))
    bank[5] = bank[4] * 2.0  # an exact (cosine) duplicate of row 4 stays a neighbour
    itself = np.arange(12)
    ours = knn_distance(bank, bank, 2, itself=itself)
    np.testing.assert_allclose(ours, _brute_knn(bank, bank, 2, skip=list(range(12))), atol=1e-5)
    assert ours[4] == pytest.approx(_brute_knn(bank[4:5], np.delete(bank, 4, axis=0), 2)[0], abs=1e-5)
    nearest = knn_distance(bank, bank, 1, itself=itself)
    assert nearest[4] == pytest.approx(0.0, abs=1e-6) and nearest[5] == pytest.approx(0.0, abs=1e-6)
    single = knn_distance(bank[:1], bank[:1], 1, itself=np.array([0]))
    assert np.isinf(single).all()  # nothing left to compare with


def _split(embeddings: np.ndarray, domains: list, stats: np.ndarray | None = None) -> embedding_files.Split:
    records = [
        ClipRecord(f"/d/fan/train/{i}.wav", "fan", "00", d, "train", "normal") for i, d in enumerate(domains)
    ]
    stats = np.zeros((len(domains), 3)) if stats is None else stats
    return embedding_files.Split(
        embeddings.astype(np.float32), stats.astype(np.float32), ["a", "b", "c"], records
    )


def _ensemble(w: float = 0.5, branch=None, **stats) -> Ensemble:
    return Ensemble(branch or Knn(), StatsMahalanobis(**stats), w)


def test_ensemble_uses_separate_domain_banks_and_takes_the_smaller():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(30, 8)).astype(np.float32)
    domains = ["source"] * 25 + ["target"] * 5
    test = rng.normal(size=(6, 8)).astype(np.float32)
    normal, clips = _split(train, domains), _split(test, ["source"] * 6)
    src, tgt = train[:25], train[25:]
    for k in (1, 3):
        scorer = _ensemble(1.0, Knn(k)).fit(normal)  # k-NN branch alone
        loo_src = np.minimum(_brute_knn(src, src, k, list(range(25))), _brute_knn(src, tgt, k))
        loo_tgt = np.minimum(_brute_knn(tgt, src, k), _brute_knn(tgt, tgt, k, list(range(5))))
        loo = np.concatenate([loo_src, loo_tgt])
        z = lambda d, loo=loo: (d - loo.mean()) / loo.std()
        np.testing.assert_allclose(scorer.training_scores(normal), z(loo), atol=1e-4)
        expected = np.minimum(_brute_knn(test, src, k), _brute_knn(test, tgt, k))
        np.testing.assert_allclose(scorer.score(clips), z(expected), atol=1e-4)
    pooled = _ensemble(1.0, Knn(3, separate_domain_banks=False)).fit(normal)
    pooled_loo = _brute_knn(train, train, 3, list(range(30)))
    np.testing.assert_allclose(
        pooled.score(clips), (_brute_knn(test, train, 3) - pooled_loo.mean()) / pooled_loo.std(), atol=1e-4
    )


def test_ensemble_mixes_both_branches_by_w():
    rng = np.random.default_rng(5)
    normal = _split(rng.normal(size=(40, 8)), ["source"] * 40, rng.normal(size=(40, 3)))
    clips = _split(rng.normal(size=(5, 8)), ["source"] * 5, rng.normal(size=(5, 3)) * 3)
    knn = _ensemble(1.0, Knn(2)).fit(normal).score(clips)
    maha = _ensemble(0.0, Knn(2)).fit(normal).score(clips)
    np.testing.assert_allclose(_ensemble(0.3, Knn(2)).fit(normal).score(clips), 0.3 * knn + 0.7 * maha)


# -----------------------------------------------------------------------------
# SMOTE and the back ends, each against a plain computation


def _loo_bank_distance(queries, bank, k, itself):
    """Mean cosine distance of each query to its k nearest bank rows, bank row itself[i] left out."""
    return _brute_knn(queries, bank, k, list(itself))


@pytest.mark.parametrize("k, separate", [(1, True), (2, True), (2, False)])
def test_knn_bank_normalise_loo_divides_by_the_banks_typical_neighbour_distance(k, separate):
    rng = np.random.default_rng(8)
    train = rng.normal(size=(24, 6))
    train[20:] = train[20:] * 0.2 + 3.0  # a tight target bank far from the source bank
    domains = ["source"] * 20 + ["target"] * 4
    normal, clips = _split(train, domains), _split(rng.normal(size=(5, 6)), ["source"] * 5)
    raw = Knn(k, separate_domain_banks=separate).fit(normal)
    loo = Knn(k, separate_domain_banks=separate, bank_normalise="loo").fit(normal)
    banks = {"source": train[:20], "target": train[20:]} if separate else {"all": train}
    expected_raw, expected_loo = np.full(5, np.inf), np.full(5, np.inf)
    train_loo = np.full(24, np.inf)
    start = 0
    for bank in banks.values():
        n = len(bank)
        typical = np.median(_loo_bank_distance(bank, bank, k, range(n)))
        expected_raw = np.minimum(expected_raw, _brute_knn(clips.embeddings, bank, k))
        expected_loo = np.minimum(expected_loo, _brute_knn(clips.embeddings, bank, k) / typical)
        itself = [i - start if start <= i < start + n else None for i in range(24)]
        train_loo = np.minimum(train_loo, _brute_knn(normal.embeddings, bank, k, itself) / typical)
        start += n
    np.testing.assert_allclose(raw.score(clips), expected_raw, atol=1e-5)
    np.testing.assert_allclose(loo.score(clips), expected_loo, rtol=1e-4)
    np.testing.assert_allclose(loo.training_scores(normal), train_loo, rtol=1e-4)


def test_smote_knn_enlarges_only_the_target_bank_with_imbalanced_learns_rows():
    from imblearn.over_sampling import SMOTE

    rng = np.random.default_rng(9)
    normal = _split(rng.normal(size=(25, 6)), ["source"] * 20 + ["target"] * 5)
    scorer = SmoteKnn(smote_ratio=0.5, seed=3).fit(normal)
    (source, source_rows, source_bank, _), (target, target_rows, target_bank, _) = scorer.banks
    assert (source, target) == ("source", "target")
    assert source_rows.tolist() == list(range(20)) and len(source_bank) == 20
    units = normal.embeddings / np.linalg.norm(normal.embeddings, axis=1, keepdims=True)
    made = SMOTE(sampling_strategy=0.5, k_neighbors=2, random_state=3).fit_resample(
        units, np.r_[np.zeros(20, int), np.ones(5, int)]
    )[0][25:]
    assert target_rows.tolist() == list(range(20, 25)) and len(target_bank) == 10
    np.testing.assert_allclose(target_bank[5:], made / np.linalg.norm(made, axis=1, keepdims=True), rtol=1e-6)
    assert len(Knn().fit(normal).banks[1][2]) == 5  # knn: no SMOTE
    # its training scores are out of fold: every normal measured by a refit without it
    assert np.all(scorer.training_scores(normal) > 1e-6)


def test_smote_knn_without_enough_target_normals_says_so_and_keeps_the_bank(capsys):
    rng = np.random.default_rng(9)
    normal = _split(rng.normal(size=(22, 6)), ["source"] * 20 + ["target"] * 2)
    scorer = SmoteKnn(smote_ratio=0.2).fit(normal)
    assert len(scorer.banks[1][2]) == 2
    assert (
        "fan section 00: no SMOTE rows: SMOTE with 2 neighbours needs at least 3 target rows"
        in capsys.readouterr().out
    )


def test_k_beyond_a_bank_is_said_with_the_section_and_bank_size(capsys):
    rng = np.random.default_rng(9)
    normal = _split(rng.normal(size=(23, 6)), ["source"] * 20 + ["target"] * 3)
    scorer = Knn(5).fit(normal)
    out = capsys.readouterr().out
    assert out.strip() == "fan section 00: K 5 > the target bank's 3 rows: the mean over all of them"
    np.testing.assert_allclose(
        scorer.score(normal.rows([0])),
        min(
            _brute_knn(normal.embeddings[:1], normal.embeddings[:20], 5)[0],
            _brute_knn(normal.embeddings[:1], normal.embeddings[20:], 5)[0],
        ),
        atol=1e-5,
    )


def test_kmeans_uses_sklearn_centres_of_the_source_and_every_target_normal():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(10)
    directions = np.eye(8)[:3] * 10
    train = np.concatenate(
        [d + rng.normal(scale=0.5, size=(15, 8)) for d in directions] + [rng.normal(size=(4, 8))]
    )
    normal = _split(train, ["source"] * 45 + ["target"] * 4)
    clips = _split(rng.normal(size=(6, 8)), ["source"] * 6)
    scorer = KMeansBackend(3, kmeans_n_init=1, seed=2).fit(normal)
    units = normal.embeddings / np.linalg.norm(normal.embeddings, axis=1, keepdims=True)
    fitted = KMeans(3, n_init=1, random_state=2).fit(units[:45])
    assert sorted(np.bincount(fitted.labels_).tolist()) == [15, 15, 15]  # the three clusters found
    centres = np.concatenate([fitted.cluster_centers_, units[45:]])
    expected = [min(cosine(q, c) for c in centres) for q in clips.embeddings]
    np.testing.assert_allclose(scorer.score(clips), expected, atol=1e-6)


def test_rescale_divides_by_each_normals_density():
    rng = np.random.default_rng(11)
    train, test = rng.normal(size=(12, 5)), rng.normal(size=(4, 5))
    normal, clips = _split(train, ["source"] * 8 + ["target"] * 4), _split(test, ["source"] * 4)
    for metric in ("cosine", "euclidean"):
        units = train / np.linalg.norm(train, axis=1, keepdims=True)
        d = (
            (lambda a, b: cosine(a, b))
            if metric == "cosine"
            else (lambda a, b: np.linalg.norm(a / np.linalg.norm(a) - b) / 2)
        )
        density = [
            np.mean(sorted(d(x, y) for j, y in enumerate(units) if j != i)[:3]) for i, x in enumerate(units)
        ]
        expected = [min(d(q, x) / c for x, c in zip(units, density)) for q in test]
        np.testing.assert_allclose(
            Rescale(metric, rescale_neighbours=3).fit(normal).score(clips), expected, rtol=1e-5
        )


def test_back_ends_refuse_bad_settings():
    with pytest.raises(ValueError, match="METRIC must be one of cosine, euclidean"):
        Knn(metric="manhattan")
    with pytest.raises(ValueError, match="KMEANS_CLUSTERS and KMEANS_N_INIT must be at least 1"):
        KMeansBackend(0)
    with pytest.raises(ValueError, match="SMOTE_RATIO"):
        SmoteKnn(smote_ratio=-0.1)
    with pytest.raises(ValueError, match="W must lie in"):
        _ensemble(1.5)
    with pytest.raises(ValueError, match="EMBEDDING_BACKEND must name a back end of the embeddings alone"):
        backend_factory(
            "ensemble",
            {
                "embedding_backend": "mahalanobis",
                "w": 0.5,
                "mahalanobis": "pooled",
                "min_domain_stats": 5,
                "stats_folds": 0,
                "seed": 0,
            },
        )


@pytest.mark.parametrize(
    "backend, ratio", [("knn", 0.2), ("smote_knn", 0.2), ("kmeans", 0.0), ("rescale", 0.2)]
)
def test_evaluate_runs_each_backend_and_its_summary_rebuilds_the_scorer(
    tmp_path, write_features, capsys, backend, ratio
):
    import evaluate

    write_features(tmp_path, np.random.default_rng(11))
    summary = evaluate.main(
        [
            "--embed_dir",
            str(tmp_path),
            "--results_dir",
            str(tmp_path / "res"),
            "--embedding_backend",
            backend,
            "--smote_ratio",
            str(ratio),
            "--kmeans_clusters",
            "4",
            "--dcase_year",
            "2022+",
            "--plots",
            "false",
        ]
    )
    settings = summary["settings"]
    assert (settings["backend"], settings["embedding_backend"], settings["smote_ratio"]) == (
        "ensemble",
        backend,
        ratio,
    )
    aucs = [s["values"][key] for s in summary["sections"] for key in ("AUC (source)", "AUC (target)")]
    assert min(aucs) > 0.9, aucs
    # the training normals' false alarms per domain under the section's threshold, and the few target ones said
    alarms = {r["domain"]: r for r in summary["domain_false_alarms"]}
    assert (alarms["source"]["n_normals"], alarms["target"]["n_normals"]) == (30, 4)
    assert all(0.0 <= r["observed_false_alarm_rate"] <= 1.0 for r in alarms.values())
    out = capsys.readouterr().out
    assert "fan section 00: only 4 target training normals (< 10)" in out
    assert "source training normals above their section's threshold (out of sample)" in out
    # score_clips.py's way: the saved settings give the same scorer, hence the same scores
    features = embedding_files.load_features(tmp_path)
    scores, _ = scoring.score_by_group(
        features.normal,
        features.test,
        *backend_factory("ensemble", summary["settings"]),
        **recorded_calibration(summary["settings"]),
    )
    rows = (tmp_path / "res" / "anomaly_score_fan_section_00_test.csv").read_text().split()
    written = {line.split(",")[0]: float(line.split(",")[1]) for line in rows}
    assert all(
        written[path.rsplit("/", 1)[1]] == pytest.approx(score, rel=1e-5, abs=1e-6)
        for path, score in scores.items()
    )
    with pytest.raises(ValueError, match="lack embedding_backend"):
        backend_factory("ensemble", {"k": 1, "w": 0.5, "separate_domain_banks": True})


def test_score_by_group_fits_one_scorer_per_group_and_names_groups_without_normals():
    rng = np.random.default_rng(6)
    records = [
        ClipRecord(f"/d/{m}/train/{i}.wav", m, "00", "source", "train", "normal")
        for m in ("fan", "pump")
        for i in range(5)
    ]
    normal = embedding_files.Split(
        rng.normal(size=(10, 4)).astype(np.float32), np.zeros((10, 1), np.float32), ["x"], records
    )
    fitted = []

    class Mean:
        def fit(self, split):
            fitted.append({r.machine_type for r in split.records})
            self.centre = split.embeddings.mean(0)
            return self

        def score(self, clips):
            return np.linalg.norm(clips.embeddings - self.centre, axis=1)

        training_scores = score

    scores, train = scoring.score_by_group(
        normal, normal, lambda key, split: Mean().fit(split), "machine_type"
    )
    assert fitted == [{"fan"}, {"pump"}] and len(scores) == 10
    assert scores[records[0].path] == pytest.approx(
        np.linalg.norm(normal.embeddings[0] - normal.embeddings[:5].mean(0))
    )
    assert sorted(train) == [("fan", "00"), ("pump", "00")] and len(train[("fan", "00")]) == 5
    lonely = embedding_files.Split(
        normal.embeddings[:1],
        normal.stats[:1],
        ["x"],
        [ClipRecord("/d/valve/test/a.wav", "valve", "00", "source", "test", "normal")],
    )
    with pytest.raises(ValueError, match="valve/00 have no training normals"):
        scoring.score_by_group(normal, lonely, lambda key, split: Mean().fit(split), "section")


def test_mahalanobis_matches_scipy_with_the_same_covariance():
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(5, 5)) * [1, 10, 0.1, 3, 100]
    train = rng.normal(size=(200, 5)) @ mixing + [0, 5, -2, 1, 50]
    test = rng.normal(size=(10, 5)) @ mixing * 1.5
    maha = Mahalanobis(train)
    vi = maha.inverse_covariance()
    expected = [mahalanobis(x, maha.mean, vi) for x in test]
    np.testing.assert_allclose(maha.distance(test), expected, rtol=1e-6)
    # shrinkage keeps a constant column and more columns than rows well defined
    wide = np.concatenate([rng.normal(size=(6, 20)), np.ones((6, 1))], axis=1)
    assert np.isfinite(Mahalanobis(wide).distance(wide)).all()


def test_standardiser_uses_the_training_distribution():
    z = standardiser(np.array([1.0, 2.0, 3.0, np.inf]))
    assert z(np.array([2.0, 5.0])) == pytest.approx([0.0, 3.0 / np.std([1, 2, 3])])


def test_deep_svdd_fitting_lowers_training_distances_and_survives_saving(tmp_path):
    """pyod < 3.6.3 never trained; epochs=0 gives the same untrained network to compare with."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 24)) @ rng.normal(size=(24, 24)) + 3.0
    normal = _split(x, ["source"] * 200)
    settings = dict(hidden_neurons=[32, 8], batch_size=50, learning_rate=1e-3, dropout=0.0, seed=0)
    untrained = svdd.DeepSVDDScorer(epochs=0, **settings).fit(normal)
    trained = svdd.DeepSVDDScorer(epochs=20, **settings).fit(normal)
    assert torch.equal(untrained.detector.c_, trained.detector.c_)  # same start, same centre
    before, after = untrained.training_scores(normal).mean(), trained.training_scores(normal).mean()
    print(f"mean training distance: untrained {before:.4g}, trained {after:.4g}")
    assert after < 0.5 * before
    outliers = _split(x[:20] + 25.0 * rng.normal(size=(20, 24)), ["source"] * 20)
    assert trained.score(outliers).mean() > after
    # saved as tensors and plain data, read back with weights_only=True: the same scores
    torch.save(trained.state(), tmp_path / "svdd.pt")
    loaded = svdd.DeepSVDDScorer.from_state(torch.load(tmp_path / "svdd.pt", weights_only=True))
    np.testing.assert_allclose(loaded.score(outliers), trained.score(outliers), rtol=1e-6)


def test_asdkit_recipe_writes_the_four_backends_side_by_side(tmp_path, write_features, capsys):
    import evaluate

    write_features(tmp_path, np.random.default_rng(5))
    summary = evaluate.main(
        [
            "--recipe",
            "asdkit-eat-lora",
            "--embed_dir",
            str(tmp_path),
            "--results_dir",
            str(tmp_path / "results" / "ensemble"),
            "--plots",
            "false",
            "--report",
            "false",
        ]
    )
    names = ["smote_knn", "ensemble", "knn", "kmeans", "rescale"]  # the recipe's BACKENDS, headline first
    assert list(summary["backends"]) == names and summary["settings"]["backend"] == "smote_knn"
    features = embedding_files.load_features(tmp_path)
    for name in names:
        folder = tmp_path / "results" / ("ensemble" if name == "ensemble" else f"backends/{name}")
        assert (folder / "decision_result_fan_section_00_test.csv").is_file()
        settings = json.loads((folder / "summary.json").read_text())["settings"]
        assert settings["backend"] == name
        rows = (folder / "anomaly_score_fan_section_00_test.csv").read_text().split()
        written = {line.split(",")[0]: float(line.split(",")[1]) for line in rows}
        scores, _ = scoring.score_by_group(
            features.normal, features.test, *backend_factory(name, settings), **recorded_calibration(settings)
        )
        assert all(
            written[path.rsplit("/", 1)[1]] == pytest.approx(score, rel=1e-5, abs=1e-7)
            for path, score in scores.items()
        )
        values = summary["backends"][name]["sections"][0]["values"]
        assert min(values["AUC (source)"], values["AUC (target)"]) > 0.9, (name, values)
    table = list(csv.DictReader(open(tmp_path / "results" / "backends" / "comparison.csv")))
    assert [r["scorer"] for r in table if r["machine_type"] == "all"] == names
    out = capsys.readouterr().out
    assert "back ends side by side" in out and all(f"{n}: official score" in out for n in names)
    # the printed side-by-side table follows BACKENDS: its summary lines come in that order
    lines = [line.split(":")[0] for line in out[out.index("back ends side by side") :].splitlines()]
    assert [line for line in lines if line in names] == names


def test_selective_mahalanobis_takes_the_nearer_domain_fit():
    rng = np.random.default_rng(6)
    stats = np.r_[rng.normal(size=(40, 3)), rng.normal(size=(8, 3)) * 0.5 + 6.0]
    normal = _split(rng.normal(size=(48, 4)), ["source"] * 40 + ["target"] * 8, stats)
    clips = _split(rng.normal(size=(3, 4)), [None] * 3, np.array([[0.0] * 3, [6.0] * 3, [3.0] * 3]))
    per_domain = StatsMahalanobis("per_domain", 5).fit(normal)
    stats = normal.stats  # as stored: float32
    source, target = Mahalanobis(stats[:40]), Mahalanobis(stats[40:])
    np.testing.assert_allclose(
        per_domain.score(clips), np.minimum(source.distance(clips.stats), target.distance(clips.stats))
    )
    pooled = StatsMahalanobis("pooled").fit(normal)
    np.testing.assert_allclose(pooled.score(clips), Mahalanobis(stats).distance(clips.stats))
    assert per_domain.score(clips)[1] < pooled.score(clips)[1]  # a target normal looks normal again
    # too few target normals: the pooled fit takes the target fit's place, and says so
    few = StatsMahalanobis("per_domain", 10).fit(normal)
    np.testing.assert_allclose(
        few.score(clips),
        np.minimum(source.distance(clips.stats), Mahalanobis(stats).distance(clips.stats)),
    )
    assert few.notes == [
        "8 target normals (< MIN_DOMAIN_STATS 10): the fit over all normals takes the place of its own"
    ]


def test_statistics_branch_scores_training_normals_out_of_fold():
    """An outlying training normal is not its own reference: out of fold its Mahalanobis distance is
    far larger than in sample; STATS_FOLDS 0 keeps the earlier in-sample distances."""
    rng = np.random.default_rng(7)
    stats = rng.normal(size=(40, 3))
    stats[0] = [6.0, -6.0, 6.0]
    normal = _split(rng.normal(size=(40, 4)), ["source"] * 40, stats)
    in_sample = _ensemble(0.0, mahalanobis="pooled", stats_folds=0).fit(normal)
    np.testing.assert_allclose(in_sample.train_statistics, Mahalanobis(stats).distance(stats))
    held_out = _ensemble(0.0, mahalanobis="pooled", stats_folds=5).fit(normal)
    assert held_out.train_statistics[0] > 1.5 * in_sample.train_statistics[0]
    with pytest.raises(ValueError, match="STATS_FOLDS"):
        StatsMahalanobis(stats_folds=1)


def test_deep_svdd_thresholds_come_from_held_out_refits(tmp_path):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 12)) + 2.0
    normal = _split(x, ["source"] * 50 + ["target"] * 10)
    settings = dict(hidden_neurons=[16, 4], epochs=5, batch_size=20, seed=0)
    scorer = svdd.DeepSVDDScorer(**settings).fit_out_of_fold(normal, 5)
    held_out, in_sample = scorer.training_scores(normal), scorer.score(normal)
    assert held_out.shape == (60,) and not np.allclose(held_out, in_sample)
    # each fold's rows are scored by a refit without them: fold 0 of the same split, refitted here
    from sklearn.model_selection import StratifiedKFold

    domains = [r.domain for r in normal.records]
    fit_rows, test_rows = next(StratifiedKFold(5, shuffle=True, random_state=0).split(domains, domains))
    refit = svdd.DeepSVDDScorer(**settings).fit(normal.rows(fit_rows))
    np.testing.assert_allclose(held_out[test_rows], refit.score(normal.rows(test_rows)), rtol=1e-5)
    torch.save(scorer.state(), tmp_path / "svdd.pt")
    loaded = svdd.DeepSVDDScorer.from_state(torch.load(tmp_path / "svdd.pt", weights_only=True))
    np.testing.assert_allclose(loaded.training_scores(normal), held_out)
    np.testing.assert_allclose(
        loaded.training_scores(normal.rows(range(10))), loaded.score(normal.rows(range(10)))
    )


def test_held_out_normals_are_flagged_at_the_nominal_rate():
    """Issue 19: 60 training normals with 20 statistics. In-sample Mahalanobis distances of the training
    normals are too small, so the earlier threshold (in-sample, free gamma) flags far more than 10% of
    fresh normals; out-of-fold distances and the gamma at 0 / empirical quantile flag about 10%."""
    from asd.score import thresholds

    def normals(rng, n, split):
        records = [
            ClipRecord(f"/d/fan/{split}/{i}.wav", "fan", "00", "source", split, "normal") for i in range(n)
        ]
        return embedding_files.Split(
            rng.normal(size=(n, 8)).astype(np.float32),
            rng.normal(size=(n, 20)).astype(np.float32),
            list("a" * 20),
            records,
        )

    def flagged(settings: dict, location: str) -> float:
        rates = []
        for seed in range(3):
            rng = np.random.default_rng(seed)
            normal, fresh = normals(rng, 60, "train"), normals(rng, 2000, "test")
            scores, train = scoring.score_by_group(
                normal, fresh, lambda key, n: _ensemble(0.0, **settings).fit(n), "section"
            )
            decided = thresholds.decide(
                scores, fresh.records, thresholds.threshold_table(fresh.records, train, location)
            )
            rates.append(np.mean(list(decided.values())))
        return float(np.mean(rates))

    now = flagged({"stats_folds": 10}, "zero")
    before = flagged({"stats_folds": 0, "mahalanobis": "pooled"}, "free")
    print(f"fresh normals flagged: {now:.3f} now, {before:.3f} with in-sample scores")
    assert 0.05 <= now <= 0.13 and before > 0.14


def test_deep_svdd_held_out_thresholds_flag_fresh_normals_near_the_nominal_rate():
    """In-sample Deep SVDD distances of its own training normals are far below a fresh normal's."""
    from asd.score import thresholds

    rng = np.random.default_rng(9)
    mix = rng.normal(size=(24, 24))
    normal = _split(rng.normal(size=(80, 24)) @ mix, ["source"] * 80)
    fresh = _split(rng.normal(size=(2000, 24)) @ mix, ["source"] * 2000)
    settings = dict(hidden_neurons=[32, 8], epochs=30, batch_size=20, seed=0)
    scorer = svdd.DeepSVDDScorer(**settings).fit_out_of_fold(normal, 5)
    rates = {}
    for name, train in (("held out", scorer.training_scores(normal)), ("in sample", scorer.score(normal))):
        rates[name] = float(np.mean(scorer.score(fresh) > thresholds.threshold_info(train)["threshold"]))
    print(rates)
    assert 0.04 <= rates["held out"] <= 0.2 and rates["in sample"] > rates["held out"] + 0.05


def test_deep_svdd_with_too_few_normals_for_refits_uses_in_sample_thresholds(capsys):
    """Two training normals (the real DCASE sample folder's machine types) cannot be refitted on held-out
    folds (a refit would see one row): the group is fitted and its threshold scores are in-sample, said."""
    normal = _split(np.random.default_rng(3).normal(size=(2, 8)), ["source", "source"])
    scorer = svdd.DeepSVDDScorer(hidden_neurons=[8, 4], epochs=2, batch_size=2, seed=0).fit_out_of_fold(
        normal, 5
    )
    np.testing.assert_allclose(scorer.training_scores(normal), scorer.score(normal))
    assert "in-sample" in capsys.readouterr().out
    three = _split(np.random.default_rng(3).normal(size=(3, 8)), ["source"] * 3)
    refitted = svdd.DeepSVDDScorer(hidden_neurons=[8, 4], epochs=2, batch_size=2, seed=0).fit_out_of_fold(
        three, 5
    )
    assert not np.allclose(refitted.training_scores(three), refitted.score(three))


def test_bank_normalise_loo_flags_the_nominal_share_of_normals_in_both_domains(capsys):
    """Issue 26: 200 source and 20 target normals. A sparse target bank gives its normals larger k-NN
    distances, so one threshold per section (a clip's domain unknown) flags far more target normals than
    10%; dividing each bank's distance by its typical leave-one-out neighbour distance flags about 10% in
    both domains, fresh normals and the out-of-sample training normals alike."""
    from asd.score import thresholds

    rng = np.random.default_rng(12)
    centres = {"source": rng.normal(size=16) * 3, "target": rng.normal(size=16) * 3}

    def normals(counts: dict) -> embedding_files.Split:
        domains = [d for d, n in counts.items() for _ in range(n)]
        return _split(np.stack([centres[d] + rng.normal(size=16) for d in domains]), domains)

    normal, fresh = normals({"source": 200, "target": 20}), normals({"source": 1000, "target": 1000})
    observed = {}
    for mode in ("off", "loo"):
        scores, train = scoring.score_by_group(
            normal, fresh, lambda key, n, mode=mode: Knn(1, bank_normalise=mode).fit(n), "section"
        )
        table = {
            key: info
            for key, info in thresholds.threshold_table(fresh.records, train).items()
            if len(key) == 2
        }
        decided = thresholds.decide(scores, fresh.records, table)
        rows = thresholds.domain_false_alarms(train, table)
        observed[mode] = {
            d: (
                np.mean([decided[r.path] for r in fresh.records if r.domain == d]),
                next(r["observed_false_alarm_rate"] for r in rows if r["domain"] == d),
            )
            for d in ("source", "target")
        }
    print(observed)
    assert observed["off"]["target"][0] > 0.3 and observed["off"]["target"][1] > 0.3
    for fresh_rate, training_rate in observed["loo"].values():
        assert 0.03 <= fresh_rate <= 0.2 and 0.03 <= training_rate <= 0.2
