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
