"""DCASE Task 2 results exactly as the official evaluator computes them, shared by every scorer.

The metric set follows the data's year (``detect_year``; a scorer's DCASE_YEAR overrides it):
  2020   per machine type and ID ("section"): AUC and pAUC over all its test clips; per machine type
         and overall the arithmetic mean of AUC and of pAUC (the DCASE 2020 summary; no harmonic
         "official score" existed that year).
  2021   per section: AUC and pAUC on the source-domain test clips alone and on the target-domain
         test clips alone; score = harmonic mean of all of them.
  2022+  (2022-2025, nttcslab/dcase2024_task2_evaluator) per section: AUC (source) = source normals
         vs all anomalies of the section, AUC (target) = target normals vs all anomalies, pAUC on all
         clips of the section; official score = harmonic mean of every AUC (source), AUC (target)
         and pAUC value, each floored at the machine epsilon, as the evaluator does.
pAUC is always ``sklearn.metrics.roc_auc_score(y, score, max_fpr=0.1)``: the McClish-standardised
partial AUC (chance 0.5, perfect 1), the value the evaluator, the baselines and published tables use.

A number is called "official score" only when it covers every machine type and section of the
data; otherwise the table names what is missing and labels the number "over N of M machine
type/sections". Clips labelled "unknown" (evaluation-set names) are scored and written, never
measured.

Files written into a results folder (the whole folder is built aside and swapped in at the end):
  anomaly_score_<machine>_section_<ss>_test.csv    "file name,score" (no header)
  decision_result_<machine>_section_<ss>_test.csv  "file name,0|1"   (no header)
  evaluator_result.csv   2022+ with full coverage: the official evaluator's result.csv layout
                         (its "official score ci95" row excepted)
  summary.csv, summary.json, roc_<machine>.png, hist_<machine>.png
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.stats
from sklearn.metrics import roc_auc_score, roc_curve

from asd.files import atomic_folder, atomic_path, atomic_write_text

MAX_FPR = 0.1  # pAUC range, as in the DCASE task description
EPSILON = sys.float_info.epsilon  # the evaluator floors every value at this before a harmonic mean
DECISION_PERCENTILE = 0.9  # decision threshold = this quantile of a gamma fitted to training normals
YEARS = ("2020", "2021", "2022+")
SCORE_COLUMNS = {  # the values that enter the year's summary score, per section
    "2020": ["AUC", "pAUC"],
    "2021": ["AUC (source)", "pAUC (source)", "AUC (target)", "pAUC (target)"],
    "2022+": ["AUC (source)", "AUC (target)", "pAUC"],
}
RULES = {
    "2020": "DCASE 2020 rules: AUC and pAUC per machine ID, arithmetic means",
    "2021": "DCASE 2021 rules: AUC and pAUC per domain, harmonic mean",
    "2022+": "DCASE 2022-2025 rules (official evaluator): AUC per domain vs all anomalies, pAUC, harmonic mean",
}
_DOMAINS = ("source", "target")
_EVALUATOR_COLUMNS = [
    "AUC (all)",
    "AUC (source)",
    "AUC (target)",
    "pAUC",
    "precision (source)",
    "precision (target)",
    "recall (source)",
    "recall (target)",
    "F1 score (source)",
    "F1 score (target)",
]

# -----------------------------------------------------------------------------
# the measures


def pauc(y_true: Sequence[int], y_score: Sequence[float], max_fpr: float = MAX_FPR) -> float:
    """DCASE pAUC: scikit-learn's McClish-standardised partial AUC over FPR [0, max_fpr]."""
    return float(
        roc_auc_score(np.asarray(y_true, dtype=int), np.asarray(y_score, dtype=np.float64), max_fpr=max_fpr)
    )


def harmonic_mean(values: Iterable[float]) -> float:
    """The evaluator's harmonic mean: every value floored at EPSILON first; nan when empty."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        return float("nan")
    return float(scipy.stats.hmean(np.maximum(values, EPSILON)))


def arithmetic_mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def _auc(normal_scores: Sequence[float], anomaly_scores: Sequence[float], partial: bool = False) -> float:
    y_true = [0] * len(normal_scores) + [1] * len(anomaly_scores)
    y_score = list(normal_scores) + list(anomaly_scores)
    return pauc(y_true, y_score) if partial else float(roc_auc_score(y_true, y_score))


def _precision_recall_f1(labels: Sequence[int], decisions: Sequence[int]) -> tuple[float, float, float]:
    """The evaluator's precision, recall and F1 of anomaly decisions (denominators floored at EPSILON)."""
    labels, decisions = np.asarray(labels, dtype=int), np.asarray(decisions, dtype=int)
    tp = float(np.sum((labels == 1) & (decisions == 1)))
    fp = float(np.sum((labels == 0) & (decisions == 1)))
    fn = float(np.sum((labels == 1) & (decisions == 0)))
    precision = tp / max(tp + fp, EPSILON)
    recall = tp / max(tp + fn, EPSILON)
    return precision, recall, 2.0 * precision * recall / max(precision + recall, EPSILON)


# -----------------------------------------------------------------------------
# which year's rules


def detect_year(records: Sequence, data_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """(year, why): "2020" for 2020 names (``normal_id_00_...``); for ``section_XX`` names "2021" when a
    machine type has several sections and the data folder has no attributes CSV, else "2022+"."""
    if not any(r.file_name.startswith("section_") for r in records):
        return "2020", "2020-style names (<normal|anomaly>_id_XX_NNNNNNNN.wav)"
    has_tables = data_dir is not None and any(Path(data_dir).glob("*/attributes*.csv"))
    sections: dict[str, set] = {}
    for record in records:
        sections.setdefault(record.machine_type, set()).add(record.section)
    several = any(len(s) > 1 for s in sections.values())
    if several and not has_tables:
        return "2021", "section_XX names, several sections per machine type, no attributes CSV"
    why = "attributes CSV present" if has_tables else "one section per machine type"
    return "2022+", f"section_XX names, {why}"


# -----------------------------------------------------------------------------
# per section


@dataclass
class SectionResult:
    """Measures of one machine type and section, and why any required one is missing."""

    machine_type: str
    section: str
    values: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    n_normal: int = 0
    n_anomaly: int = 0
    n_unlabelled: int = 0

    @property
    def name(self) -> str:
        return f"{self.machine_type} section {self.section}"


def _split(records: Sequence, scores: Mapping[str, float], domain: str | None = None) -> tuple[list, list]:
    """(normal scores, anomaly scores) of the labelled records, of one domain if given."""
    chosen = [r for r in records if domain is None or r.domain == domain]
    return (
        [scores[r.path] for r in chosen if r.label == "normal"],
        [scores[r.path] for r in chosen if r.label == "anomaly"],
    )


def section_result(
    machine_type: str,
    section: str,
    records: Sequence,
    scores: Mapping[str, float],
    year: str,
    decisions: Mapping[str, int] | None = None,
) -> SectionResult:
    """Measures of one machine type and section (its test ClipRecords) under ``year``'s rules."""
    labelled = [r for r in records if r.label in ("normal", "anomaly")]
    normal, anomaly = _split(labelled, scores)
    result = SectionResult(
        machine_type,
        section,
        n_normal=len(normal),
        n_anomaly=len(anomaly),
        n_unlabelled=len(records) - len(labelled),
    )
    if not records:
        result.missing.append("no test clips")
    elif not labelled:
        result.missing.append("no labelled test clips (evaluation-set names)")
    elif not anomaly:
        result.missing.append("no anomalous test clips")
    elif not normal:
        result.missing.append("no normal test clips")
    if result.missing:
        return result
    if year == "2020":
        result.values = {"AUC": _auc(normal, anomaly), "pAUC": _auc(normal, anomaly, partial=True)}
        return result
    for domain in _DOMAINS:
        domain_normal, domain_anomaly = _split(labelled, scores, domain)
        if year == "2022+":
            domain_anomaly = anomaly  # every anomaly of the section counts for both domains
        if not domain_normal:
            result.missing.append(f"no {domain}-domain normal test clips")
        elif not domain_anomaly:
            result.missing.append(f"no {domain}-domain anomalous test clips")
        else:
            result.values[f"AUC ({domain})"] = _auc(domain_normal, domain_anomaly)
            if year == "2021":
                result.values[f"pAUC ({domain})"] = _auc(domain_normal, domain_anomaly, partial=True)
    if year == "2022+":
        result.values["pAUC"] = _auc(normal, anomaly, partial=True)
        result.values["AUC (all)"] = _auc(normal, anomaly)
        if decisions is not None:
            for domain in _DOMAINS:
                chosen = [r for r in labelled if r.domain == domain]
                prf = _precision_recall_f1(
                    [r.label == "anomaly" for r in chosen], [decisions[r.path] for r in chosen]
                )
                for name, value in zip(("precision", "recall", "F1 score"), prf):
                    result.values[f"{name} ({domain})"] = value
    return result


def group_by_section(records: Iterable) -> dict[tuple[str, str], list]:
    """{(machine_type, section): [records]} in sorted order."""
    groups: dict[tuple[str, str], list] = {}
    for record in records:
        groups.setdefault((record.machine_type, record.section), []).append(record)
    return dict(sorted(groups.items()))


# -----------------------------------------------------------------------------
# the whole evaluation


@dataclass
class Evaluation:
    """Every expected section's result, the year's rules and the summary numbers."""

    year: str
    why: str
    sections: list[SectionResult]

    @property
    def measured(self) -> list[SectionResult]:
        """Sections with every value the year's score needs."""
        return [s for s in self.sections if not s.missing]

    @property
    def labelled(self) -> bool:
        return any(s.n_normal or s.n_anomaly for s in self.sections)

    @property
    def complete(self) -> bool:
        return bool(self.sections) and len(self.measured) == len(self.sections)

    def column(self, name: str, sections: Sequence[SectionResult] | None = None) -> list[float]:
        return [s.values[name] for s in (self.measured if sections is None else sections) if name in s.values]

    @property
    def score(self) -> float:
        """Harmonic mean of every score value of the measured sections (2021, 2022+); for 2020 the
        arithmetic mean of all AUC and pAUC values. nan when nothing was measured."""
        values = [v for name in SCORE_COLUMNS[self.year] for v in self.column(name)]
        return arithmetic_mean(values) if self.year == "2020" else harmonic_mean(values)

    @property
    def official_score(self) -> float | None:
        """The evaluator's official score: only with full coverage, and only for 2021 and 2022+."""
        return self.score if self.complete and self.year != "2020" else None

    def coverage(self) -> str:
        machines = {s.machine_type for s in self.sections}
        measured = {s.machine_type for s in self.measured}
        return (
            f"{len(self.measured)} of {len(self.sections)} machine type/sections "
            f"({len(measured)} of {len(machines)} machine types)"
        )

    def score_label(self) -> str:
        if self.year == "2020":
            what = "mean of all AUC and pAUC values (the DCASE 2020 summary)"
        elif self.complete:
            return "official score"
        else:
            what = "harmonic mean of all AUC and pAUC values (NOT the official score)"
        return what if self.complete else f"{what} over {self.coverage()}"

    def missing_lines(self) -> list[str]:
        return [f"{s.name}: {reason}" for s in self.sections for reason in s.missing]


def compute_official(
    scores: Mapping[str, float],
    records: Sequence,
    expected: Iterable[tuple[str, str]] = (),
    year: str | None = None,
    decisions: Mapping[str, int] | None = None,
    data_dir: str | os.PathLike | None = None,
) -> Evaluation:
    """Measure the test ``records`` (ClipRecords) with their ``scores`` {path: score}.

    ``expected``: (machine_type, section) pairs the data holds (e.g. from the training clips); those
    without test clips are reported missing. ``year`` None or "auto" detects it (``detect_year``).
    """
    missing = [r.path for r in records if r.path not in scores]
    if missing:
        raise KeyError(f"{len(missing)} test clips have no score, e.g. {missing[0]}")
    if year in (None, "auto"):
        year, why = detect_year(records, data_dir)
    elif year not in YEARS:
        raise ValueError(f"DCASE year must be one of {YEARS} or auto, got {year!r}")
    else:
        why = "set by DCASE_YEAR"
    groups = group_by_section(records)
    for key in expected:
        groups.setdefault(tuple(key), [])
    sections = [
        section_result(m, s, recs, scores, year, decisions) for (m, s), recs in sorted(groups.items())
    ]
    return Evaluation(year, why, sections)


# -----------------------------------------------------------------------------
# the printed table and summary files


def table_rows(evaluation: Evaluation) -> tuple[list[str], list[list]]:
    """Header and rows: each section, per machine type (several sections) and overall the arithmetic
    and harmonic means of each column over the measured sections, then the score row."""
    columns = SCORE_COLUMNS[evaluation.year]
    header = ["machine_type", "section"] + columns
    rows: list[list] = []
    by_machine: dict[str, list[SectionResult]] = {}
    for s in evaluation.sections:
        by_machine.setdefault(s.machine_type, []).append(s)

    def means(sections: Sequence[SectionResult]) -> list[list]:
        out = []
        kinds = [("arithmetic mean", arithmetic_mean)] + (
            [] if evaluation.year == "2020" else [("harmonic mean", harmonic_mean)]
        )
        for label, mean in kinds:
            out.append(
                [label]
                + [
                    mean(evaluation.column(c, sections)) if evaluation.column(c, sections) else None
                    for c in columns
                ]
            )
        return out

    for machine, sections in by_machine.items():
        rows += [[machine, s.section] + [s.values.get(c) for c in columns] for s in sections]
        measured = [s for s in sections if not s.missing]
        if len(measured) > 1:
            rows += [[machine] + row for row in means(measured)]
    if evaluation.measured:
        rows += [["all"] + row for row in means(evaluation.measured)]
    rows.append(["all", evaluation.score_label(), evaluation.score] + [None] * (len(columns) - 1))
    return header, rows


def format_number(value) -> str:
    """How tables show a value: 4 decimals for floats, "-" for none."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def format_table(evaluation: Evaluation, title: str = "") -> str:
    """The results as text, laid out like the DCASE baseline's printout, with the rules in the header."""
    header, rows = table_rows(evaluation)
    body = rows[:-1]
    widths = [
        max(len(format_number(x)) for x in [h] + [row[i] for row in body]) for i, h in enumerate(header)
    ]

    def line(cells) -> str:  # two text columns left-aligned, numbers right-aligned
        return "  ".join(
            format_number(c).ljust(w) if i < 2 else format_number(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        )

    rule = "-" * len(line(header))
    out = [
        f"=== {title} ===" if title else "",
        f"{RULES[evaluation.year]} [{evaluation.why}]",
        line(header),
        rule,
    ]
    previous = None
    for row in body:
        if previous is not None and row[0] != previous:
            out.append(rule)
        out.append(line(row))
        previous = row[0]
    missing = evaluation.missing_lines()
    if missing:
        out.append(f"missing from the score ({len(missing)}):")
        out += [f"  - {m}" for m in missing]
    out.append(f"{evaluation.score_label()}: {format_number(evaluation.score)}")
    return "\n".join(s for s in out if s)


def summary_dict(evaluation: Evaluation, scorer: str, settings: Mapping | None = None) -> dict:
    """What summary.json holds (also read by run_all's comparison table)."""
    score = evaluation.score
    return {
        "scorer": scorer,
        "dcase_year": evaluation.year,
        "rules": RULES[evaluation.year],
        "official_score": evaluation.official_score,
        "score": None if math.isnan(score) else score,
        "score_label": evaluation.score_label(),
        "complete": evaluation.complete,
        "missing": evaluation.missing_lines(),
        "max_fpr": MAX_FPR,
        "columns": SCORE_COLUMNS[evaluation.year],
        "sections": [asdict(s) for s in evaluation.sections],
        "settings": dict(settings or {}),
    }


def _csv_text(rows: Iterable[Sequence]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _csv_cell(value) -> str:
    return "" if value is None else repr(float(value)) if isinstance(value, float) else str(value)


def evaluator_rows(evaluation: Evaluation) -> list[list[str]]:
    """The official evaluator's result.csv rows (2022+ rules, full coverage, decisions measured),
    its "official score ci95" row excepted."""
    if evaluation.year != "2022+" or not evaluation.complete:
        raise ValueError("the evaluator's layout needs 2022+ data with every section measured")
    rows: list[list] = []

    def block(sections: Sequence[SectionResult], labels: Sequence[str]) -> None:
        def pairs(name: str) -> list[float]:
            return evaluation.column(f"{name} (source)", sections) + evaluation.column(
                f"{name} (target)", sections
            )

        pauc_twice = evaluation.column("pAUC", sections) * 2
        performance = np.array(
            [pairs("AUC"), pauc_twice, pairs("precision"), pairs("recall"), pairs("F1 score")]
        )
        half = performance.shape[1] // 2
        rows.append(["", "", "AUC", "pAUC", "precision", "recall", "F1 score"])
        rows.append([labels[0], ""] + [float(v) for v in performance.mean(axis=1)])
        for label, part in zip(labels[1:], (performance, performance[:, :half], performance[:, half:])):
            rows.append([label, ""] + [harmonic_mean(values) for values in part])

    machines = sorted({s.machine_type for s in evaluation.sections})
    for machine in machines:
        sections = [s for s in evaluation.sections if s.machine_type == machine]
        rows.append([machine])
        rows.append(["section"] + _EVALUATOR_COLUMNS)
        rows += [[s.section] + [s.values[c] for c in _EVALUATOR_COLUMNS] for s in sections]
        block(sections, ["arithmetic mean", "harmonic mean", "source harmonic mean", "target harmonic mean"])
        rows.append([])
    suffix = " over all machine types, sections, and domains"
    block(
        evaluation.sections,
        [
            f"arithmetic mean{suffix}",
            f"harmonic mean{suffix}",
            f"source harmonic mean{suffix}",
            f"target harmonic mean{suffix}",
        ],
    )
    rows.append([])
    rows.append(["official score", "", evaluation.score])
    return [[_csv_cell(v) for v in row] for row in rows]


def write_summary(
    evaluation: Evaluation, out_dir: str | Path, scorer: str, settings: Mapping | None = None
) -> dict:
    """summary.csv (the printed table), summary.json and, where it applies, evaluator_result.csv."""
    out_dir = Path(out_dir)
    header, rows = table_rows(evaluation)
    atomic_write_text(
        _csv_text(
            [header]
            + [
                [_csv_cell(v) if isinstance(v, float) else ("" if v is None else v) for v in row]
                for row in rows
            ]
        ),
        out_dir / "summary.csv",
    )
    summary = summary_dict(evaluation, scorer, settings)
    atomic_write_text(json.dumps(summary, indent=2, default=str), out_dir / "summary.json")
    if (
        evaluation.year == "2022+"
        and evaluation.complete
        and all("F1 score (source)" in s.values for s in evaluation.sections)
    ):
        atomic_write_text(_csv_text(evaluator_rows(evaluation)), out_dir / "evaluator_result.csv")
    return summary


# -----------------------------------------------------------------------------
# decision threshold and the challenge's CSV files


def gamma_threshold(train_scores: Sequence[float], percentile: float = DECISION_PERCENTILE) -> float:
    """The ``percentile`` quantile of a gamma distribution fitted to the training normals' scores.

    A gamma lives on positive numbers but standardised scores can be negative, so the scores are
    shifted to start just above zero before the (3-parameter) fit and the quantile is shifted
    back. With too few or constant scores the empirical quantile is used instead.
    """
    scores = np.asarray(train_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise ValueError("gamma_threshold needs at least one finite training score")
    spread = float(np.std(scores))
    if scores.size < 5 or spread == 0.0:
        return float(np.quantile(scores, percentile))
    shift = 1e-3 * spread - float(scores.min()) if scores.min() <= 0 else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            params = scipy.stats.gamma.fit(scores + shift)
            threshold = float(scipy.stats.gamma.ppf(percentile, *params)) - shift
        except Exception:  # scipy's optimiser can fail on odd samples
            threshold = float("nan")
    if not np.isfinite(threshold):
        threshold = float(np.quantile(scores, percentile))
    return threshold


def result_file_names(machine_type: str, section: str) -> tuple[str, str]:
    """The names the official evaluator looks for."""
    return (
        f"anomaly_score_{machine_type}_section_{section}_test.csv",
        f"decision_result_{machine_type}_section_{section}_test.csv",
    )


def section_thresholds(records: Sequence, train_scores: Mapping[tuple[str, str], Sequence[float]]) -> dict:
    """Decision threshold per (machine_type, section) of ``records`` from its training normals' scores."""
    thresholds = {}
    for key in group_by_section(records):
        if key not in train_scores or len(train_scores[key]) == 0:
            raise ValueError(
                f"no training scores for {key[0]} section {key[1]}: "
                "cannot set the decision threshold (is the section missing from train/?)"
            )
        thresholds[key] = gamma_threshold(train_scores[key])
    return thresholds


def decide(
    scores: Mapping[str, float], records: Sequence, thresholds: Mapping[tuple[str, str], float]
) -> dict[str, int]:
    """{path: 1 if the clip's score is above its section's threshold else 0}."""
    return {r.path: int(scores[r.path] > thresholds[(r.machine_type, r.section)]) for r in records}


def write_result_csvs(
    scores: Mapping[str, float], decisions: Mapping[str, int], records: Sequence, out_dir: str | Path
) -> list[Path]:
    """Write the anomaly-score and decision CSVs of every machine type and section; returns the paths."""
    out_dir = Path(out_dir)
    written = []
    for (machine, section), recs in group_by_section(records).items():
        score_name, decision_name = result_file_names(machine, section)
        atomic_write_text(
            _csv_text((r.file_name, f"{scores[r.path]:.8g}") for r in recs), out_dir / score_name
        )
        atomic_write_text(_csv_text((r.file_name, decisions[r.path]) for r in recs), out_dir / decision_name)
        written += [out_dir / score_name, out_dir / decision_name]
    return written


_RESULT_NAME = re.compile(r"^anomaly_score_(?P<machine>.+)_section_(?P<section>\d+)_test\.csv$")


def read_result_dir(results_dir: str | os.PathLike) -> tuple[dict[str, float], dict[str, int], list]:
    """(scores, decisions, records) of a DCASE result folder whose file names carry the labels
    (development-set names): what the evaluator needs, read from the CSVs alone."""
    from dataset import parse_clip_name

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


def evaluate_result_dir(results_dir: str | os.PathLike, year: str | None = None) -> Evaluation:
    """The evaluation of an existing result folder (labels from the clip names)."""
    scores, decisions, records = read_result_dir(results_dir)
    return compute_official(scores, records, year=year, decisions=decisions)


# -----------------------------------------------------------------------------
# plots


def _save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def _histogram_bins(scores: np.ndarray, count: int = 30) -> tuple[np.ndarray, bool]:
    """(bins, log scale?): logarithmic bins for positive scores spanning over two decades (a few
    far outliers would otherwise squeeze every other clip into one bar), else linear ones."""
    low, high = float(scores.min()), float(scores.max())
    if low > 0 and high / low > 100:
        return np.geomspace(low, high * (1 + 1e-9), count + 1), True
    return np.linspace(low, high + 1e-9, count + 1), False


def plot_machine(
    machine_type: str,
    records: Sequence,
    scores: Mapping[str, float],
    out_dir: str | Path,
    threshold: float | None = None,
) -> list[Path]:
    """ROC curves per domain and normal/anomaly score histograms of one machine type (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    labelled = [r for r in records if r.label in ("normal", "anomaly")]
    normal = [r for r in labelled if r.label == "normal"]
    anomaly = [scores[r.path] for r in labelled if r.label == "anomaly"]
    written = []
    if normal and anomaly:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for domain in sorted({r.domain for r in normal}, key=str):
            normal_scores = [scores[r.path] for r in normal if r.domain == domain]
            y = [0] * len(normal_scores) + [1] * len(anomaly)
            fpr, tpr, _ = roc_curve(y, normal_scores + anomaly)
            ax.plot(fpr, tpr, label=f"{domain or 'all'} (AUC {_auc(normal_scores, anomaly):.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.axvline(MAX_FPR, color="grey", lw=0.8, ls="--")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{machine_type}: ROC")
        ax.legend(loc="lower right")
        _save_figure(fig, out_dir / f"roc_{machine_type}.png")
        plt.close(fig)
        written.append(out_dir / f"roc_{machine_type}.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins, log_scale = _histogram_bins(np.array([scores[r.path] for r in records]))
    groups = {
        "normal": [scores[r.path] for r in normal],
        "anomaly": anomaly,
        "unlabelled": [scores[r.path] for r in records if r.label not in ("normal", "anomaly")],
    }
    for name, values in groups.items():
        if values:
            ax.hist(values, bins=bins, alpha=0.5, label=f"{name} ({len(values)})")
    if threshold is not None:
        ax.axvline(threshold, color="k", lw=1, ls="--", label="decision threshold")
    if log_scale:
        ax.set_xscale("log")
    ax.set(xlabel="anomaly score", ylabel="clips", title=f"{machine_type}: test scores")
    ax.legend()
    _save_figure(fig, out_dir / f"hist_{machine_type}.png")
    plt.close(fig)
    written.append(out_dir / f"hist_{machine_type}.png")
    return written


# -----------------------------------------------------------------------------
# one call for the evaluators


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
) -> dict:
    """Measure, print and write everything for one scorer into ``out_dir`` (replaced as a whole).

    ``scores``: test clip path -> anomaly score (higher = more anomalous); ``records``: the test
    ClipRecords; ``train_scores``: (machine_type, section) -> scores of that section's training
    normals (for the decision threshold); ``expected``: every (machine_type, section) of the data.
    ``report``: also report.html (``embeddings``: {"test"/"train": {"matrix", "records"}} for its map).
    Returns the JSON summary as a dict.
    """
    thresholds = section_thresholds(records, train_scores)
    decisions = decide(scores, records, thresholds)
    evaluation = compute_official(scores, records, expected or train_scores.keys(), year, decisions, data_dir)
    if evaluation.labelled:
        print(format_table(evaluation, title=title or scorer))
    else:
        print(f"{scorer}: no labelled test clips; scores and decisions written, metrics skipped")
    summary: dict = {}

    def build(folder: Path) -> None:
        write_result_csvs(scores, decisions, records, folder)
        summary.update(write_summary(evaluation, folder, scorer, settings))
        if plots:
            for machine, machine_records in group_by_machine(records).items():
                machine_thresholds = [t for (m, _), t in thresholds.items() if m == machine]
                plot_machine(
                    machine, machine_records, scores, folder, threshold=float(np.mean(machine_thresholds))
                )
        if report:
            from asd.report import write_report  # report.py imports this module

            write_report(folder, evaluation, scores, records, thresholds, embeddings, title=title or scorer)

    atomic_folder(build, out_dir)
    print(f"results written to {out_dir}")
    return summary


def group_by_machine(records: Iterable) -> dict[str, list]:
    groups: dict[str, list] = {}
    for record in records:
        groups.setdefault(record.machine_type, []).append(record)
    return dict(sorted(groups.items()))


# -----------------------------------------------------------------------------
# several scorers side by side (run_all.py)


def comparison_rows(summaries: Mapping[str, dict]) -> list[dict]:
    """Per machine type and scorer: each score column's harmonic (2020: arithmetic) mean over the
    machine's measured sections; then one 'all' row per scorer with its score and label."""
    rows = []
    machines = sorted({s["machine_type"] for summary in summaries.values() for s in summary["sections"]})
    for machine in machines + ["all"]:
        for scorer, summary in summaries.items():
            mean = arithmetic_mean if summary["dcase_year"] == "2020" else harmonic_mean
            sections = [
                s for s in summary["sections"] if machine in ("all", s["machine_type"]) and not s["missing"]
            ]
            row = {"machine_type": machine, "scorer": scorer}
            for column in summary["columns"]:
                values = [s["values"][column] for s in sections if column in s["values"]]
                row[column] = mean(values) if values else None
            values = [s["values"][c] for s in sections for c in summary["columns"] if c in s["values"]]
            row["score"] = summary["score"] if machine == "all" else (mean(values) if values else None)
            row["label"] = summary["score_label"] if machine == "all" else ""
            rows.append(row)
    return rows


def format_comparison(rows: Sequence[dict], title: str) -> str:
    columns = ["machine_type", "scorer"] + [
        k for k in rows[0] if k not in ("machine_type", "scorer", "score", "label")
    ]
    columns.append("score")
    widths = [max(len(c), *(len(format_number(r.get(c))) for r in rows)) for c in columns]
    line = lambda cells: "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    out = [f"=== {title} ===", line(columns), "-" * len(line(columns))]
    out += [line([format_number(r.get(c)) for c in columns]) for r in rows]
    out.append(
        "(score: per machine type the mean of its values; on the 'all' rows the scorer's summary score)"
    )
    out += [
        f"{r['scorer']}: {r['label']}: {format_number(r['score'])}"
        for r in rows
        if r["machine_type"] == "all"
    ]
    return "\n".join(out)


def write_comparison(rows: Sequence[dict], path: str | os.PathLike) -> None:
    columns = list(rows[0])
    atomic_write_text(_csv_text([columns] + [[_csv_cell(r[c]) for c in columns] for r in rows]), path)
