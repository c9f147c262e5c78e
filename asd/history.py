"""The training history as a CSV beside the model: one row per epoch, rewritten atomically after each."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from asd.files import atomic_path

# CSV column <- train.py history key
COLUMNS = {
    "epoch": "epochs",
    "loss": "train_loss",
    "accuracy": "train_acc",
    "val_loss": "val_loss",
    "val_accuracy": "val_acc",
    "learning_rate": "lr",
    "scale": "scale",
    "seconds": "seconds",
}


def history_path(output: str | os.PathLike) -> Path:
    """Where the history of the model at ``output`` goes: <output stem>_history.csv in its folder."""
    output = Path(output)
    return output.with_name(f"{output.stem}_history.csv")


def write_history(path: str | os.PathLike, history: dict) -> None:
    """Write ``history``'s per-epoch lists as CSV rows (empty cells for values an epoch lacks)."""
    rows = len(history["epochs"])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i in range(rows):
            values = [(history.get(key) or [None] * rows)[i] for key in COLUMNS.values()]
            writer.writerow(["" if value is None else value for value in values])


def read_history(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a history CSV (for the report)."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
