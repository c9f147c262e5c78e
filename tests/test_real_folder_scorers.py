"""run_all.py on a small real folder with the published recipe: the headline table is ASDKit's k-NN + SMOTE,
the DCASE baseline autoencoder stands beside it, and each scorer's figures equal the DCASE definitions
recomputed here from its own anomaly-score CSVs with scikit-learn alone.

The folder: the real DCASE 2020 clips of tests/fixtures/dcase_samples (3 normal and 3 anomalous test clips
per machine type, 6 types), their normal clips also its training normals (the 2023 samples cannot serve:
no section of theirs has both labels in both domains, so no figure is defined). DCASE 2020 rules: per
machine ID, AUC and pAUC = roc_auc_score(max_fpr=0.1) over its test clips; summary = their arithmetic mean."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import run_all

pytestmark = pytest.mark.end_to_end  # trains a tiny encoder and runs every step as a subprocess


def _real_folder(samples_dir: Path, out: Path) -> Path:
    for test_dir in sorted((samples_dir / "dcase2020_dev").glob("*/test")):
        for split in ("train", "test"):
            (out / test_dir.parent.name / split).mkdir(parents=True)
        for clip in test_dir.glob("*.wav"):
            shutil.copy(clip, out / test_dir.parent.name / "test" / clip.name)
            if clip.name.startswith("normal_"):
                shutil.copy(clip, out / test_dir.parent.name / "train" / clip.name)
    return out


def _section_values(csv_path: Path) -> tuple[float, float]:
    """(AUC, pAUC) of one anomaly_score CSV by the DCASE 2020 definitions (labels from the clip names)."""
    rows = [(name, float(score)) for name, score in csv.reader(open(csv_path))]
    anomaly = np.array([name.startswith("anomaly_") for name, _ in rows])
    scores = np.array([score for _, score in rows])
    return roc_auc_score(anomaly, scores), roc_auc_score(anomaly, scores, max_fpr=0.1)


def test_the_recipe_leads_with_smote_knn_and_every_figure_is_the_dcase_definition(samples_dir, tmp_path):
    data = _real_folder(samples_dir, tmp_path / "dcase2020_real")
    argv = ["--data_dir", str(data), "--runs_dir", str(tmp_path / "runs"), "--recipe", "asdkit-eat-lora"]
    argv += ["--model_size", "tiny", "train.epochs=1", "train.num_workers=0", "train_deepSVDD.svdd_epochs=2"]
    # three training normals per machine type: k-means 16 and the 4-neighbour rescale cannot fit (as in ASDKit)
    argv += ["evaluate.backends=smote_knn,ensemble", "baseline.baseline_epochs=3"]
    argv += [f"{s}.plots=false" for s in ("evaluate", "evaluate_deepSVDD", "baseline")]
    assert run_all.main(argv) == 0
    results = next((tmp_path / "runs").glob("dcase2020_real-*/results"))
    table = [row for row in csv.DictReader(open(results / "comparison.csv")) if row["machine_type"] == "all"]
    assert [row["scorer"] for row in table] == [
        "ASDKit k-NN + SMOTE",
        "k-NN + Mahalanobis",
        "Deep SVDD",
        "DCASE baseline AE",
    ]
    for folder in ("backends/smote_knn", "ensemble", "deepsvdd", "baseline/baseline_ae"):
        summary = json.loads((results / folder / "summary.json").read_text())
        assert summary["rules"].startswith("DCASE 2020 rules") and summary["complete"], folder
        values = []
        for section in summary["sections"]:
            name = f"anomaly_score_{section['machine_type']}_section_{section['section']}_test.csv"
            auc, pauc = _section_values(results / folder / name)
            assert section["values"]["AUC"] == pytest.approx(auc, abs=1e-12), (folder, name)
            assert section["values"]["pAUC"] == pytest.approx(pauc, abs=1e-12), (folder, name)
            values += [auc, pauc]
        assert len(values) == 12 and summary["score"] == pytest.approx(np.mean(values), abs=1e-12), folder
