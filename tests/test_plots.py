"""The report's training curves: a validation curve only where the history holds validation values
(a missing val_ column, empty cells and a copy of the training values all mean none)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from asd.report import plots, report
from asd.train.history import history_path, read_history

TRAINING = "epoch,loss,accuracy,learning_rate\n1,2.0,0.25,1e-4\n2,1.5,0.5,5e-5\n"
WITHOUT_VALIDATION = {
    "no val_ columns": TRAINING,
    "empty val_ cells": (
        "epoch,loss,accuracy,val_loss,val_accuracy,learning_rate\n1,2.0,0.25,,,1e-4\n2,1.5,0.5,,,5e-5\n"
    ),
    "val_ copied from training": (
        "epoch,loss,accuracy,val_loss,val_accuracy,learning_rate\n1,2.0,0.25,2.0,0.25,1e-4\n2,1.5,0.5,1.5,0.5,5e-5\n"
    ),
}
WITH_VALIDATION = "epoch,loss,accuracy,val_loss,val_accuracy,learning_rate\n1,2.0,0.25,2.5,0.125,1e-4\n2,1.5,0.5,2.0,0.25,5e-5\n"


def _curves(tmp_path, text: str) -> tuple[dict, str]:
    """{(panel, line label): y values} of the figure and the report's paragraph, for a history CSV."""
    model = tmp_path / "best.pth"
    history_path(model).write_text(text)
    fig = plots.training_curves_figure(read_history(history_path(model)))
    lines = {
        (ax.get_ylabel(), line.get_label()): list(line.get_ydata()) for ax in fig.axes for line in ax.lines
    }
    titles = [ax.get_title() for ax in fig.axes[:2]]
    plt.close(fig)
    return lines, " ".join(titles) + " | " + report.training_curves_html(model)


@pytest.mark.parametrize("case", sorted(WITHOUT_VALIDATION))
def test_without_validation_only_training_curves_are_drawn_and_named(tmp_path, case):
    lines, text = _curves(tmp_path, WITHOUT_VALIDATION[case])
    assert sorted(lines) == [("accuracy", "train"), ("learning rate", "learning rate"), ("loss", "train")]
    assert lines["loss", "train"] == [2.0, 1.5]
    assert "training loss (no validation split)" in text and "training accuracy (no validation split)" in text
    assert "training only (no validation split)" in text and "training and validation" not in text


def test_validation_values_are_drawn_beside_training(tmp_path):
    lines, text = _curves(tmp_path, WITH_VALIDATION)
    assert lines["loss", "validation"] == [2.5, 2.0] and lines["accuracy", "validation"] == [0.125, 0.25]
    assert lines["loss", "train"] == [2.0, 1.5]
    assert "training and validation" in text and "no validation split" not in text
