"""The back-end registry: evaluate.py's allowed names are the registry's, and a new back end written as
docs/extending.md shows (one file + one registry line) runs through evaluate.py into the side-by-side table."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

import evaluate
from asd.backends import registry

ROOT = Path(__file__).resolve().parents[1]


def test_evaluate_limits_name_the_registry():
    assert evaluate._LIMITS["BACKENDS"] == tuple(registry.REGISTRY)
    embedding = tuple(name for name in registry.REGISTRY if registry.backend_class(name).EMBEDDING)
    assert evaluate._LIMITS["EMBEDDING_BACKEND"] == embedding
    assert set(evaluate.BACKENDS) <= set(registry.REGISTRY) and evaluate.EMBEDDING_BACKEND in embedding


def test_the_documented_example_back_end_joins_the_comparison(tmp_path, write_features, monkeypatch):
    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "extending.md").read_text(), re.S)[1]
    (tmp_path / "centroid.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.REGISTRY, "centroid", "centroid.Centroid")  # the registry line
    monkeypatch.setitem(evaluate._LIMITS, "BACKENDS", (*evaluate._LIMITS["BACKENDS"], "centroid"))
    embed = tmp_path / "embed"
    embed.mkdir()
    write_features(embed, np.random.default_rng(3))
    results = tmp_path / "results"
    summary = evaluate.main(
        [
            "--embed_dir",
            str(embed),
            "--results_dir",
            str(results / "ensemble"),
            "--backends",
            "centroid,ensemble",
            "--plots",
            "false",
            "--report",
            "false",
            "--calibration",
            "off",  # the raw scores, to compare with the documented computation
        ]
    )
    assert (
        list(summary["backends"]) == ["centroid", "ensemble"] and summary["settings"]["backend"] == "centroid"
    )
    table = list(csv.DictReader(open(results / "backends" / "comparison.csv")))
    rows = {r["scorer"]: r for r in table if r["machine_type"] == "all"}
    assert list(rows) == ["centroid", "ensemble"]
    assert float(rows["centroid"]["score"]) == pytest.approx(summary["score"])
    # its scores are the documented computation: 1 - cos to the normals' mean direction
    from asd.embed.embedding_files import load_features

    features = load_features(embed)
    units = features.normal.embeddings / np.linalg.norm(features.normal.embeddings, axis=1, keepdims=True)
    centre = units.mean(0) / np.linalg.norm(units.mean(0))
    test = features.test.embeddings / np.linalg.norm(features.test.embeddings, axis=1, keepdims=True)
    written = dict(
        csv.reader(open(results / "backends" / "centroid" / "anomaly_score_fan_section_00_test.csv"))
    )
    for record, expected in zip(features.test.records, 1.0 - test @ centre):
        assert float(written[record.file_name]) == pytest.approx(expected, abs=1e-6)
