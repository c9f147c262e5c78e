"""Which values a DCASE year's rules measure, per section and over the whole data (the evaluation object).

The metric set follows the rules of the data's year (asd/base/years.py detect_year; a scorer's DCASE_YEAR
overrides it):
  2020   per machine type and ID ("section"): AUC and pAUC over all its test clips; per machine type
         and overall the arithmetic mean of AUC and of pAUC (the DCASE 2020 summary; no harmonic
         "official score" existed that year).
  2021   per section: AUC and pAUC on the source-domain test clips alone and on the target-domain
         test clips alone; score = harmonic mean of all of them.
  2022+  (2022-2025, nttcslab/dcase2024_task2_evaluator) per section: AUC (source) = source normals
         vs all anomalies of the section, AUC (target) = target normals vs all anomalies, pAUC on all
         clips of the section; official score = harmonic mean of every AUC (source), AUC (target)
         and pAUC value, each floored at the machine epsilon, as the evaluator does.

A number is called "official score" only when it covers every machine type and section of the
data; otherwise the table names what is missing and labels the number "over N of M machine
type/sections". Clips without a label (evaluation-set names) are scored and written, never measured.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from asd.base.years import RULE_SETS, detect_year
from asd.report.metrics import arithmetic_mean, auc_between, harmonic_mean, precision_recall_f1

SCORE_COLUMNS = {  # the values that enter the rules' summary score, per section
    "2020": ["AUC", "pAUC"],
    "2021": ["AUC (source)", "pAUC (source)", "AUC (target)", "pAUC (target)"],
    "2022+": ["AUC (source)", "AUC (target)", "pAUC"],
}
EVALUATOR_RULES = "2022+"  # the rules of the official evaluator's result.csv layout
_DOMAINS = ("source", "target")


def summary_mean(rules: str):
    """How the rules combine their values: the arithmetic mean (2020) or the harmonic mean."""
    return arithmetic_mean if rules == "2020" else harmonic_mean


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
        result.values = {
            "AUC": auc_between(normal, anomaly),
            "pAUC": auc_between(normal, anomaly, partial=True),
        }
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
            result.values[f"AUC ({domain})"] = auc_between(domain_normal, domain_anomaly)
            if year == "2021":
                result.values[f"pAUC ({domain})"] = auc_between(domain_normal, domain_anomaly, partial=True)
    if year == "2022+":
        result.values["pAUC"] = auc_between(normal, anomaly, partial=True)
        result.values["AUC (all)"] = auc_between(normal, anomaly)
        if decisions is not None:
            for domain in _DOMAINS:
                chosen = [r for r in labelled if r.domain == domain]
                prf = precision_recall_f1(
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


def group_by_machine(records: Iterable) -> dict[str, list]:
    groups: dict[str, list] = {}
    for record in records:
        groups.setdefault(record.machine_type, []).append(record)
    return dict(sorted(groups.items()))


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
        return summary_mean(self.year)(values)

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
        if not self.labelled:
            return "no metric (the test clips carry no labels)"
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
    without test clips are reported missing. ``year``: the metric rules (RULE_SETS); None or "auto"
    detects them from the clips (asd/base/years.py detect_year; ``data_dir`` only says whether attributes CSVs
    exist).
    """
    missing = [r.path for r in records if r.path not in scores]
    if missing:
        raise KeyError(f"{len(missing)} test clips have no score, e.g. {missing[0]}")
    if year in (None, "auto"):
        found = detect_year(records, [data_dir] if data_dir is not None else [])
        year, why = found.rules, found.why
    elif year not in RULE_SETS:
        raise ValueError(f"DCASE year must be one of {RULE_SETS} or auto, got {year!r}")
    else:
        why = "set by DCASE_YEAR"
    groups = group_by_section(records)
    for key in expected:
        groups.setdefault(tuple(key), [])
    sections = [
        section_result(m, s, recs, scores, year, decisions) for (m, s), recs in sorted(groups.items())
    ]
    return Evaluation(year, why, sections)
