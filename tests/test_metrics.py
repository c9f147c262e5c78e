"""metrics.py: DCASE AUC/pAUC against hand-computed cases and scikit-learn, CSVs, gamma threshold."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

import metrics
from dataset import ClipRecord


def _record(name: str, machine: str = "fan", section: str = "00", domain: str | None = "source",
            label: str = "normal") -> ClipRecord:
    return ClipRecord(path=f"/data/{machine}/test/{name}.wav", machine_type=machine, section=section,
                      domain=domain, split="test", label=label, attributes=())


# ----------------------------------------------------------------------------- pAUC


def test_partial_auc_hand_computed_step_curve():
    # 10 normals, 2 anomalies: A1 on top, then one normal, then A2.
    # ROC: (0,0) -> (0,.5) -> (.1,.5) -> (.1,1) -> (1,1): area up to FPR .1 = .1 * .5 -> pAUC .5
    normal = [9.0] + [float(i) for i in range(9)]
    scores = [10.0, 8.5] + normal
    y = [1, 1] + [0] * 10
    assert metrics.partial_auc(y, scores, 0.1) == pytest.approx(0.5)
    assert roc_auc_score(y, scores) == pytest.approx(19 / 20)
    # sklearn's max_fpr value is McClish-standardised: .5 * (1 + (.05 - .005) / (.1 - .005))
    mcclish = 0.5 * (1 + 0.045 / 0.095)
    assert roc_auc_score(y, scores, max_fpr=0.1) == pytest.approx(mcclish)
    assert metrics.mcclish_from_partial(0.5, 0.1) == pytest.approx(mcclish)


def test_partial_auc_interpolates_inside_a_tie_and_extremes():
    # 4 normals, 1 anomaly tied with the top normal: the ROC goes straight from (0,0) to (.25,1);
    # the area up to .1 is the triangle .5 * .1 * .4 = .02 -> pAUC .2
    assert metrics.partial_auc([1, 0, 0, 0, 0], [5, 5, 3, 2, 1], 0.1) == pytest.approx(0.2)
    assert metrics.partial_auc([1, 0, 0, 0, 0], [9, 5, 3, 2, 1], 0.1) == pytest.approx(1.0)
    assert metrics.partial_auc([1, 0, 0, 0, 0], [4, 5, 3, 2, 1], 0.1) == pytest.approx(0.0)


def test_partial_auc_matches_sklearn_after_mcclish_conversion():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 200)
        s = rng.normal(size=200) + 0.8 * y
        ours = metrics.partial_auc(y, s, 0.1)
        assert metrics.mcclish_from_partial(ours, 0.1) == pytest.approx(roc_auc_score(y, s, max_fpr=0.1))
        # with max_fpr = 1 the pAUC is the AUC
        assert metrics.partial_auc(y, s, 1.0) == pytest.approx(roc_auc_score(y, s))


def test_harmonic_mean():
    assert metrics.harmonic_mean([1.0, 0.5, 0.5]) == pytest.approx(0.6)
    assert metrics.harmonic_mean([0.8, 0.0]) == 0.0
    assert np.isnan(metrics.harmonic_mean([]))


# ----------------------------------------------------------------------------- official table


def _section_case(machine: str = "fan", section: str = "00"):
    """Source normals .1 .2 .3, target normals .5 .6, anomalies .4 .7 (anomalies count for both)."""
    records, scores = [], {}
    for i, (dom, lab, s) in enumerate([("source", "normal", .1), ("source", "normal", .2), ("source", "normal", .3),
                                       ("target", "normal", .5), ("target", "normal", .6),
                                       ("source", "anomaly", .4), ("target", "anomaly", .7)]):
        r = _record(f"section_{section}_{dom}_test_{lab}_{i:04d}", machine, section, dom, lab)
        records.append(r)
        scores[r.path] = s
    return records, scores


def test_compute_official_hand_computed():
    records, scores = _section_case()
    table, official = metrics.compute_official(scores, records)
    (row,) = table
    assert row.auc_source == pytest.approx(1.0)      # both anomalies above every source normal
    assert row.auc_target == pytest.approx(0.5)      # .7 beats both target normals, .4 beats none
    assert row.pauc == pytest.approx(0.5)            # FPR step .2: TPR .5 until the first normal
    assert row.auc is None and (row.n_normal, row.n_anomaly) == (5, 2)
    assert official == pytest.approx(3 / (1 / 1.0 + 1 / 0.5 + 1 / 0.5))


def test_single_domain_data_gets_auc_and_pauc_only():
    records = [_record(f"normal_id_04_{i:08d}", "pump", "04", None, "normal") for i in range(10)]
    records += [_record(f"anomaly_id_04_{i:08d}", "pump", "04", None, "anomaly") for i in range(2)]
    scores = {r.path: s for r, s in zip(records, [9.0] + list(range(9)) + [10.0, 8.5])}
    table, official = metrics.compute_official(scores, records)
    (row,) = table
    assert row.auc_source is None and row.auc_target is None
    assert row.auc == pytest.approx(0.95) and row.pauc == pytest.approx(0.5)
    assert official == pytest.approx(2 / (1 / 0.95 + 1 / 0.5))
    text = metrics.format_table(table, official)
    assert "AUC (source)" not in text and "pAUC" in text
    assert text.strip().splitlines()[-1].startswith("official score")


def test_official_score_spans_machines_and_missing_score_is_an_error():
    fan, fan_scores = _section_case("fan", "00")
    valve, valve_scores = _section_case("valve", "01")
    valve_scores = {p: -s for p, s in valve_scores.items()}      # reversed ranking: AUCs 0 -> official 0
    table, official = metrics.compute_official({**fan_scores, **valve_scores}, fan + valve)
    assert [(r.machine_type, r.section) for r in table] == [("fan", "00"), ("valve", "01")]
    assert official == 0.0
    with pytest.raises(KeyError, match="no score"):
        metrics.compute_official(fan_scores, fan + valve)


# ----------------------------------------------------------------------------- threshold


def test_gamma_threshold_recovers_the_gamma_quantile_and_shifts_with_the_data():
    rng = np.random.default_rng(1)
    x = scipy.stats.gamma.rvs(2.0, scale=1.5, size=3000, random_state=rng)
    true = scipy.stats.gamma.ppf(0.9, 2.0, scale=1.5)
    threshold = metrics.gamma_threshold(x, 0.9)
    assert threshold == pytest.approx(true, rel=0.05)
    assert np.mean(x > threshold) == pytest.approx(0.1, abs=0.02)
    # negative (standardised) scores: the fit runs on shifted data and the quantile shifts back
    shifted = metrics.gamma_threshold(x - 10.0, 0.9)
    assert shifted == pytest.approx(threshold - 10.0, abs=0.1)
    assert metrics.gamma_threshold([2.0] * 10) == 2.0


# ----------------------------------------------------------------------------- files


def test_write_results_csvs_summary_and_unlabelled_clips(tmp_path, capsys):
    records, scores = _section_case("fan", "00")
    eval_records = [_record(f"section_03_{i:04d}", "fan", "03", None, "unknown") for i in range(4)]
    scores.update({r.path: float(i) for i, r in enumerate(eval_records)})
    train = {("fan", "00"): np.linspace(0.0, 0.45, 50), ("fan", "03"): np.linspace(0.0, 2.0, 50)}
    summary = metrics.write_results(scores, records + eval_records, train, tmp_path, scorer="test", plots=True)

    rows = list(csv.reader(open(tmp_path / "anomaly_score_fan_section_00_test.csv")))
    assert [r[0] for r in rows] == [r.file_name for r in records]           # no header, file names
    assert [float(r[1]) for r in rows] == pytest.approx([scores[r.path] for r in records])
    decisions = list(csv.reader(open(tmp_path / "decision_result_fan_section_00_test.csv")))
    threshold = metrics.gamma_threshold(train[("fan", "00")])
    assert [int(d[1]) for d in decisions] == [int(scores[r.path] > threshold) for r in records]
    assert {d[1] for d in decisions} <= {"0", "1"}
    # evaluation-set clips: scores and decisions written, no metrics
    assert len(list(csv.reader(open(tmp_path / "anomaly_score_fan_section_03_test.csv")))) == 4
    assert (tmp_path / "decision_result_fan_section_03_test.csv").exists()
    sections = {s["section"]: s for s in summary["sections"]}
    assert sections["03"]["pauc"] is None and sections["03"]["n_unlabelled"] == 4
    assert summary["official_score"] == pytest.approx(0.6)
    assert json.loads((tmp_path / "summary.json").read_text())["scorer"] == "test"
    table = list(csv.reader(open(tmp_path / "summary.csv")))
    assert table[0][:2] == ["machine_type", "section"] and table[-1][1] == "official score"
    assert float(table[-1][2]) == pytest.approx(0.6)
    for png in ("roc_fan.png", "hist_fan.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*.tmp"))
    assert "official score" in capsys.readouterr().out


def test_write_results_without_training_scores_names_the_section(tmp_path):
    records, scores = _section_case("fan", "00")
    with pytest.raises(ValueError, match="fan section 00"):
        metrics.write_results(scores, records, {}, tmp_path, scorer="x", plots=False)


# ----------------------------------------------------------------------------- real DCASE names

def test_real_dcase_names_give_the_right_table(samples_dir):
    from dataset import discover_clips

    # 2020 names: no domain -> one AUC and a pAUC per machine type and section (id)
    records = discover_clips(samples_dir / "dcase2020_dev", splits=("test",))
    scores = {r.path: float(r.label == "anomaly") + 0.01 * i for i, r in enumerate(records)}
    table, official = metrics.compute_official(scores, records)
    assert {(r.machine_type, r.section) for r in table} >= {("ToyCar", "04"), ("fan", "06"), ("valve", "02")}
    assert all(r.auc == 1.0 and r.pauc == 1.0 and r.auc_source is None for r in table)
    assert official == 1.0
    # 2023 names: a section whose test set lacks target normals gets no AUC (target), with a warning
    records = discover_clips(samples_dir / "dcase2023_dev", splits=("test",))
    scores = {r.path: float(r.label == "anomaly") for r in records}
    with pytest.warns(UserWarning, match="normals in the test set") as caught:
        table, official = metrics.compute_official(scores, records)
    messages = " ".join(str(w.message) for w in caught)
    assert "valve section 00: no source normals" in messages
    assert "bearing section 00: no target normals" in messages
    valve = next(r for r in table if r.machine_type == "valve")
    assert valve.auc_target == 1.0 and valve.auc_source is None and valve.pauc == 1.0
    toycar = next(r for r in table if r.machine_type == "ToyCar")
    assert toycar.values() == [] and toycar.n_anomaly == 0          # normals only: nothing to measure
    assert official == 1.0
