"""The results as tables: the printed text table, summary.json's content and the evaluator's result.csv rows."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict

import numpy as np

from asd.base.years import RULES
from asd.report.evaluation import (
    EVALUATOR_RULES,
    SCORE_COLUMNS,
    Evaluation,
    SectionResult,
    summary_mean,
)
from asd.report.metrics import MAX_FPR, arithmetic_mean, harmonic_mean

EVALUATOR_COLUMNS = [
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
            [] if summary_mean(evaluation.year) is arithmetic_mean else [("harmonic mean", harmonic_mean)]
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
    score = evaluation.score if evaluation.labelled else None
    rows.append(["all", evaluation.score_label(), score] + [None] * (len(columns) - 1))
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


def csv_text(rows: Iterable[Sequence]) -> str:
    """CSV text of ``rows`` (a header is the first row; names with commas or quotes are quoted)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def csv_cell(value) -> str:
    return "" if value is None else repr(float(value)) if isinstance(value, float) else str(value)


def evaluator_rows(evaluation: Evaluation) -> list[list[str]]:
    """The official evaluator's result.csv rows (2022+ rules, full coverage, decisions measured),
    its "official score ci95" row excepted."""
    if evaluation.year != EVALUATOR_RULES or not evaluation.complete:
        raise ValueError(f"the evaluator's layout needs {EVALUATOR_RULES} data with every section measured")
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
        rows.append(["section"] + EVALUATOR_COLUMNS)
        rows += [[s.section] + [s.values[c] for c in EVALUATOR_COLUMNS] for s in sections]
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
    return [[csv_cell(v) for v in row] for row in rows]
