"""Writing a scorer's results folder: the challenge's CSVs, summary files, plots and report, built aside
and swapped in whole; and reading an existing results folder back.

Files written into a results folder:
  anomaly_score_<machine>_section_<ss>_test.csv    "file name,score" (no header)
  decision_result_<machine>_section_<ss>_test.csv  "file name,0|1"   (no header)
  evaluator_result.csv   2022+ with full coverage: the official evaluator's result.csv layout
                         (its "official score ci95" row excepted)
  summary.csv, summary.json, roc_<machine>.png, hist_<machine>.png, report.html
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from asd.base.files import atomic_folder, atomic_write_text
from asd.data.ground_truth import apply_ground_truth
from asd.data.names import parse_clip_name
from asd.report.evaluation import (
    EVALUATOR_RULES,
    Evaluation,
    compute_official,
    group_by_machine,
    group_by_section,
)
from asd.report.plots import plot_machine
from asd.report.report import write_report
from asd.report.tables import (
    csv_cell,
    csv_text,
    evaluator_rows,
    format_table,
    summary_dict,
    table_rows,
)
from asd.score.thresholds import decide, domain_false_alarms, false_alarm_lines, threshold_table


def result_file_names(machine_type: str, section: str) -> tuple[str, str]:
    """The names the official evaluator looks for."""
    return (
        f"anomaly_score_{machine_type}_section_{section}_test.csv",
        f"decision_result_{machine_type}_section_{section}_test.csv",
    )


def write_result_csvs(
    scores: Mapping[str, float], decisions: Mapping[str, int], records: Sequence, out_dir: str | Path
) -> list[Path]:
    """Write the anomaly-score and decision CSVs of every machine type and section; returns the paths."""
    out_dir = Path(out_dir)
    written = []
    for (machine, section), recs in group_by_section(records).items():
        score_name, decision_name = result_file_names(machine, section)
        atomic_write_text(
            csv_text((r.file_name, f"{scores[r.path]:.8g}") for r in recs), out_dir / score_name
        )
        atomic_write_text(csv_text((r.file_name, decisions[r.path]) for r in recs), out_dir / decision_name)
        written += [out_dir / score_name, out_dir / decision_name]
    return written


def write_summary(
    evaluation: Evaluation,
    out_dir: str | Path,
    scorer: str,
    settings: Mapping | None = None,
    thresholds: Mapping[tuple, dict] | None = None,
) -> dict:
    """summary.csv (the printed table), summary.json (with each decision threshold, how it was set and
    its expected false-alarm rate) and, where it applies, evaluator_result.csv."""
    out_dir = Path(out_dir)
    header, rows = table_rows(evaluation)
    atomic_write_text(
        csv_text(
            [header]
            + [
                [csv_cell(v) if isinstance(v, float) else ("" if v is None else v) for v in row]
                for row in rows
            ]
        ),
        out_dir / "summary.csv",
    )
    summary = summary_dict(evaluation, scorer, settings)
    summary["decision_thresholds"] = [
        {"machine_type": key[0], "section": key[1], "domain": key[2] if len(key) > 2 else "all", **info}
        for key, info in (thresholds or {}).items()
    ]
    atomic_write_text(json.dumps(summary, indent=2, default=str), out_dir / "summary.json")
    if (
        evaluation.year == EVALUATOR_RULES
        and evaluation.complete
        and all("F1 score (source)" in s.values for s in evaluation.sections)
    ):
        atomic_write_text(csv_text(evaluator_rows(evaluation)), out_dir / "evaluator_result.csv")
    return summary


_RESULT_NAME = re.compile(r"^anomaly_score_(?P<machine>.+)_section_(?P<section>\d+)_test\.csv$")


def read_result_dir(results_dir: str | os.PathLike) -> tuple[dict[str, float], dict[str, int], list]:
    """(scores, decisions, records) of a DCASE result folder whose file names carry the labels
    (development-set names): what the evaluator needs, read from the CSVs alone."""
    results_dir = Path(results_dir)
    scores, decisions, records = {}, {}, []
    for score_file in sorted(results_dir.glob("anomaly_score_*_section_*_test.csv")):
        match = _RESULT_NAME.match(score_file.name)
        decision_file = results_dir / result_file_names(match["machine"], match["section"])[1]
        if not decision_file.is_file():
            raise FileNotFoundError(f"{score_file} has no decision file {decision_file.name} beside it")
        with open(decision_file, newline="") as f:
            decided = {row[0]: int(row[1]) for row in csv.reader(f) if row}
        with open(score_file, newline="") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if len(row) != 2:
                    raise ValueError(f"{score_file}:{line}: expected 'file name,score', got {row}")
                record = parse_clip_name(Path(match["machine"]) / "test" / row[0], match["machine"], "test")
                if record.section != match["section"]:
                    raise ValueError(
                        f"{score_file}:{line}: {row[0]} is not a section {match['section']} clip"
                    )
                if row[0] not in decided:
                    raise ValueError(f"{decision_file} has no decision for {row[0]}")
                scores[record.path], decisions[record.path] = float(row[1]), decided[row[0]]
                records.append(record)
    if not records:
        raise FileNotFoundError(f"{results_dir}: no anomaly_score_<machine>_section_<ss>_test.csv files")
    return scores, decisions, records


def measure_results_dir(
    results_dir: str | os.PathLike, year: str | None = None, ground_truth: str | os.PathLike | None = None
) -> tuple[Evaluation, dict[str, float], dict[str, int], list]:
    """(evaluation, scores, decisions, records) of an existing result folder, labels from the clip names
    or, with ``ground_truth``, from the evaluator's ground-truth folder (asd/data/ground_truth.py)."""
    scores, decisions, records = read_result_dir(results_dir)
    if ground_truth:
        records = apply_ground_truth(records, ground_truth)
    return compute_official(scores, records, year=year, decisions=decisions), scores, decisions, records


def write_results(
    scores: Mapping[str, float],
    records: Sequence,
    train_scores: Mapping[tuple[str, str], Sequence[float]],
    out_dir: str | Path,
    scorer: str,
    settings: Mapping | None = None,
    plots: bool = True,
    title: str | None = None,
    expected: Iterable[tuple[str, str]] = (),
    year: str | None = None,
    data_dir: str | os.PathLike | None = None,
    report: bool = False,
    embeddings: Mapping[str, Mapping] | None = None,
    gamma_location: str = "zero",
    model_path: str | os.PathLike | None = None,
    ground_truth: str | os.PathLike | None = None,
) -> dict:
    """Measure, print and write everything for one scorer into ``out_dir`` (replaced as a whole).

    ``scores``: test clip path -> anomaly score (higher = more anomalous); ``records``: the test
    ClipRecords; ``train_scores``: (machine_type, section) -> scores of that section's training
    normals, out of sample (for the decision thresholds: asd/score/thresholds.py, per domain where the scores
    carry domains; ``gamma_location`` of the gamma fit); ``expected``: every (machine_type, section).
    ``report``: also report.html (``embeddings``: {"test"/"train": {"matrix", "records"}} for its map;
    ``model_path``: the tuned model, whose training history it draws). ``ground_truth``: the evaluator's
    ground-truth folder, whose labels and domains are used for the metrics only: the decisions use only
    what the file names give (an anonymised clip's domain is unknown: its section's threshold), so they
    are the submitted decision_result CSVs.
    Returns the JSON summary as a dict.
    """
    thresholds = threshold_table(records, train_scores, gamma_location)
    decisions = decide(scores, records, thresholds)
    false_alarms = domain_false_alarms(train_scores, thresholds)
    if ground_truth:
        records = apply_ground_truth(records, ground_truth)
        if embeddings and "test" in embeddings:
            embeddings = {**embeddings, "test": {**embeddings["test"], "records": records}}
    evaluation = compute_official(scores, records, expected or train_scores.keys(), year, decisions, data_dir)
    return _write_folder(
        evaluation,
        scores,
        decisions,
        records,
        thresholds,
        out_dir,
        scorer,
        settings,
        plots,
        report,
        embeddings,
        title,
        model_path,
        false_alarms,
    )


NO_LABELS = (
    "the test clips carry no labels (evaluation-set names): no metric can be computed without them. "
    "The anomaly_score_* and decision_result_* CSVs (the challenge submission) are written; once the "
    "evaluator's ground truth is out, give it with --ground_truth DIR"
)


def _write_folder(
    evaluation: Evaluation,
    scores: Mapping[str, float],
    decisions: Mapping[str, int],
    records: Sequence,
    thresholds: Mapping[tuple, dict],
    out_dir: str | Path,
    scorer: str,
    settings: Mapping | None,
    plots: bool,
    report: bool,
    embeddings: Mapping[str, Mapping] | None,
    title: str | None,
    model_path: str | os.PathLike | None = None,
    false_alarms: Sequence[dict] = (),
) -> dict:
    """Print the table and build ``out_dir`` (replaced as a whole): CSVs, summaries, plots, report.
    ``false_alarms``: asd.score.thresholds.domain_false_alarms of the training normals."""
    if evaluation.labelled:
        print(format_table(evaluation, title=title or scorer))
    else:
        print(f"{scorer}: {NO_LABELS}")
    for line in false_alarm_lines(false_alarms):
        print(f"{scorer}: {line}")
    summary: dict = {}

    def build(folder: Path) -> None:
        write_result_csvs(scores, decisions, records, folder)
        summary.update(write_summary(evaluation, folder, scorer, settings, thresholds))
        if false_alarms:
            summary["domain_false_alarms"] = list(false_alarms)
            atomic_write_text(json.dumps(summary, indent=2, default=str), folder / "summary.json")
        if plots:
            for machine, machine_records in group_by_machine(records).items():
                machine_thresholds = [
                    t["threshold"] for k, t in thresholds.items() if k[0] == machine and len(k) == 2
                ]
                threshold = float(np.mean(machine_thresholds)) if machine_thresholds else None
                plot_machine(machine, machine_records, scores, folder, threshold=threshold)
        if report:
            write_report(
                folder,
                evaluation,
                scores,
                records,
                thresholds,
                embeddings,
                title or scorer,
                decisions,
                model_path,
                false_alarms,
            )

    atomic_folder(build, out_dir)
    print(f"results written to {out_dir}")
    return summary


def score_results_folder(
    results_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    ground_truth: str | os.PathLike | None = None,
    year: str | None = None,
    plots: bool = True,
    report: bool = True,
) -> dict:
    """Measure an existing results folder (its anomaly_score/decision_result CSVs, decisions as given),
    labels from the clip names or, with ``ground_truth``, from the evaluator's ground-truth folder;
    writes the tables, summaries, plots and report into ``out_dir``. Returns the summary."""
    evaluation, scores, decisions, records = measure_results_dir(results_dir, year, ground_truth)
    settings = {"results_dir": str(results_dir), "ground_truth": str(ground_truth or "")}
    return _write_folder(
        evaluation, scores, decisions, records, {}, out_dir, "submission", settings, plots, report, None, None
    )


def expected_sections(features) -> set[tuple[str, str]]:
    """Every (machine_type, section) the data holds (training normals and test clips)."""
    return {(r.machine_type, r.section) for r in features.normal.records + features.test.records}


def write_scorer_results(
    features,
    scores: dict[str, float],
    train_scores: dict,
    cfg,
    scorer: str,
    title: str,
    out_dir: str | os.PathLike | None = None,
    settings: Mapping | None = None,
) -> dict:
    """write_results for a scorer script (its RESULTS_DIR, PLOTS, REPORT, DCASE_YEAR, GROUND_TRUTH) over
    the loaded embedding files ``features``: official CSVs, tables, plots and report; returns the
    summary. ``out_dir`` replaces RESULTS_DIR, ``settings`` the script's settings in summary.json.
    With GROUND_TRUTH the test clips' labels and domains come from the evaluator's ground truth (for the
    metrics only; decisions use what the file names give)."""
    from asd.base.cli import config_to_dict

    return write_results(
        scores,
        features.test.records,
        train_scores,
        out_dir or cfg.results_dir,
        scorer=scorer,
        settings=config_to_dict(cfg) if settings is None else settings,
        plots=cfg.plots,
        report=cfg.report,
        embeddings=features.embedding_maps(),
        gamma_location=cfg.gamma_location,
        title=title,
        expected=expected_sections(features),
        year=cfg.dcase_year,
        data_dir=features.data_dir,
        model_path=features.model_path,
        ground_truth=cfg.ground_truth or None,
    )
