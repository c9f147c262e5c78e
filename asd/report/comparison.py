"""Several scorers side by side (evaluate.py, run_all.py): one row per machine type and scorer, from their
summaries, in the order given; and where each of evaluate.py's back ends writes its results folder."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from asd.base.files import atomic_write_text
from asd.report.evaluation import summary_mean
from asd.report.tables import csv_cell, csv_text, format_number


def backends_folder(results_dir: str | os.PathLike, backends_dir: str | os.PathLike = "") -> Path:
    """BACKENDS_DIR ("" = "backends" beside RESULTS_DIR): the back ends' folders and comparison.csv."""
    return Path(backends_dir) if backends_dir else Path(results_dir).parent / "backends"


def backend_folders(
    names: Sequence[str], results_dir: str | os.PathLike, backends_dir: str | os.PathLike = ""
) -> dict[str, Path]:
    """{back end: its results folder}: the ensemble's is RESULTS_DIR (score_clips.py reads it there), every
    other one's BACKENDS_DIR/<name>."""
    folder = backends_folder(results_dir, backends_dir)
    return {name: Path(results_dir) if name == "ensemble" else folder / name for name in names}


def comparison_rows(summaries: Mapping[str, dict]) -> list[dict]:
    """Per machine type and scorer: each score column's harmonic (2020: arithmetic) mean over the
    machine's measured sections; then one 'all' row per scorer with its score and label."""
    rows = []
    machines = sorted({s["machine_type"] for summary in summaries.values() for s in summary["sections"]})
    for machine in machines + ["all"]:
        for scorer, summary in summaries.items():
            mean = summary_mean(summary["dcase_year"])
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
    atomic_write_text(csv_text([columns] + [[csv_cell(r[c]) for c in columns] for r in rows]), path)
