"""Several seeds' results as one table: every number as mean +- sample standard deviation over the
seeds (run_all.py --seeds), printed and written as CSV."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asd.base.files import atomic_write_text


def mean_std_rows(runs: Sequence[Sequence[dict]]) -> list[dict]:
    """Rows of several runs' comparison tables (same machine types and scorers) merged: each number
    becomes (mean, sample standard deviation) over the runs, None where a run lacks it."""
    merged: dict[tuple, list[dict]] = {}
    for rows in runs:
        for row in rows:
            merged.setdefault((row["machine_type"], row["scorer"]), []).append(row)
    out = []
    for (machine, scorer), rows in merged.items():
        row = {"machine_type": machine, "scorer": scorer, "seeds": len(rows)}
        for column in rows[0]:
            values = [r.get(column) for r in rows]
            if column in row or not all(isinstance(v, (int, float)) for v in values):
                continue
            mean = sum(values) / len(values)
            spread = (
                math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                if len(values) > 1
                else 0.0
            )
            row[column] = (mean, spread)
        row["label"] = rows[0].get("label", "")
        out.append(row)
    return out


def format_mean_std(rows: Sequence[dict], title: str) -> str:
    """The merged table as text: every number as mean +- standard deviation (in percent)."""
    columns = [k for k in rows[0] if k not in ("machine_type", "scorer", "seeds", "label")]
    cell = lambda v: f"{100 * v[0]:.2f} +- {100 * v[1]:.2f}" if isinstance(v, tuple) else "-"  # noqa: E731
    table = [["machine_type", "scorer", *columns]] + [
        [r["machine_type"], r["scorer"], *(cell(r.get(c)) for c in columns)] for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in table
    ]
    seeds = max(r["seeds"] for r in rows)
    out = [
        f"=== {title}: mean +- standard deviation over {seeds} seeds (%) ===",
        lines[0],
        "-" * len(lines[0]),
    ]
    out += lines[1:]
    out += [
        f"{r['scorer']}: {r['label']}: {cell(r.get('score'))}" for r in rows if r["machine_type"] == "all"
    ]
    return "\n".join(out)


def write_mean_std(rows: Sequence[dict], path: Path) -> None:
    """The merged table as CSV: <column>_mean and <column>_std for every number."""
    columns = [k for k in rows[0] if k not in ("machine_type", "scorer", "seeds", "label")]
    header = ["machine_type", "scorer", "seeds"] + [f"{c}_{s}" for c in columns for s in ("mean", "std")]
    lines = [",".join(header)]
    for r in rows:
        values = [v for c in columns for v in (r.get(c) if isinstance(r.get(c), tuple) else ("", ""))]
        lines.append(
            ",".join([r["machine_type"], r["scorer"], str(r["seeds"])] + [_number(v) for v in values])
        )
    atomic_write_text("\n".join(lines) + "\n", path)


def _number(value: Any) -> str:
    return "" if value == "" else f"{value:.6f}"
