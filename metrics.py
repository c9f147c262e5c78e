"""DCASE Task 2 official results, shared by both evaluators (evaluate.py, evaluate_deepSVDD.py).

Per machine type and section:
  AUC (source) = source-domain normals vs all anomalies of the section,
  AUC (target) = target-domain normals vs all anomalies of the section,
  pAUC         = all clips of the section, partial AUC over FPR in [0, MAX_FPR] / MAX_FPR.
The official score is the harmonic mean of every AUC (source), AUC (target) and pAUC value over all
machine types and sections. Clips with 2020-style names have no domain: they get one AUC and a pAUC.
Clips labelled "unknown" (evaluation-set names) are scored and written, never measured.

Files written into a results folder (all atomically):
  anomaly_score_<machine>_section_<ss>_test.csv    "file name,score" (no header)
  decision_result_<machine>_section_<ss>_test.csv  "file name,0|1"   (no header)
  summary.csv, summary.json, roc_<machine>.png, hist_<machine>.png
"""
from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import scipy.stats
from sklearn.metrics import roc_auc_score, roc_curve

from utils import atomic_path, atomic_write_text

MAX_FPR = 0.1              # pAUC range, as in the DCASE task description
DECISION_PERCENTILE = 0.9  # decision threshold = this quantile of a gamma fitted to training normals

# -----------------------------------------------------------------------------
# the measures


def partial_auc(y_true: Sequence[int], y_score: Sequence[float], max_fpr: float = MAX_FPR) -> float:
    """DCASE pAUC: area under the ROC curve for FPR in [0, max_fpr], divided by max_fpr.

    sklearn's ``roc_auc_score(max_fpr=p)`` returns the McClish-standardised value instead,
    ``0.5 * (1 + (A - p**2 / 2) / (p - p**2 / 2))`` with ``A`` the raw area (= our value * p), which
    maps chance to 0.5 rather than to p / 2. Both are 1 for a perfect ranking; they differ elsewhere.
    """
    y_true = np.asarray(y_true).astype(int)
    if len(np.unique(y_true)) != 2:
        raise ValueError("partial_auc needs both normal (0) and anomalous (1) clips")
    fpr, tpr, _ = roc_curve(y_true, np.asarray(y_score, dtype=np.float64))
    stop = np.searchsorted(fpr, max_fpr, side="right")
    # the ROC is a step/line curve between its points: interpolate TPR at exactly max_fpr
    tpr_at_max = np.interp(max_fpr, fpr, tpr)
    fpr_part = np.append(fpr[:stop], max_fpr)
    tpr_part = np.append(tpr[:stop], tpr_at_max)
    return float(np.trapezoid(tpr_part, fpr_part) / max_fpr)


def mcclish_from_partial(pauc: float, max_fpr: float = MAX_FPR) -> float:
    """sklearn's standardised pAUC from the DCASE pAUC (for comparing with tools that use sklearn)."""
    area = pauc * max_fpr
    min_area, max_area = 0.5 * max_fpr**2, max_fpr
    return 0.5 * (1 + (area - min_area) / (max_area - min_area))


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean as used by DCASE; 0 if any value is 0, nan when there are no values."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        return float("nan")
    if np.any(values <= 0):
        return 0.0
    return float(values.size / np.sum(1.0 / values))


# -----------------------------------------------------------------------------
# the official table


@dataclass
class SectionResult:
    machine_type: str
    section: str
    auc_source: float | None = None   # domain-aware data (2021+)
    auc_target: float | None = None
    auc: float | None = None          # single-domain data (2020 names)
    pauc: float | None = None
    n_normal: int = 0
    n_anomaly: int = 0
    n_unlabelled: int = 0

    def values(self) -> list[float]:
        """The values that enter the official harmonic mean."""
        return [v for v in (self.auc_source, self.auc_target, self.auc, self.pauc) if v is not None]


def _auc(normal_scores: list[float], anomaly_scores: list[float]) -> float | None:
    if not normal_scores or not anomaly_scores:
        return None
    y_true = [0] * len(normal_scores) + [1] * len(anomaly_scores)
    return float(roc_auc_score(y_true, normal_scores + anomaly_scores))


def section_result(machine_type: str, section: str, records: Sequence, scores: Mapping[str, float]) -> SectionResult:
    """Measures of one machine type and section; ``records`` are its test ClipRecords."""
    labelled = [r for r in records if r.label in ("normal", "anomaly")]
    result = SectionResult(machine_type, section, n_unlabelled=len(records) - len(labelled))
    normal = [r for r in labelled if r.label == "normal"]
    anomaly_scores = [scores[r.path] for r in labelled if r.label == "anomaly"]
    result.n_normal, result.n_anomaly = len(normal), len(anomaly_scores)
    if not normal or not anomaly_scores:
        return result
    if all(r.domain is None for r in normal):
        result.auc = _auc([scores[r.path] for r in normal], anomaly_scores)
    else:
        for domain in ("source", "target"):
            auc = _auc([scores[r.path] for r in normal if r.domain == domain], anomaly_scores)
            if auc is None:
                warnings.warn(f"{machine_type} section {section}: no {domain} normals in the test set; "
                              f"AUC ({domain}) left out of the official score")
            setattr(result, f"auc_{domain}", auc)
    y_true = [0] * len(normal) + [1] * len(anomaly_scores)
    result.pauc = partial_auc(y_true, [scores[r.path] for r in normal] + anomaly_scores)
    return result


def group_by_section(records: Iterable) -> dict[tuple[str, str], list]:
    """{(machine_type, section): [records]} in sorted order."""
    groups: dict[tuple[str, str], list] = {}
    for record in records:
        groups.setdefault((record.machine_type, record.section), []).append(record)
    return dict(sorted(groups.items()))


def compute_official(scores: Mapping[str, float], records: Sequence) -> tuple[list[SectionResult], float]:
    """Per machine type and section results, and the official score (nan when nothing is labelled)."""
    missing = [r.path for r in records if r.path not in scores]
    if missing:
        raise KeyError(f"{len(missing)} test clips have no score, e.g. {missing[0]}")
    table = [section_result(m, s, recs, scores) for (m, s), recs in group_by_section(records).items()]
    official = harmonic_mean(v for row in table for v in row.values())
    return table, official


# -----------------------------------------------------------------------------
# printing and summary files

_COLUMNS = [("auc_source", "AUC (source)"), ("auc_target", "AUC (target)"), ("auc", "AUC"), ("pauc", "pAUC")]


def _used_columns(table: Sequence[SectionResult]) -> list[tuple[str, str]]:
    return [(key, name) for key, name in _COLUMNS if any(getattr(r, key) is not None for r in table)]


def _mean_rows(rows: Sequence[SectionResult], columns) -> tuple[list, list]:
    arith, harm = [], []
    for key, _ in columns:
        values = [getattr(r, key) for r in rows if getattr(r, key) is not None]
        arith.append(float(np.mean(values)) if values else None)
        harm.append(harmonic_mean(values) if values else None)
    return arith, harm


def table_rows(table: Sequence[SectionResult], official: float) -> tuple[list[str], list[list]]:
    """Header and rows of the results table: sections, then per machine type arithmetic and
    harmonic means, then the overall means and the official score (last)."""
    columns = _used_columns(table)
    header = ["machine_type", "section"] + [name for _, name in columns]
    rows: list[list] = []
    by_machine: dict[str, list[SectionResult]] = {}
    for r in table:
        by_machine.setdefault(r.machine_type, []).append(r)
    for machine, machine_rows in by_machine.items():
        for r in machine_rows:
            rows.append([machine, r.section] + [getattr(r, key) for key, _ in columns])
        arith, harm = _mean_rows(machine_rows, columns)
        rows.append([machine, "arithmetic mean"] + arith)
        rows.append([machine, "harmonic mean"] + harm)
    arith, harm = _mean_rows(table, columns)
    rows.append(["all", "arithmetic mean"] + arith)
    rows.append(["all", "harmonic mean"] + harm)
    rows.append(["all", "official score"] + [official] + [None] * (len(columns) - 1))
    return header, rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def format_table(table: Sequence[SectionResult], official: float, title: str = "") -> str:
    """The results as text, laid out like the DCASE baseline's printout."""
    header, rows = table_rows(table, official)
    widths = [max(len(_fmt(x)) for x in [h] + [row[i] for row in rows]) for i, h in enumerate(header)]

    def line(cells) -> str:   # two text columns left-aligned, numbers right-aligned
        return "  ".join(_fmt(c).ljust(w) if i < 2 else _fmt(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [f"=== {title} ===" if title else None, line(header)]
    out.append("-" * len(line(header)))
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            out.append("-" * len(line(header)))
        out.append(line(row))
        previous = row[0]
    out.append(f"official score (harmonic mean of all AUC and pAUC values): {_fmt(official)}")
    return "\n".join(s for s in out if s is not None)


def print_table(table: Sequence[SectionResult], official: float, title: str = "") -> None:
    print(format_table(table, official, title))


def write_summary(table: Sequence[SectionResult], official: float, out_dir: str | Path,
                  scorer: str, settings: Mapping | None = None) -> None:
    """summary.csv (the printed table) and summary.json (official score + per-section values)."""
    out_dir = Path(out_dir)
    header, rows = table_rows(table, official)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else f"{v:.6f}" if isinstance(v, float) else v for v in row] for row in rows])
    atomic_write_text(buffer.getvalue(), out_dir / "summary.csv")
    summary = {
        "scorer": scorer,
        "official_score": None if math.isnan(official) else official,
        "max_fpr": MAX_FPR,
        "sections": [asdict(r) for r in table],
        "settings": dict(settings or {}),
    }
    atomic_write_text(json.dumps(summary, indent=2, default=str), out_dir / "summary.json")


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
    return (f"anomaly_score_{machine_type}_section_{section}_test.csv",
            f"decision_result_{machine_type}_section_{section}_test.csv")


def _write_rows(rows: Iterable[Sequence], path: Path) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    atomic_write_text(buffer.getvalue(), path)


def write_result_csvs(scores: Mapping[str, float], records: Sequence, thresholds: Mapping[tuple[str, str], float],
                      out_dir: str | Path) -> list[Path]:
    """Write the anomaly-score and decision CSVs of every machine type and section; returns the paths."""
    out_dir = Path(out_dir)
    written = []
    for (machine, section), recs in group_by_section(records).items():
        score_name, decision_name = result_file_names(machine, section)
        threshold = thresholds[(machine, section)]
        _write_rows([(r.file_name, f"{scores[r.path]:.8g}") for r in recs], out_dir / score_name)
        _write_rows([(r.file_name, int(scores[r.path] > threshold)) for r in recs], out_dir / decision_name)
        written += [out_dir / score_name, out_dir / decision_name]
    return written


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


def plot_machine(machine_type: str, records: Sequence, scores: Mapping[str, float], out_dir: str | Path,
                 threshold: float | None = None) -> list[Path]:
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
        domains = sorted({r.domain for r in normal}, key=str)
        for domain in domains:
            normal_scores = [scores[r.path] for r in normal if r.domain == domain]
            y = [0] * len(normal_scores) + [1] * len(anomaly)
            fpr, tpr, _ = roc_curve(y, normal_scores + anomaly)
            auc = roc_auc_score(y, normal_scores + anomaly)
            ax.plot(fpr, tpr, label=f"{domain or 'all'} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.axvline(MAX_FPR, color="grey", lw=0.8, ls="--")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{machine_type}: ROC")
        ax.legend(loc="lower right")
        _save_figure(fig, out_dir / f"roc_{machine_type}.png")
        plt.close(fig)
        written.append(out_dir / f"roc_{machine_type}.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    all_scores = np.array([scores[r.path] for r in records])
    bins, log_scale = _histogram_bins(all_scores)
    groups = {"normal": [scores[r.path] for r in normal], "anomaly": anomaly,
              "unlabelled": [scores[r.path] for r in records if r.label not in ("normal", "anomaly")]}
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


def write_results(scores: Mapping[str, float], records: Sequence, train_scores: Mapping[tuple[str, str], Sequence[float]],
                  out_dir: str | Path, scorer: str, settings: Mapping | None = None, plots: bool = True,
                  title: str | None = None) -> dict:
    """Measure, print and write everything for one scorer.

    ``scores``: test clip path -> anomaly score (higher = more anomalous); ``records``: the test
    ClipRecords; ``train_scores``: (machine_type, section) -> scores of that section's training
    normals (for the decision threshold). Returns the JSON summary as a dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    thresholds = {}
    for key in group_by_section(records):
        if key not in train_scores or len(train_scores[key]) == 0:
            raise ValueError(f"no training scores for {key[0]} section {key[1]}: "
                             "cannot set the decision threshold (is the section missing from train/?)")
        thresholds[key] = gamma_threshold(train_scores[key])
    write_result_csvs(scores, records, thresholds, out_dir)
    table, official = compute_official(scores, records)
    if any(row.values() for row in table):
        print_table(table, official, title=title or scorer)
    else:
        print(f"{scorer}: no labelled test clips; scores and decisions written, metrics skipped")
    write_summary(table, official, out_dir, scorer, settings)
    if plots:
        by_machine: dict[str, list] = {}
        for record in records:
            by_machine.setdefault(record.machine_type, []).append(record)
        for machine, recs in by_machine.items():
            # one threshold per machine for the plot: the sections' mean (usually one section)
            machine_thresholds = [t for (m, _), t in thresholds.items() if m == machine]
            plot_machine(machine, recs, scores, out_dir, threshold=float(np.mean(machine_thresholds)))
    print(f"results written to {out_dir}")
    return json.loads((out_dir / "summary.json").read_text())
