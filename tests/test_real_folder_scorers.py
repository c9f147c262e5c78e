"""run_all.py on a small real folder (tests/fixtures/dcase_samples/dcase2023_dev) with the published recipe:
the headline table is ASDKit's k-NN + SMOTE, the DCASE baseline autoencoder stands beside it, and each
scorer's figures equal the DCASE definitions recomputed here from its own anomaly-score CSVs with
scikit-learn alone (AUC (source) = source normals vs the section's anomalies, AUC (target) likewise,
pAUC = roc_auc_score(max_fpr=0.1) on all clips, score = harmonic mean of every value)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

import run_all

pytestmark = pytest.mark.end_to_end  # trains a tiny encoder and runs every step as a subprocess


def _section_values(csv_path: Path) -> list[float]:
    """AUC (source), AUC (target), pAUC of one anomaly_score CSV by the DCASE definitions (named clips)."""
    rows = [(name, float(score)) for name, score in csv.reader(open(csv_path))]
    anomaly = np.array(["_anomaly_" in name for name, _ in rows])
    scores = np.array([score for _, score in rows])
    values = []
    for domain in ("source", "target"):
        normal = np.array([f"_{domain}_" in name and "_normal_" in name for name, _ in rows])
        if normal.any() and anomaly.any():
            keep = normal | anomaly
            values.append(roc_auc_score(anomaly[keep], scores[keep]))
    if anomaly.any() and (~anomaly).any():
        values.append(roc_auc_score(anomaly, scores, max_fpr=0.1))
    return values


def test_the_recipe_leads_with_smote_knn_and_every_figure_is_the_dcase_definition(samples_dir, tmp_path):
    data = samples_dir / "dcase2023_dev"
    argv = ["--data_dir", str(data), "--runs_dir", str(tmp_path / "runs"), "--recipe", "asdkit-eat-lora"]
    argv += ["--model_size", "tiny", "train.epochs=1", "train.num_workers=0", "train_deepSVDD.svdd_epochs=2"]
    # two training normals per machine type: k-means 16 and the 4-neighbour rescale cannot fit (as in ASDKit)
    argv += ["evaluate.backends=smote_knn,ensemble", "baseline.baseline_epochs=3"]
    argv += [f"{s}.plots=false" for s in ("evaluate", "evaluate_deepSVDD", "baseline")]
    assert run_all.main(argv) == 0
    results = next((tmp_path / "runs").glob("dcase2023_dev-*/results"))
    table = [row for row in csv.DictReader(open(results / "comparison.csv")) if row["machine_type"] == "all"]
    assert [row["scorer"] for row in table] == [
        "ASDKit k-NN + SMOTE",
        "k-NN + Mahalanobis",
        "Deep SVDD",
        "DCASE baseline AE",
    ]
    for folder in ("backends/smote_knn", "ensemble", "deepsvdd", "baseline/baseline_ae"):
        summary = json.loads((results / folder / "summary.json").read_text())
        values = []
        for section in summary["sections"]:
            name = f"anomaly_score_{section['machine_type']}_section_{section['section']}_test.csv"
            values += _section_values(results / folder / name)
        assert summary["score"] == pytest.approx(hmean(values), abs=1e-9), folder
