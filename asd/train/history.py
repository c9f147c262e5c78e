"""The training history: train.py's per-epoch record, and the CSV beside the model (one row per epoch,
rewritten atomically after each).

CSV columns (header always the same, in this order):
    epoch          the epoch (1-based)
    loss           mean training loss of the epoch (augmented clips, as trained)
    accuracy       training accuracy of the epoch
    val_loss       mean loss on the validation clips; EMPTY when the run had none (VAL_FRACTION 0)
    val_accuracy   validation accuracy; EMPTY when the run had no validation clips
    learning_rate  the learning rate the epoch started with
    scale          the head's logit scale (SCAdaCos), empty for heads without one
    seconds        the epoch's wall time (the only column two identical runs do not share)
A reader draws validation curves only where val_loss has values; training figures are never
copied into the validation columns.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from asd.base.files import atomic_path

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


def new_history(num_classes: int, num_train: int, num_val: int, pretext: bool) -> dict:
    """An empty history: one list per COLUMNS key (filled by record_epoch) and the run's sizes."""
    return {
        **{key: [] for key in COLUMNS.values()},
        "num_classes": num_classes,
        "num_train": num_train,
        "num_val": num_val,
        "task": "pretext" if pretext else "classes",
    }


def record_epoch(history: dict, **values) -> None:
    """Append one epoch's values to ``history`` (a history resumed from an older run gets missing lists)."""
    done = len(history["epochs"])
    for key, value in values.items():
        history.setdefault(key, [None] * done).append(value)


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
