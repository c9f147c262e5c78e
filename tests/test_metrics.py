"""asd/report/metrics.py: the official evaluator's numbers, hand-computed cases, each year's rules, files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

import asd.report.evaluation as ev
from asd.data.names import ClipRecord
from asd.report import comparison, metrics, results, tables
from asd.score import thresholds

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official_evaluator_fixture"


def _record(
    name: str,
    machine: str = "fan",
    section: str = "00",
    domain: str | None = "source",
    label: str | None = "normal",
) -> ClipRecord:
    return ClipRecord(
        path=f"/data/{machine}/test/{name}.wav",
        machine_type=machine,
        section=section,
        domain=domain,
        split="test",
        label=label,
        attributes=(),
    )


def _mcclish(raw_area: float, max_fpr: float = 0.1) -> float:
    """McClish's standardisation of a raw partial area (what sklearn's max_fpr returns)."""
    return 0.5 * (1 + (raw_area - max_fpr**2 / 2) / (max_fpr - max_fpr**2 / 2))


# ----------------------------------------------------------------------------- pAUC


def test_pauc_is_the_mcclish_value_hand_computed():
    # 10 normals, 2 anomalies: A1 on top, then one normal, then A2.
    # ROC: (0,0) -> (0,.5) -> (.1,.5) -> (.1,1) -> (1,1): raw area up to FPR .1 = .1 * .5 = .05
    normal = [9.0] + [float(i) for i in range(9)]
    scores = [10.0, 8.5] + normal
    y = [1, 1] + [0] * 10
    assert metrics.pauc(y, scores) == pytest.approx(0.5 * (1 + 0.045 / 0.095))
    assert metrics.pauc(y, scores) == pytest.approx(_mcclish(0.05))
    assert roc_auc_score(y, scores) == pytest.approx(19 / 20)


def test_pauc_inside_a_tie_and_at_the_extremes():
    # 4 normals, 1 anomaly tied with the top normal: the ROC goes straight from (0,0) to (.25,1);
    # the raw area up to .1 is the triangle .5 * .1 * .4 = .02
    assert metrics.pauc([1, 0, 0, 0, 0], [5, 5, 3, 2, 1]) == pytest.approx(_mcclish(0.02))
    assert metrics.pauc([1, 0, 0, 0, 0], [9, 5, 3, 2, 1]) == pytest.approx(1.0)
    # the anomaly below every normal: raw area 0, McClish's floor (not 0)
    assert metrics.pauc([1, 0, 0, 0, 0], [0, 5, 3, 2, 1]) == pytest.approx(_mcclish(0.0))
    # chance level is 0.5 on this scale, not 0.05
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 20000)
    assert metrics.pauc(y, rng.normal(size=y.size)) == pytest.approx(0.5, abs=0.02)


def test_pauc_equals_sklearn_max_fpr():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 200)
        s = rng.normal(size=200) + 0.8 * y
        assert metrics.pauc(y, s) == roc_auc_score(y, s, max_fpr=0.1)


def test_harmonic_mean_floors_at_epsilon_like_the_evaluator():
    assert metrics.harmonic_mean([1.0, 0.5, 0.5]) == pytest.approx(0.6)
    floored = metrics.harmonic_mean([0.8, 0.0])
    assert 0.0 < floored < 1e-15
    assert floored == pytest.approx(scipy.stats.hmean([0.8, np.finfo(float).eps]))
    assert np.isnan(metrics.harmonic_mean([]))


# ----------------------------------------------------------------------------- the official evaluator's own output


def _read_fixture_result() -> list[list[str]]:
    with open(FIXTURE / "evaluator_output" / "result.csv", newline="") as f:
        return [row for row in csv.reader(f)]


def _assert_rows_match(ours: list[list[str]], theirs: list[list[str]]) -> None:
    assert len(ours) == len(theirs)
    for our_row, their_row in zip(ours, theirs):
        assert len(our_row) == len(their_row), (our_row, their_row)
        for a, b in zip(our_row, their_row):
            try:
                expected = float(b)
            except ValueError:
                assert a == b
            else:
                assert float(a) == pytest.approx(expected, abs=1e-6), (our_row, their_row)


@pytest.fixture(scope="module", params=["named clips", "anonymised clips + ground truth"])
def fixture_evaluation(request):
    """The fixture's submission measured from its clip names, and (the evaluation-set case) from its
    anonymised names with the evaluator's ground-truth files."""
    if not FIXTURE.is_dir():
        pytest.fail(f"official evaluator fixture not found at {FIXTURE}")
    if request.param == "named clips":
        return results.measure_results_dir(FIXTURE / "scores")[0]
    return results.measure_results_dir(FIXTURE / "scores_anonymised", ground_truth=FIXTURE / "ground_truth")[
        0
    ]


def _their_result_rows() -> list[list[str]]:
    """The evaluator's result.csv without its "official score ci95" row and what follows."""
    theirs = _read_fixture_result()
    ci95 = next(i for i, row in enumerate(theirs) if row and row[0] == "official score ci95")
    theirs = theirs[:ci95]
    while theirs and not theirs[-1]:
        theirs.pop()
    return theirs


def test_reproduces_the_official_evaluators_result_csv(fixture_evaluation):
    """Every per-machine AUC (all/source/target), pAUC, precision, recall and F1, every mean row and
    the official score of the evaluator's result.csv, from the score files alone (ci95 row aside)."""
    assert fixture_evaluation.year == "2022+" and fixture_evaluation.complete
    _assert_rows_match(tables.evaluator_rows(fixture_evaluation), _their_result_rows())


def test_reproduces_the_official_score_summaries(fixture_evaluation):
    with open(FIXTURE / "evaluator_output" / "official_score.csv", newline="") as f:
        header, values = list(csv.reader(f))
    official = dict(zip(header[1:], map(float, values[1:])))
    evaluation = fixture_evaluation
    assert evaluation.official_score == pytest.approx(official["official score"], abs=1e-6)
    assert evaluation.score_label() == "official score"
    source, target = evaluation.column("AUC (source)"), evaluation.column("AUC (target)")
    assert metrics.arithmetic_mean(source + target) == pytest.approx(official["arithmetic mean"], abs=1e-6)
    assert metrics.harmonic_mean(source) == pytest.approx(official["harmonic mean (source)"], abs=1e-6)
    assert metrics.harmonic_mean(target) == pytest.approx(official["harmonic mean (target)"], abs=1e-6)
    for s in evaluation.sections:
        assert s.values["AUC (source)"] == pytest.approx(official[f"{s.machine_type} AUC (source)"], abs=1e-6)
        assert s.values["AUC (target)"] == pytest.approx(official[f"{s.machine_type} AUC (target)"], abs=1e-6)
    with open(FIXTURE / "evaluator_output" / "official_score_paper.csv", newline="") as f:
        rows = list(csv.reader(f))
    paper = {row[1]: row for row in rows[1:]}
    machines = rows[0][4:]
    pauc_by_machine = {s.machine_type: s.values["pAUC"] for s in evaluation.sections}
    for machine, value in zip(machines, paper["pAUC (source, target)"][4:]):
        assert pauc_by_machine[machine] == pytest.approx(float(value), abs=1e-6)
    assert metrics.harmonic_mean(evaluation.column("pAUC")) == pytest.approx(
        float(paper["pAUC (source, target)"][2])
    )
    # the printed summary table's overall harmonic means are the paper table's h-means
    header_row, rows = tables.table_rows(evaluation)
    overall = next(r for r in rows if r[:2] == ["all", "harmonic mean"])
    assert overall[2:] == pytest.approx(
        [
            float(paper["AUC (source)"][2]),
            float(paper["AUC (target)"][2]),
            float(paper["pAUC (source, target)"][2]),
        ],
        abs=1e-6,
    )


def test_evaluate_scores_an_anonymised_submission_with_the_ground_truth(tmp_path, capsys):
    """evaluate.py --score_results_dir --ground_truth writes what the official evaluator wrote."""
    import evaluate

    if not FIXTURE.is_dir():
        pytest.fail(f"official evaluator fixture not found at {FIXTURE}")
    out = tmp_path / "scored"
    args = ["--score_results_dir", str(FIXTURE / "scores_anonymised"), "--scored_dir", str(out)]
    summary = evaluate.main(args + ["--ground_truth", str(FIXTURE / "ground_truth"), "--plots", "false"])
    with open(out / "evaluator_result.csv", newline="") as f:
        _assert_rows_match(list(csv.reader(f)), _their_result_rows())
    with open(FIXTURE / "evaluator_output" / "official_score.csv", newline="") as f:
        header, values = list(csv.reader(f))
    assert summary["official_score"] == pytest.approx(float(values[header.index("official score")]), abs=1e-6)
    assert "official score" in capsys.readouterr().out and (out / "report.html").is_file()
    # without the ground truth: the submission is written, no metric is computed or called a score
    summary = evaluate.main(args + ["--plots", "false", "--report", "false"])
    assert summary["official_score"] is None and summary["score"] is None
    assert "no metric can be computed without them" in capsys.readouterr().out
    assert not (out / "evaluator_result.csv").exists()


def test_ground_truth_and_clips_must_match(tmp_path):
    if not FIXTURE.is_dir():
        pytest.fail(f"official evaluator fixture not found at {FIXTURE}")
    truth = tmp_path / "gt"
    shutil.copytree(FIXTURE / "ground_truth", truth)
    scores = tmp_path / "scores"
    shutil.copytree(FIXTURE / "scores_anonymised", scores)
    data = truth / "ground_truth_data" / "ground_truth_Scanner_section_00_test.csv"
    domain = truth / "ground_truth_domain" / data.name
    lines, domain_lines = data.read_text().splitlines(), domain.read_text().splitlines()
    # a clip without a row
    data.write_text("\n".join(lines[1:]) + "\n")
    domain.write_text("\n".join(domain_lines[1:]) + "\n")
    first = lines[0].split(",")[0]
    with pytest.raises(ValueError, match=f"Scanner/test/{first}: no row for {first} in .*{data.name}"):
        results.measure_results_dir(scores, ground_truth=truth)
    # a row without a clip
    data.write_text("\n".join(lines + ["section_00_9999.wav,0"]) + "\n")
    domain.write_text("\n".join(domain_lines + ["section_00_9999.wav,1"]) + "\n")
    with pytest.raises(
        ValueError, match=f"{data.name} lists section_00_9999.wav .* no such Scanner section 00"
    ):
        results.measure_results_dir(scores, ground_truth=truth)
    # the two files disagree, or one has no partner
    domain.write_text("\n".join(domain_lines) + "\n")
    with pytest.raises(ValueError, match="list different clips"):
        results.measure_results_dir(scores, ground_truth=truth)
    domain.unlink()
    with pytest.raises(FileNotFoundError, match="has no partner"):
        results.measure_results_dir(scores, ground_truth=truth)


# ----------------------------------------------------------------------------- each year's rules, by hand


def _section_case(machine: str = "fan", section: str = "00"):
    """Source normals .1 .2 .3, target normals .5 .6, anomalies .4 (source) .7 (target)."""
    records, scores = [], {}
    for i, (dom, lab, s) in enumerate(
        [
            ("source", "normal", 0.1),
            ("source", "normal", 0.2),
            ("source", "normal", 0.3),
            ("target", "normal", 0.5),
            ("target", "normal", 0.6),
            ("source", "anomaly", 0.4),
            ("target", "anomaly", 0.7),
        ]
    ):
        r = _record(f"section_{section}_{dom}_test_{lab}_{i:04d}", machine, section, dom, lab)
        records.append(r)
        scores[r.path] = s
    return records, scores


def test_2022_rules_hand_computed():
    records, scores = _section_case()
    evaluation = ev.compute_official(scores, records, year="2022+")
    (row,) = evaluation.sections
    assert row.values["AUC (source)"] == pytest.approx(1.0)  # both anomalies above every source normal
    assert row.values["AUC (target)"] == pytest.approx(0.5)  # .7 beats both target normals, .4 beats none
    # all clips: .7(A) .6 .5 .4(A) ...; FPR steps of .2: TPR .5 up to FPR .1 -> raw area .05
    assert row.values["pAUC"] == pytest.approx(_mcclish(0.05))
    assert (row.n_normal, row.n_anomaly) == (5, 2)
    assert evaluation.official_score == pytest.approx(scipy.stats.hmean([1.0, 0.5, _mcclish(0.05)]))


def test_2021_rules_measure_each_domain_on_its_own_clips():
    records, scores = _section_case()
    evaluation = ev.compute_official(scores, records, year="2021")
    (row,) = evaluation.sections
    # source: .4 above .1 .2 .3; target: .7 above .5 .6 -> everything perfect
    assert row.values == pytest.approx(
        {"AUC (source)": 1.0, "pAUC (source)": 1.0, "AUC (target)": 1.0, "pAUC (target)": 1.0}
    )
    assert evaluation.official_score == pytest.approx(1.0)


def test_2020_rules_auc_and_pauc_with_arithmetic_means():
    records = [_record(f"normal_id_04_{i:08d}", "pump", "04", None, "normal") for i in range(10)]
    records += [_record(f"anomaly_id_04_{i:08d}", "pump", "04", None, "anomaly") for i in range(2)]
    records += [_record(f"normal_id_06_{i:08d}", "pump", "06", None, "normal") for i in range(2)]
    records += [_record(f"anomaly_id_06_{i:08d}", "pump", "06", None, "anomaly") for i in range(2)]
    values = [9.0] + list(range(9)) + [10.0, 8.5] + [0.0, 1.0, 2.0, 3.0]
    scores = {r.path: s for r, s in zip(records, values)}
    evaluation = ev.compute_official(scores, records)
    assert evaluation.year == "2020"
    id04, id06 = evaluation.sections
    assert id04.values == pytest.approx({"AUC": 0.95, "pAUC": _mcclish(0.05)})
    assert id06.values == pytest.approx({"AUC": 1.0, "pAUC": 1.0})
    assert evaluation.official_score is None  # no harmonic official score in 2020
    assert evaluation.score == pytest.approx(np.mean([0.95, _mcclish(0.05), 1.0, 1.0]))
    text = tables.format_table(evaluation)
    assert "AUC (source)" not in text and "DCASE 2020 rules" in text and "official score" not in text
    header, rows = tables.table_rows(evaluation)
    pump_mean = next(r for r in rows if r[:2] == ["pump", "arithmetic mean"])
    assert pump_mean[2:] == pytest.approx([0.975, (_mcclish(0.05) + 1) / 2])


def test_rules_follow_the_detected_year(samples_dir, tmp_path):
    from asd.base.years import detect_year
    from asd.data.dataset import discover_clips

    assert detect_year(discover_clips(samples_dir / "dcase2020_dev")).rules == "2020"
    assert detect_year(discover_clips(samples_dir / "dcase2023_dev")).rules == "2022+"
    several = [_record(f"section_{s}_source_test_normal_0000", "fan", s) for s in ("00", "01", "02")]
    assert detect_year(several, [tmp_path]).rules == "2021"
    (tmp_path / "fan").mkdir()
    (tmp_path / "fan" / "attributes_00.csv").write_text("file_name,d1p,d1v\n")
    assert detect_year(several, [tmp_path]).rules == "2022+"
    scores = {r.path: 0.0 for r in several}
    assert ev.compute_official(scores, several, data_dir=tmp_path).year == "2022+"


# ----------------------------------------------------------------------------- missing parts


def test_missing_parts_are_named_and_the_number_is_not_called_official(capsys):
    fan, scores = _section_case("fan", "00")
    valve = [r for r in _section_case("valve", "00")[0] if r.domain == "source"]  # no target normals
    scores.update({r.path: 0.0 for r in valve})
    evaluation = ev.compute_official(scores, fan + valve, expected=[("pump", "00")], year="2022+")
    assert [s.name for s in evaluation.measured] == ["fan section 00"]
    assert not evaluation.complete and evaluation.official_score is None
    assert evaluation.missing_lines() == [
        "pump section 00: no test clips",
        "valve section 00: no target-domain normal test clips",
    ]
    label = evaluation.score_label()
    assert "NOT the official score" in label and "over 1 of 3 machine type/sections" in label
    assert evaluation.score == pytest.approx(scipy.stats.hmean([1.0, 0.5, _mcclish(0.05)]))
    text = tables.format_table(evaluation)
    assert "pump section 00: no test clips" in text and "\nofficial score" not in text
    with pytest.raises(ValueError, match="every section measured"):
        tables.evaluator_rows(evaluation)


def test_missing_score_is_an_error_and_reversed_ranking_gives_zero():
    fan, fan_scores = _section_case("fan", "00")
    valve, valve_scores = _section_case("valve", "01")
    valve_scores = {p: -s for p, s in valve_scores.items()}  # reversed ranking: AUC (source) 0
    evaluation = ev.compute_official({**fan_scores, **valve_scores}, fan + valve, year="2022+")
    assert [(s.machine_type, s.section) for s in evaluation.sections] == [("fan", "00"), ("valve", "01")]
    assert evaluation.official_score < 1e-14
    with pytest.raises(KeyError, match="no score"):
        ev.compute_official(fan_scores, fan + valve)


def test_real_dcase_names_give_the_right_table(samples_dir):
    from asd.data.dataset import discover_clips

    records = discover_clips(samples_dir / "dcase2020_dev", splits=("test",))
    scores = {r.path: float(r.label == "anomaly") + 0.01 * i for i, r in enumerate(records)}
    evaluation = ev.compute_official(scores, records)
    assert {(s.machine_type, s.section) for s in evaluation.sections} >= {("ToyCar", "04"), ("fan", "06")}
    assert all(s.values == {"AUC": 1.0, "pAUC": 1.0} for s in evaluation.sections)
    # 2023 names: sections without target (or source) normals or without anomalies are named
    records = discover_clips(samples_dir / "dcase2023_dev", splits=("test",))
    scores = {r.path: float(r.label == "anomaly") for r in records}
    evaluation = ev.compute_official(scores, records)
    missing = evaluation.missing_lines()
    assert "valve section 00: no source-domain normal test clips" in missing
    assert "bearing section 00: no target-domain normal test clips" in missing
    assert "ToyCar section 00: no anomalous test clips" in missing
    assert evaluation.official_score is None


# ----------------------------------------------------------------------------- threshold


def _free_gamma_threshold(scores, percentile: float = 0.9) -> float:
    return thresholds.threshold_info(scores, percentile, location="free")["threshold"]


def test_free_gamma_threshold_recovers_the_gamma_quantile_and_shifts_with_the_data():
    rng = np.random.default_rng(1)
    x = scipy.stats.gamma.rvs(2.0, scale=1.5, size=3000, random_state=rng)
    true = scipy.stats.gamma.ppf(0.9, 2.0, scale=1.5)
    threshold = _free_gamma_threshold(x, 0.9)
    assert threshold == pytest.approx(true, rel=0.05)
    assert np.mean(x > threshold) == pytest.approx(0.1, abs=0.02)
    shifted = _free_gamma_threshold(x - 10.0, 0.9)
    assert shifted == pytest.approx(threshold - 10.0, abs=0.1)
    assert _free_gamma_threshold([2.0] * 10) == 2.0


def test_gamma_threshold_with_location_zero_as_the_issue_defines_it():
    """location 0: scipy's gamma.fit(scores, floc=0); the free fit pins its location near the smallest
    score and puts the threshold too low on a skewed sample (issue 19)."""
    rng = np.random.default_rng(2)
    x = scipy.stats.gamma.rvs(1.5, scale=0.2, size=40, random_state=rng)
    info = thresholds.threshold_info(x, 0.9, location="zero")
    shape, _, scale = scipy.stats.gamma.fit(x, floc=0)
    assert info["threshold"] == pytest.approx(scipy.stats.gamma.ppf(0.9, shape, scale=scale))
    assert info["method"] == "gamma, location 0" and info["n_scores"] == 40
    assert info["empirical_quantile"] == pytest.approx(np.quantile(x, 0.9))
    assert info["training_share_above"] == pytest.approx(np.mean(x > info["threshold"]))
    assert info["expected_false_alarm_rate"] == pytest.approx(0.1)
    # standardised scores (some negative) cannot follow a gamma at 0: the empirical quantile, said so
    negative = thresholds.threshold_info(x - 0.3, 0.9, location="zero")
    assert negative["threshold"] == pytest.approx(np.quantile(x - 0.3, 0.9))
    assert "not all positive" in negative["method"]
    with pytest.raises(ValueError, match="gamma location"):
        thresholds.threshold_info(x, location="shifted")


def test_domains_with_enough_training_scores_get_their_own_threshold():
    from asd.score.scoring import TrainScores

    records = [_record(f"a{i}", "fan", "00", d, "normal") for i, d in enumerate(["source", "target", None])]
    rng = np.random.default_rng(3)
    source, target = rng.gamma(3.0, 0.1, 30), rng.gamma(3.0, 0.5, thresholds.MIN_DOMAIN_SCORES)
    train = TrainScores(
        {("fan", "00"): np.r_[source, target]},
        {("fan", "00"): ["source"] * 30 + ["target"] * len(target)},
    )
    table = thresholds.threshold_table(records, train)
    assert table[("fan", "00", "source")]["threshold"] == thresholds.threshold_info(source)["threshold"]
    assert table[("fan", "00", "target")]["threshold"] == thresholds.threshold_info(target)["threshold"]
    pooled = table[("fan", "00")]["threshold"]
    assert pooled == thresholds.threshold_info(np.r_[source, target])["threshold"]
    # each clip is judged by its domain's threshold; a clip without a domain by the section's
    scores = {records[0].path: pooled, records[1].path: pooled, records[2].path: pooled}
    decided = thresholds.decide(scores, records, table)
    expected = [
        int(pooled > table[("fan", "00", "source")]["threshold"]),
        int(pooled > table[("fan", "00", "target")]["threshold"]),
        0,
    ]
    assert [decided[r.path] for r in records] == expected and expected[:2] == [1, 0]
    # one score short of the minimum: no own threshold for the target domain
    short = TrainScores(
        {("fan", "00"): train[("fan", "00")][:-1]}, {("fan", "00"): train.domains[("fan", "00")][:-1]}
    )
    assert ("fan", "00", "target") not in thresholds.threshold_table(records, short)


# ----------------------------------------------------------------------------- files


def test_write_results_files_round_trip_and_replace_the_old_folder(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "anomaly_score_old_section_09_test.csv").write_text("stale\n")  # an earlier run's file
    records, scores = _section_case("fan", "00")
    eval_records = [_record(f"section_03_{i:04d}", "fan", "03", None, None) for i in range(4)]
    scores.update({r.path: float(i) for i, r in enumerate(eval_records)})
    train = {("fan", "00"): np.linspace(0.0, 0.45, 50), ("fan", "03"): np.linspace(0.0, 2.0, 50)}
    summary = results.write_results(
        scores, records + eval_records, train, out, scorer="test", plots=True, year="2022+"
    )

    assert not (out / "anomaly_score_old_section_09_test.csv").exists()
    rows = list(csv.reader(open(out / "anomaly_score_fan_section_00_test.csv")))
    assert [r[0] for r in rows] == [r.file_name for r in records]  # no header, file names
    assert [float(r[1]) for r in rows] == pytest.approx([scores[r.path] for r in records])
    decisions = list(csv.reader(open(out / "decision_result_fan_section_00_test.csv")))
    info = thresholds.threshold_info(train[("fan", "00")])  # a 0 among the scores: empirical quantile
    assert info["method"].startswith("empirical quantile (scores not all positive")
    threshold = info["threshold"]
    assert threshold == np.quantile(train[("fan", "00")], 0.9)
    assert [int(d[1]) for d in decisions] == [int(scores[r.path] > threshold) for r in records]
    recorded = {(t["section"], t["domain"]): t for t in summary["decision_thresholds"]}
    assert recorded[("00", "all")]["threshold"] == threshold and recorded[("00", "all")]["n_scores"] == 50
    assert recorded[("00", "all")]["expected_false_alarm_rate"] == pytest.approx(0.1)
    assert len(list(csv.reader(open(out / "anomaly_score_fan_section_03_test.csv")))) == 4
    # the evaluation-set section is unlabelled: named as missing, the number is not official
    assert summary["official_score"] is None and not summary["complete"]
    assert summary["missing"] == ["fan section 03: no labelled test clips (evaluation-set names)"]
    assert summary["score"] == pytest.approx(scipy.stats.hmean([1.0, 0.5, _mcclish(0.05)]))
    assert json.loads((out / "summary.json").read_text())["scorer"] == "test"
    assert not (out / "evaluator_result.csv").exists()  # the evaluator would not score this folder
    for png in ("roc_fan.png", "hist_fan.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*")) and not list(out.glob(".*"))
    assert "NOT the official score" in capsys.readouterr().out
    # what was written is read back, from the CSVs alone, as the same evaluation
    again = results.measure_results_dir(out, year="2022+")[0]
    assert again.sections[0].values == summary["sections"][0]["values"]


def test_complete_folder_gets_the_evaluator_layout(tmp_path):
    fan, scores = _section_case("fan", "00")
    valve, valve_scores = _section_case("valve", "00")
    scores.update(valve_scores)
    train = {("fan", "00"): np.linspace(0.0, 0.45, 50), ("valve", "00"): np.linspace(0.0, 0.45, 50)}
    summary = results.write_results(scores, fan + valve, train, tmp_path / "r", scorer="x", plots=False)
    assert summary["official_score"] == pytest.approx(scipy.stats.hmean([1.0, 0.5, _mcclish(0.05)]))
    rows = list(csv.reader(open(tmp_path / "r" / "evaluator_result.csv")))
    assert rows[0] == ["fan"] and rows[-1][0] == "official score"
    assert float(rows[-1][2]) == pytest.approx(summary["official_score"])


def test_write_results_without_training_scores_names_the_section(tmp_path):
    records, scores = _section_case("fan", "00")
    with pytest.raises(ValueError, match="fan section 00"):
        results.write_results(scores, records, {}, tmp_path, scorer="x", plots=False)


def test_comparison_rows_carry_each_scorers_label():
    records, scores = _section_case("fan", "00")
    complete = tables.summary_dict(ev.compute_official(scores, records), "a")
    partial = tables.summary_dict(ev.compute_official(scores, records, expected=[("pump", "00")]), "b")
    rows = comparison.comparison_rows({"a": complete, "b": partial})
    overall = {r["scorer"]: r for r in rows if r["machine_type"] == "all"}
    assert overall["a"]["label"] == "official score"
    assert "over 1 of 2" in overall["b"]["label"]
    text = comparison.format_comparison(rows, "x")
    assert "a: official score" in text and "NOT the official score" in text


def _write_truth(folder: Path, machine: str, section: str, rows: dict[str, tuple[int, int]]) -> Path:
    """The evaluator's ground-truth files of one section: {clip name: (anomaly, target)}."""
    for kind, column in (("data", 0), ("domain", 1)):
        (folder / f"ground_truth_{kind}").mkdir(parents=True, exist_ok=True)
        lines = [f"{name},{values[column]}" for name, values in rows.items()]
        (folder / f"ground_truth_{kind}" / f"ground_truth_{machine}_section_{section}_test.csv").write_text(
            "\n".join(lines) + "\n"
        )
    return folder


def test_decisions_of_anonymised_clips_do_not_use_the_ground_truth_domains(tmp_path):
    """Domain thresholds exist, but an anonymised clip's domain is unknown: it is decided by its section's
    threshold with and without --ground_truth (the ground truth serves the metrics only)."""
    from asd.score.scoring import TrainScores

    truth_rows = {f"section_00_{i:04d}.wav": (i % 2, int(i >= 4)) for i in range(8)}
    records = [_record(Path(name).stem, "fan", "00", None, None) for name in truth_rows]
    scores = {r.path: 0.5 + 0.1 * i for i, r in enumerate(records)}
    train = TrainScores(
        {("fan", "00"): np.concatenate([np.linspace(0.1, 0.3, 20), np.linspace(1.0, 2.0, 20)])},
        {("fan", "00"): ["source"] * 20 + ["target"] * 20},
    )
    truth = _write_truth(tmp_path / "truth", "fan", "00", truth_rows)
    table = thresholds.threshold_table(records, train)
    assert table[("fan", "00", "source")]["threshold"] < 0.5 < table[("fan", "00")]["threshold"]
    blind = results.write_results(scores, records, train, tmp_path / "blind", scorer="x", plots=False)
    known = results.write_results(
        scores, records, train, tmp_path / "known", scorer="x", plots=False, ground_truth=truth
    )
    name = "decision_result_fan_section_00_test.csv"
    decided = list(csv.reader(open(tmp_path / "known" / name)))
    assert decided == list(csv.reader(open(tmp_path / "blind" / name)))
    section = table[("fan", "00")]["threshold"]
    assert [int(d[1]) for d in decided] == [int(scores[r.path] > section) for r in records]
    assert blind["score"] is None and known["sections"][0]["values"]  # the ground truth gives the metrics


def test_ground_truth_of_sections_without_clips_is_ignored_and_named(tmp_path, capsys):
    """One ground-truth folder for a development and an evaluation folder: each folder's scorer needs rows
    only for its own sections; a present section must still match its clips exactly."""
    from asd.data.ground_truth import apply_ground_truth

    fan = {f"section_00_{i:04d}.wav": (i % 2, i // 2) for i in range(4)}
    truth = _write_truth(tmp_path / "truth", "fan", "00", fan)
    _write_truth(truth, "pump", "00", {"section_00_0000.wav": (0, 0)})  # a machine type with no clips
    _write_truth(truth, "fan", "03", {"section_03_0000.wav": (1, 0)})  # a section with no clips
    records = [_record(Path(name).stem, "fan", "00", None, None) for name in fan]
    labelled = apply_ground_truth(records, truth)
    assert [(r.label, r.domain) for r in labelled] == [
        (("normal", "anomaly")[a], ("source", "target")[t]) for a, t in fan.values()
    ]
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and "ground_truth_pump_section_00_test.csv" in printed[0]
    assert "ground_truth_fan_section_03_test.csv" in printed[0]
    with pytest.raises(ValueError, match="lists section_00_0003.wav .* no such fan section 00"):
        apply_ground_truth(records[:3], truth)
