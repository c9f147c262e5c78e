"""Per machine type: ROC curves per domain and the score histogram (PNG files of a results folder); a
long recording's window scores over time (score_clips.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from asd.base.files import atomic_path
from asd.report.metrics import MAX_FPR, auc_between


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
            ax.plot(fpr, tpr, label=f"{domain or 'all'} (AUC {auc_between(normal_scores, anomaly):.3f})")
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


def _column(rows: Sequence[Mapping[str, str]], name: str) -> np.ndarray:
    """One history column as floats (NaN where an epoch left the cell empty)."""
    return np.array([float(row[name]) if row.get(name) not in (None, "") else np.nan for row in rows])


def has_validation(rows: Sequence[Mapping[str, str]]) -> bool:
    """Whether a training history holds validation values: a val_ column (missing or with empty cells
    when training held nothing out) with a value that is not a copy of the training column (histories
    written before validation-less epochs left their cells empty repeated the training values there)."""
    for validation, training in (("val_loss", "loss"), ("val_accuracy", "accuracy")):
        values = _column(rows, validation)
        if not np.isnan(values).all() and not np.array_equal(values, _column(rows, training), equal_nan=True):
            return True
    return False


def training_curves_figure(rows: Sequence[Mapping[str, str]], title: str = "training"):
    """Loss, accuracy and learning rate per epoch of a training history (asd.train.history.read_history rows),
    validation beside training only where the history has validation values (has_validation), as the
    DCASE baseline draws its loss curve. Returns the matplotlib figure (three panels; each line labelled
    train / validation; without validation the panels are named training loss and accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = _column(rows, "epoch")
    validated = has_validation(rows)
    panels = (("loss", ("loss", "val_loss")), ("accuracy", ("accuracy", "val_accuracy")))
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.6))
    for ax, (name, columns) in zip(axes, panels):
        for column, label in list(zip(columns, ("train", "validation")))[: 2 if validated else 1]:
            values = _column(rows, column)
            if not np.isnan(values).all():
                ax.plot(epochs, values, marker="o", ms=3, label=label)
        shown = name if validated else f"training {name} (no validation split)"
        ax.set(xlabel="epoch", ylabel=name, title=f"{title}: {shown}")
        if ax.lines:
            ax.legend(loc="best")
    rate = _column(rows, "learning_rate")
    if not np.isnan(rate).all():
        axes[2].plot(epochs, rate, marker="o", ms=3, color="tab:green", label="learning rate")
        if np.nanmin(rate) > 0 and np.nanmax(rate) / np.nanmin(rate) > 100:
            axes[2].set_yscale("log")
    axes[2].set(xlabel="epoch", ylabel="learning rate", title=f"{title}: learning rate")
    fig.tight_layout()
    return fig


def training_curves_png(rows: Sequence[Mapping[str, str]], title: str = "training") -> bytes:
    """training_curves_figure as PNG bytes."""
    import io

    import matplotlib.pyplot as plt

    fig = training_curves_figure(rows, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def plot_timeline(
    out: str | os.PathLike,
    name: str,
    times: Sequence[tuple[float, float]],
    scores: Sequence[float],
    threshold: float,
) -> Path:
    """PNG of a recording's window scores over time, the threshold and the windows flagged anomalous."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = np.array([(a + b) / 2 for a, b in times])
    scores = np.asarray(scores, dtype=float)
    unit, scale = ("min", 60.0) if centres[-1] > 300 else ("s", 1.0)
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(centres / scale, scores, lw=1, label="window score")
    flagged = scores > threshold
    ax.scatter(centres[flagged] / scale, scores[flagged], color="red", s=12, zorder=3, label="anomalous")
    ax.axhline(threshold, color="k", lw=1, ls="--", label="decision threshold")
    ax.set(
        xlabel=f"time ({unit})",
        ylabel="anomaly score",
        title=f"{name}: {flagged.sum()} of {len(scores)} windows anomalous",
    )
    ax.legend(loc="upper right")
    out = Path(out)
    _save_figure(fig, out)
    plt.close(fig)
    return out
