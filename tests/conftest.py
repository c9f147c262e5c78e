"""Shared fixtures: the real DCASE sample clips and a tiny synthetic demo tree."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
SAMPLES_DIR = Path(os.environ.get("DCASE_SAMPLES_DIR", FIXTURES_DIR / "dcase_samples"))


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """tests/fixtures/dcase_samples: 64 real DCASE clips, part of the repository (DCASE_SAMPLES_DIR overrides)."""
    if not SAMPLES_DIR.is_dir():
        pytest.fail(
            f"real DCASE sample clips not found at {SAMPLES_DIR}: restore tests/fixtures/dcase_samples"
        )
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def tiny_demo_dir(tmp_path_factory) -> Path:
    """A tiny DCASE-2023-style demo_data tree (fan, gearbox, pump; 8 train + 4 test clips each, 2 s)."""
    import make_demo_data
    from helpers import TINY_DEMO_ARGS

    out_dir = tmp_path_factory.mktemp("tiny_demo") / "demo_data"
    make_demo_data.main(["--out_dir", str(out_dir), *TINY_DEMO_ARGS])
    return out_dir


def _write_features(folder, rng) -> None:
    """A fan section 00 of embedding and statistics files in extract_embeddings.py's format, with
    anomalies far from the normals (the data folder and model they name do not exist: not checked)."""
    import numpy as np
    import torch

    from asd.data.names import ClipRecord
    from asd.embed import embedding_files

    fingerprint = {
        "format": embedding_files.FEATURES_FORMAT,
        "clips": "d",
        "model_key": "m",
        "settings": {},
        "precision": "fp32",
        "data_dir": str(folder / "no_data"),
        "model_path": str(folder / "no.pth"),
    }
    centre = rng.normal(size=16) * 3
    splits = {
        "train": [("source", "normal")] * 30 + [("target", "normal")] * 4,
        "test": [
            (d, label) for d in ("source", "target") for label in ("normal", "anomaly") for _ in range(5)
        ],
    }
    for split, rows in splits.items():
        records = [
            ClipRecord(
                f"/gone/fan/{split}/section_00_{d}_{split}_{label}_{i:04d}.wav", "fan", "00", d, split, label
            ).to_dict()
            for i, (d, label) in enumerate(rows)
        ]
        shift = np.array([[4.0 if label == "anomaly" else 0.0] for _, label in rows])
        embeddings = centre + rng.normal(size=(len(rows), 16)) + shift * rng.normal(size=(len(rows), 16))
        stats = rng.normal(size=(len(rows), 3)) + shift
        for path, matrix, columns in zip(
            embedding_files.feature_paths(folder, split), (embeddings, stats), (None, ["a", "b", "c"])
        ):
            torch.save(
                {
                    "matrix": torch.tensor(matrix, dtype=torch.float32),
                    "records": records,
                    "columns": columns,
                    "fingerprint": {**fingerprint, "split": split},
                },
                path,
            )


@pytest.fixture
def write_features():
    """write_features(folder, rng): a fan section 00 of embedding files with obvious anomalies."""
    return _write_features
