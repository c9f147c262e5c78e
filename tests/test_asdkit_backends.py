"""ASDKit's four back ends against ASDKit's own outputs (tests/fixtures/asdkit_fixture, case "backends"): their
parts, then the registry's back ends built from evaluate.py's settings under the recipe asdkit-eat-lora
(the path evaluate.py runs), to the tolerances the case states."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from asd.backends import base, kmeans, knn, rescale
from asd.backends.registry import backend_factory, make_backend
from asd.base.cli import check_script_arguments
from asd.data.names import ClipRecord
from asd.embed.embedding_files import Split

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "asdkit_fixture"
ROOT = Path(__file__).resolve().parents[1]


def _nearest(queries: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Euclidean distance to the nearest bank row, its index): the metric's half distance, doubled."""
    distances = 2.0 * base.distances(queries, bank, "euclidean")
    index = distances.argmin(1)
    return distances[np.arange(len(queries)), index], index


def _knn_score(test, source_bank, target_bank):
    return np.minimum(_nearest(test, source_bank)[0], _nearest(test, target_bank)[0]) / 2.0


@pytest.fixture(scope="module")
def case():
    arrays = np.load(FIXTURE / "cases.npz")
    spec = json.loads((FIXTURE / "cases.json").read_text())["cases"]["backends"]
    data = {key.split(".", 1)[1]: arrays[key] for key in arrays.files if key.startswith("backends.")}
    return data, {name: t["atol"] for name, t in spec["tolerance"].items()}


@pytest.fixture(scope="module")
def units(case):
    data, _ = case
    return (
        base.l2_normalise(data["in.source"]),
        base.l2_normalise(data["in.target"]),
        base.l2_normalise(data["in.test"]),
    )


def test_plain_knn_matches_asdkit(case, units):
    data, atol = case
    source, target, test = units
    distance_source, nn_source = _nearest(test, source)
    distance_target, nn_target = _nearest(test, target)
    np.testing.assert_array_equal(nn_source, data["out.knn_nn_source"])
    np.testing.assert_array_equal(nn_target, data["out.knn_nn_target"])
    np.testing.assert_allclose(distance_source, data["out.knn_dist_source"], atol=atol["knn_score"], rtol=0)
    np.testing.assert_allclose(distance_target, data["out.knn_dist_target"], atol=atol["knn_score"], rtol=0)
    np.testing.assert_allclose(
        _knn_score(test, source, target), data["out.knn_score"], atol=atol["knn_score"], rtol=0
    )


def test_smote_rows_bank_and_score_match_asdkit(case, units):
    data, atol = case
    source, target, test = units
    raw = knn.smote_rows(source, target, 0.2, 2, 0)
    np.testing.assert_allclose(raw, data["out.smote_synthetic_raw"], atol=atol["smote_target_bank"], rtol=0)
    # the stored draws describe these rows: origin + step * (neighbour - origin), float64 from float32
    origin = target[data["out.smote_rows"]].astype(np.float64)
    partner = target[data["out.smote_neighbours"][data["out.smote_rows"], data["out.smote_cols"]]]
    made = origin + data["out.smote_steps"][:, None] * (partner.astype(np.float64) - origin)
    np.testing.assert_allclose(raw, made, atol=1e-6, rtol=0)
    # ... and the neighbour table is the 2 nearest other target rows
    between = 2.0 * base.distances(target, target, "euclidean")
    np.fill_diagonal(between, np.inf)
    np.testing.assert_array_equal(np.argsort(between, axis=1)[:, :2], data["out.smote_neighbours"])
    bank = base.l2_normalise(np.concatenate([target, raw]))
    np.testing.assert_allclose(bank, data["out.smote_target_bank"], atol=atol["smote_target_bank"], rtol=0)
    np.testing.assert_allclose(
        _knn_score(test, source, bank), data["out.smote_knn_score"], atol=atol["smote_knn_score"], rtol=0
    )


def test_smote_count_rule_matches_imbalanced_learn(case):
    data, _ = case
    for (n_major, n_minor), expected in zip(data["in.count_pairs"], data["out.count_new_rows"]):
        if expected < 0:  # imbalanced-learn refused the pair
            with pytest.raises(ValueError, match="needs a positive count"):
                knn.count_new_rows(int(n_major), int(n_minor), 0.2)
        else:
            assert knn.count_new_rows(int(n_major), int(n_minor), 0.2) == expected


def test_smote_count_agrees_with_imbalanced_learn_where_truncation_gives_zero():
    """imbalanced-learn refuses a count that truncates to 0 as well as a negative one."""
    from imblearn.over_sampling import SMOTE

    rng = np.random.default_rng(0)
    for n_major, n_minor in [(50, 10), (52, 10), (55, 10), (60, 3), (14, 3)]:
        x = rng.normal(size=(n_major + n_minor, 4))
        y = np.r_[np.zeros(n_major, dtype=int), np.ones(n_minor, dtype=int)]
        try:
            made = len(
                SMOTE(sampling_strategy=0.2, k_neighbors=2, random_state=0).fit_resample(x, y)[0]
            ) - len(x)
        except ValueError:
            with pytest.raises(ValueError, match="needs a positive count"):
                knn.count_new_rows(n_major, n_minor, 0.2)
        else:
            assert knn.count_new_rows(n_major, n_minor, 0.2) == made


def test_kmeans_matches_asdkit(case, units):
    data, atol = case
    source, target, test = units
    fitted = kmeans.fit_kmeans(source, 16, 1, 0)
    np.testing.assert_array_equal(fitted.labels_, data["out.kmeans_source_labels"])
    assert fitted.n_iter_ == data["out.kmeans_n_iter"]
    # ASDKit's run started from these k-means++ rows; Lloyd from them gives our centres
    from sklearn.cluster import KMeans

    again = KMeans(16, init=source[data["out.kmeans_init_indices"]], n_init=1).fit(source)
    np.testing.assert_allclose(again.cluster_centers_, fitted.cluster_centers_, atol=1e-6, rtol=0)
    # scikit-learn's default n_init "auto" (ASDKit's run) is 1 for k-means++: the same centres
    auto = KMeans(16, random_state=0, n_init="auto").fit(source)
    np.testing.assert_array_equal(auto.cluster_centers_, fitted.cluster_centers_)
    centres = np.concatenate([base.l2_normalise(fitted.cluster_centers_.astype(source.dtype)), target])
    np.testing.assert_allclose(centres, data["out.kmeans_centres"], atol=atol["kmeans_centres"], rtol=0)


def test_knn_rescale_matches_asdkit(case, units):
    data, atol = case
    source, target, test = units
    bank = np.concatenate([source, target])
    np.testing.assert_allclose(bank, data["out.rescale_ref_bank"], atol=atol["rescale_score"], rtol=0)
    constants = 2.0 * rescale.rescale_constants(bank, 4, "euclidean")  # the metric halves distances
    np.testing.assert_allclose(
        constants, data["out.rescale_ref_norm_const"], atol=atol["rescale_score"], rtol=0
    )
    np.testing.assert_allclose(
        (2.0 * base.distances(test, bank, "euclidean") / constants).min(1),
        data["out.rescale_score"],
        atol=atol["rescale_score"],
        rtol=0,
    )


def _split(embeddings: np.ndarray, target: np.ndarray, split: str) -> Split:
    records = [
        ClipRecord(f"/x/m/{split}/{i}.wav", "m", "00", "target" if t else "source", split, "normal")
        for i, t in enumerate(target)
    ]
    return Split(embeddings, np.zeros((len(records), 1), np.float32), ["s"], records)


@pytest.mark.parametrize(
    "name, key",
    [
        ("knn", "knn_score"),
        ("smote_knn", "smote_knn_score"),
        ("kmeans", "kmeans_score"),
        ("rescale", "rescale_score"),
    ],
)
def test_the_back_ends_evaluate_runs_under_the_recipe_give_asdkits_scores(case, name, key):
    data, atol = case
    normal = _split(
        np.concatenate([data["in.source"], data["in.target"]]),
        np.r_[np.zeros(len(data["in.source"])), np.ones(len(data["in.target"]))],
        "train",
    )
    test = _split(data["in.test"], data["in.test_is_target"], "test")
    settings = vars(check_script_arguments(ROOT / "evaluate.py", ["--recipe", "asdkit-eat-lora"]))
    assert name in settings["backends"]
    factory, grouping = backend_factory(name, settings)
    assert grouping == "machine_type"  # ASDKit's sep_section false
    scorer = factory(("m",), normal)
    np.testing.assert_allclose(scorer.score(test), data[f"out.{key}"], atol=atol[key], rtol=0)
    # out-of-sample training scores: a normal is never its own reference (plain k-NN would give 0)
    training = scorer.training_scores(normal)
    assert training.shape == (len(normal),) and np.all(training > 1e-6)


def test_bad_inputs_are_clear_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown back end 'lof'"):
        make_backend("lof", {})
    with pytest.raises(ValueError, match="at least 3 target rows"):
        knn.smote_rows(
            base.l2_normalise(rng.normal(size=(60, 4))), base.l2_normalise(rng.normal(size=(2, 4))), 0.2, 2, 0
        )
    with pytest.raises(ValueError, match="at least 16 source rows"):
        kmeans.fit_kmeans(base.l2_normalise(rng.normal(size=(10, 4))), 16, 1, 0)
