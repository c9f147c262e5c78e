"""asd/backends.py, asd/scoring.py: the ensemble's backends (k-NN, k-means, density) and SMOTE against
brute force, Mahalanobis against scipy, evaluate.py with each backend, Deep SVDD fitting and saving."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cosine, mahalanobis

from asd import asdkit_backends, backends, embedding_files, scoring, svdd
from dataset import ClipRecord


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
        ours = backends.knn_distance(torch.tensor(queries), torch.tensor(bank), k).numpy()
        np.testing.assert_allclose(ours, _brute_knn(queries, bank, k), atol=1e-5)


def test_knn_leave_one_out_excludes_only_the_clip_itself():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(12, 8))
    bank[5] = bank[4] * 2.0  # an exact (cosine) duplicate of row 4 stays a neighbour
    itself = torch.eye(12, dtype=torch.bool)
    ours = backends.knn_distance(torch.tensor(bank), torch.tensor(bank), 2, itself).numpy()
    np.testing.assert_allclose(ours, _brute_knn(bank, bank, 2, skip=list(range(12))), atol=1e-5)
    assert ours[4] == pytest.approx(_brute_knn(bank[4:5], np.delete(bank, 4, axis=0), 2)[0], abs=1e-5)
    nearest = backends.knn_distance(torch.tensor(bank), torch.tensor(bank), 1, itself).numpy()
    assert nearest[4] == pytest.approx(0.0, abs=1e-6) and nearest[5] == pytest.approx(0.0, abs=1e-6)
    single = backends.knn_distance(torch.tensor(bank[:1]), torch.tensor(bank[:1]), 1, torch.tensor([[True]]))
    assert torch.isinf(single).all()  # nothing left to compare with


def _split(embeddings: np.ndarray, domains: list, stats: np.ndarray | None = None) -> embedding_files.Split:
    records = [
        ClipRecord(f"/d/fan/train/{i}.wav", "fan", "00", d, "train", "normal") for i, d in enumerate(domains)
    ]
    stats = np.zeros((len(domains), 3)) if stats is None else stats
    return embedding_files.Split(
        embeddings.astype(np.float32), stats.astype(np.float32), ["a", "b", "c"], records
    )


def test_ensemble_uses_separate_domain_banks_and_takes_the_smaller():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(30, 8)).astype(np.float32)
    domains = ["source"] * 25 + ["target"] * 5
    test = rng.normal(size=(6, 8)).astype(np.float32)
    normal, clips = _split(train, domains), _split(test, ["source"] * 6)
    src, tgt = train[:25], train[25:]
    for k in (1, 3):
        scorer = backends.KnnMahalanobis(k, w=1.0).fit(normal)  # k-NN branch alone
        loo_src = np.minimum(_brute_knn(src, src, k, list(range(25))), _brute_knn(src, tgt, k))
        loo_tgt = np.minimum(_brute_knn(tgt, src, k), _brute_knn(tgt, tgt, k, list(range(5))))
        loo = np.concatenate([loo_src, loo_tgt])
        z = lambda d, loo=loo: (d - loo.mean()) / loo.std()
        np.testing.assert_allclose(scorer.training_scores(normal), z(loo), atol=1e-4)
        expected = np.minimum(_brute_knn(test, src, k), _brute_knn(test, tgt, k))
        np.testing.assert_allclose(scorer.score(clips), z(expected), atol=1e-4)
    pooled = backends.KnnMahalanobis(3, w=1.0, separate_domain_banks=False).fit(normal)
    pooled_loo = _brute_knn(train, train, 3, list(range(30)))
    np.testing.assert_allclose(
        pooled.score(clips), (_brute_knn(test, train, 3) - pooled_loo.mean()) / pooled_loo.std(), atol=1e-4
    )


def test_ensemble_mixes_both_branches_by_w():
    rng = np.random.default_rng(5)
    normal = _split(rng.normal(size=(40, 8)), ["source"] * 40, rng.normal(size=(40, 3)))
    clips = _split(rng.normal(size=(5, 8)), ["source"] * 5, rng.normal(size=(5, 3)) * 3)
    knn = backends.KnnMahalanobis(2, w=1.0).fit(normal).score(clips)
    maha = backends.KnnMahalanobis(2, w=0.0).fit(normal).score(clips)
    np.testing.assert_allclose(
        backends.KnnMahalanobis(2, w=0.3).fit(normal).score(clips), 0.3 * knn + 0.7 * maha
    )


# -----------------------------------------------------------------------------
# SMOTE and the three backends, each against a plain computation


def test_smote_count_follows_imbalanced_learn_float_ratio():
    assert backends.smote_count(990, 10, 0.2) == 188  # DCASE 2023: 990 source, 10 target normals
    assert backends.smote_count(100, 3, 0.25) == 22
    assert backends.smote_count(20, 10, 0.2) == 0  # already above the ratio: nothing added
    assert backends.smote_count(990, 10, 0.0) == 0


def test_smote_rows_are_seeded_and_lie_between_a_row_and_one_of_its_nearest():
    rng = np.random.default_rng(7)
    minority = rng.normal(size=(8, 5))
    rows, parents = backends.smote(minority, 40, 2, seed=0)
    again, _ = backends.smote(minority, 40, 2, seed=0)
    other, _ = backends.smote(minority, 40, 2, seed=1)
    assert rows.shape == (40, 5) and np.array_equal(rows, again) and not np.allclose(rows, other)
    for row, (x, y) in zip(rows, parents):
        distances = [np.linalg.norm(minority[x] - minority[j]) if j != x else np.inf for j in range(8)]
        assert y in np.argsort(distances)[:2]  # one of x's 2 nearest others
        step = minority[y] - minority[x]
        u = np.dot(row - minority[x], step) / np.dot(step, step)
        assert 0.0 <= u <= 1.0
        np.testing.assert_allclose(row, minority[x] + u * step, atol=1e-12)  # on the segment x -> y
    assert len({tuple(p) for p in parents}) > 5  # different pairs are drawn
    assert len(backends.smote(minority[:1], 10, 2, 0)[0]) == 0  # a single row has no neighbour
    assert len(backends.smote(minority, 0, 2, 0)[0]) == 0


def _banks(embeddings: np.ndarray, domains: list, ratio: float, separate: bool = True) -> dict:
    """Bank rows as (vector, the normals it comes from): source normals; target normals, then the SMOTE
    rows of backends.smote (checked above), as the scorer is meant to build them."""
    target = [i for i, d in enumerate(domains) if d == "target"]
    n_new = max(0, round(ratio * domains.count("source")) - len(target))
    rows, parents = backends.smote(embeddings[target], n_new, 2, 0)
    banks = {"source": [], "target": []}
    for i, (x, d) in enumerate(zip(embeddings, domains)):
        banks[d].append((x, {i}))
    for row, (a, b) in zip(rows, parents):
        banks["target"].append((row, {target[a], target[b]}))
    return banks if separate else {None: banks["source"] + banks["target"]}


def _knn_references(query, bank, skip, scorer_bank, neighbours):
    return [cosine(query, x) for x, origin in bank if skip not in origin]


def _density_references(query, bank, skip, scorer_bank, neighbours):
    usable = [x for x, origin in bank if skip not in origin]
    out = []
    for r, x in enumerate(usable):
        others = sorted(cosine(x, y) for s, y in enumerate(usable) if s != r)[:neighbours]
        if others:
            out.append(cosine(query, x) / max(np.mean(others), backends.MIN_DENSITY))
    return out


def _kmeans_references(query, bank, skip, scorer_bank, neighbours):
    out = []
    for cluster in scorer_bank.clusters:
        members = [
            bank[j][0] / np.linalg.norm(bank[j][0]) for j in cluster.tolist() if skip not in bank[j][1]
        ]
        if members:
            out.append(cosine(query, np.sum(members, axis=0)))
    return out


BRUTE = {"knn": _knn_references, "kmeans": _kmeans_references, "density": _density_references}


def _brute_branch(scorer, banks: dict, queries: np.ndarray, k: int, loo: bool, backend: str) -> np.ndarray:
    """The embedding branch's raw distance, query by query: the mean of the k smallest reference
    distances in each bank, the smaller over the banks; ``loo`` skips query i's own rows."""
    out = []
    for i, query in enumerate(queries):
        best = np.inf
        for (_, scorer_bank), bank in zip(
            scorer.banks, [b for _, b in sorted(banks.items(), key=lambda kv: str(kv[0])) if b]
        ):
            references = sorted(BRUTE[backend](query, bank, i if loo else None, scorer_bank, 3))[:k]
            if references:
                best = min(best, np.mean(references))
        out.append(best)
    return np.array(out)


@pytest.mark.parametrize("backend", backends.BACKENDS)
@pytest.mark.parametrize("k, ratio, separate", [(1, 0.0, True), (1, 0.5, True), (2, 0.5, False)])
def test_each_backend_matches_a_plain_computation(backend, k, ratio, separate):
    rng = np.random.default_rng(8)
    train = rng.normal(size=(24, 6))
    domains = ["source"] * 20 + ["target"] * 4
    test = rng.normal(size=(5, 6))
    normal, clips = _split(train, domains), _split(test, ["source"] * 5)
    scorer = backends.KnnMahalanobis(
        k, 1.0, separate, backend, kmeans_clusters=5, density_neighbours=3, smote_ratio=ratio
    ).fit(normal)
    banks = _banks(train.astype(np.float32).astype(np.float64), domains, ratio, separate)
    assert [len(rows) for rows, _ in scorer.banks] == [
        len(b) for _, b in sorted(banks.items(), key=lambda kv: str(kv[0]))
    ]
    loo = _brute_branch(scorer, banks, normal.embeddings, k, True, backend)
    assert np.isfinite(loo).all()
    z = lambda d: (d - loo.mean()) / loo.std()
    np.testing.assert_allclose(scorer.training_scores(normal), z(loo), atol=1e-4)
    np.testing.assert_allclose(
        scorer.score(clips), z(_brute_branch(scorer, banks, clips.embeddings, k, False, backend)), atol=1e-4
    )


def test_smote_enlarges_only_the_target_bank():
    rng = np.random.default_rng(9)
    normal = _split(rng.normal(size=(25, 6)), ["source"] * 20 + ["target"] * 5)
    scorer = backends.KnnMahalanobis(smote_ratio=0.5, seed=3).fit(normal)
    (source_rows, _), (target_rows, target_bank) = scorer.banks
    assert source_rows.tolist() == list(range(20))
    assert len(target_rows) == 10 and target_rows[:5].tolist() == list(range(20, 25))
    synthetic, _ = backends.smote(normal.embeddings[20:], 5, 2, 3)
    np.testing.assert_allclose(target_bank.bank[5:].numpy(), synthetic, rtol=1e-6)
    assert len(backends.KnnMahalanobis().fit(normal).banks[1][0]) == 5  # SMOTE_RATIO 0: off


def test_kmeans_finds_separated_clusters_and_a_fixed_point():
    rng = np.random.default_rng(10)
    directions = np.eye(8)[:3] * 10
    bank = np.concatenate([d + rng.normal(scale=0.5, size=(15, 8)) for d in directions])
    assignment = backends.spherical_kmeans(torch.tensor(bank), 3, seed=0)
    assert sorted(len(set(assignment[i : i + 15].tolist())) for i in (0, 15, 30)) == [1, 1, 1]
    assert len(set(assignment.tolist())) == 3
    fitted = backends.KMeansBank(torch.tensor(bank), 5, seed=1)
    centres = [
        np.sum([bank[j] / np.linalg.norm(bank[j]) for j in rows.tolist()], axis=0) for rows in fitted.clusters
    ]
    assert sorted(j for rows in fitted.clusters for j in rows.tolist()) == list(range(45))
    for c, rows in enumerate(fitted.clusters):
        for j in rows.tolist():  # a fixed point: every row sits with its most similar centre
            assert c == int(np.argmin([cosine(bank[j], centre) for centre in centres]))
    assert (
        len(backends.KMeansBank(torch.tensor(bank[:4]), 16, seed=0).clusters) == 4
    )  # at most the bank's rows
    assert torch.equal(
        backends.spherical_kmeans(torch.tensor(bank), 5, 2),
        backends.spherical_kmeans(torch.tensor(bank), 5, 2),
    )


def test_ensemble_refuses_bad_settings():
    with pytest.raises(ValueError, match="BACKEND must be one of knn, kmeans, density"):
        backends.KnnMahalanobis(backend="lof")
    with pytest.raises(ValueError, match="KMEANS_CLUSTERS must be at least 1"):
        backends.KnnMahalanobis(kmeans_clusters=0)
    with pytest.raises(ValueError, match="SMOTE_RATIO"):
        backends.KnnMahalanobis(smote_ratio=-0.1)


def _write_features(folder, rng) -> None:
    """A fan section 00 of embedding and statistics files in extract_embeddings.py's format, with
    anomalies far from the normals (the data folder and model they name do not exist: not checked)."""
    fingerprint = {
        "format": embedding_files.FEATURES_FORMAT,
        "clips": "d",
        "model_key": "m",
        "settings": {},
        "precision": "fp32",
        "data_dir": str(folder / "no_data"),
        "model_path": str(folder / "no.pth"),
    }
    centre = rng.normal(size=16) * 3
    splits = {
        "train": [("source", "normal")] * 30 + [("target", "normal")] * 4,
        "test": [
            (d, label) for d in ("source", "target") for label in ("normal", "anomaly") for _ in range(5)
        ],
    }
    for split, rows in splits.items():
        records = [
            ClipRecord(
                f"/gone/fan/{split}/section_00_{d}_{split}_{label}_{i:04d}.wav", "fan", "00", d, split, label
            ).to_dict()
            for i, (d, label) in enumerate(rows)
        ]
        shift = np.array([[4.0 if label == "anomaly" else 0.0] for _, label in rows])
        embeddings = centre + rng.normal(size=(len(rows), 16)) + shift * rng.normal(size=(len(rows), 16))
        stats = rng.normal(size=(len(rows), 3)) + shift
        for path, matrix, columns in zip(
            embedding_files.feature_paths(folder, split), (embeddings, stats), (None, ["a", "b", "c"])
        ):
            torch.save(
                {
                    "matrix": torch.tensor(matrix, dtype=torch.float32),
                    "records": records,
                    "columns": columns,
                    "fingerprint": {**fingerprint, "split": split},
                },
                path,
            )


@pytest.mark.parametrize("backend, ratio", [("knn", 0.2), ("kmeans", 0.0), ("density", 0.2)])
def test_evaluate_runs_each_backend_and_its_summary_rebuilds_the_scorer(tmp_path, backend, ratio):
    import evaluate

    _write_features(tmp_path, np.random.default_rng(11))
    summary = evaluate.main(
        [
            "--embed_dir",
            str(tmp_path),
            "--results_dir",
            str(tmp_path / "res"),
            "--backend",
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
    assert summary["settings"]["backend"] == backend and summary["settings"]["smote_ratio"] == ratio
    aucs = [s["values"][key] for s in summary["sections"] for key in ("AUC (source)", "AUC (target)")]
    assert min(aucs) > 0.9, aucs
    # score_clips.py's way: the saved settings give the same scorer, hence the same scores
    features = embedding_files.load_features(tmp_path)
    scores, _ = scoring.score_by_group(
        features.normal, features.test, backends.ensemble_factory(summary["settings"]), "section"
    )
    rows = (tmp_path / "res" / "anomaly_score_fan_section_00_test.csv").read_text().split()
    written = {line.split(",")[0]: float(line.split(",")[1]) for line in rows}
    assert all(
        written[path.rsplit("/", 1)[1]] == pytest.approx(score, rel=1e-5, abs=1e-6)
        for path, score in scores.items()
    )
    with pytest.raises(ValueError, match="lack backend"):
        backends.ensemble_factory({"k": 1, "w": 0.5, "separate_domain_banks": True})


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
    maha = backends.Mahalanobis(train)
    vi = maha.inverse_covariance()
    expected = [mahalanobis(x, maha.mean, vi) for x in test]
    np.testing.assert_allclose(maha.distance(test), expected, rtol=1e-6)
    # shrinkage keeps a constant column and more columns than rows well defined
    wide = np.concatenate([rng.normal(size=(6, 20)), np.ones((6, 1))], axis=1)
    assert np.isfinite(backends.Mahalanobis(wide).distance(wide)).all()


def test_standardiser_uses_the_training_distribution():
    z = backends.standardiser(np.array([1.0, 2.0, 3.0, np.inf]))
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


def test_asdkit_recipe_writes_the_four_backends_side_by_side(tmp_path, capsys):
    import evaluate

    _write_features(tmp_path, np.random.default_rng(5))
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
    names = ["knn", "smote_knn", "kmeans", "rescale"]
    assert list(summary["asdkit_backends"]) == names
    features = embedding_files.load_features(tmp_path)
    for name in names:
        folder = tmp_path / "results" / "backends" / name
        assert (folder / "decision_result_fan_section_00_test.csv").is_file()
        assert json.loads((folder / "summary.json").read_text())["settings"]["asdkit_backend"] == name
        rows = (folder / "anomaly_score_fan_section_00_test.csv").read_text().split()
        written = {line.split(",")[0]: float(line.split(",")[1]) for line in rows}
        scores, _ = scoring.score_by_group(
            features.normal, features.test, asdkit_backends.asdkit_factory(name), "machine_type"
        )
        assert all(
            written[path.rsplit("/", 1)[1]] == pytest.approx(score, rel=1e-5, abs=1e-7)
            for path, score in scores.items()
        )
        values = summary["asdkit_backends"][name]["sections"][0]["values"]
        assert min(values["AUC (source)"], values["AUC (target)"]) > 0.9, (name, values)
    table = list(csv.DictReader(open(tmp_path / "results" / "backends" / "comparison.csv")))
    assert [r["scorer"] for r in table if r["machine_type"] == "all"] == names
    out = capsys.readouterr().out
    assert "ASDKit back ends side by side" in out and all(f"{n}: official score" in out for n in names)


def test_selective_mahalanobis_takes_the_nearer_domain_fit():
    rng = np.random.default_rng(6)
    stats = np.r_[rng.normal(size=(40, 3)), rng.normal(size=(8, 3)) * 0.5 + 6.0]
    normal = _split(rng.normal(size=(48, 4)), ["source"] * 40 + ["target"] * 8, stats)
    clips = _split(rng.normal(size=(3, 4)), [None] * 3, np.array([[0.0] * 3, [6.0] * 3, [3.0] * 3]))
    per_domain = backends.StatsMahalanobis("per_domain", 5).fit(normal)
    stats = normal.stats  # as stored: float32
    source, target = backends.Mahalanobis(stats[:40]), backends.Mahalanobis(stats[40:])
    np.testing.assert_allclose(
        per_domain.score(clips), np.minimum(source.distance(clips.stats), target.distance(clips.stats))
    )
    pooled = backends.StatsMahalanobis("pooled").fit(normal)
    np.testing.assert_allclose(pooled.score(clips), backends.Mahalanobis(stats).distance(clips.stats))
    assert per_domain.score(clips)[1] < pooled.score(clips)[1]  # a target normal looks normal again
    # too few target normals: the pooled fit takes the target fit's place, and says so
    few = backends.StatsMahalanobis("per_domain", 10).fit(normal)
    np.testing.assert_allclose(
        few.score(clips),
        np.minimum(source.distance(clips.stats), backends.Mahalanobis(stats).distance(clips.stats)),
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
    common = dict(w=0.0, mahalanobis="pooled")
    in_sample = backends.KnnMahalanobis(**common, stats_folds=0).fit(normal)
    np.testing.assert_allclose(in_sample.train_maha, backends.Mahalanobis(stats).distance(stats))
    held_out = backends.KnnMahalanobis(**common, stats_folds=5).fit(normal)
    assert held_out.train_maha[0] > 1.5 * in_sample.train_maha[0]
    with pytest.raises(ValueError, match="STATS_FOLDS"):
        backends.KnnMahalanobis(stats_folds=1)


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
    from asd import thresholds

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
                normal, fresh, lambda key, n: backends.KnnMahalanobis(w=0.0, **settings).fit(n), "section"
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
    from asd import thresholds

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
