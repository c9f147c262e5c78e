"""The README documents every script's constants and the commands it promises."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from utils import config_constants

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [
    "run_all.py",
    "make_demo_data.py",
    "datashape.py",
    "train.py",
    "extract_embeddings.py",
    "train_deepSVDD.py",
    "evaluate_deepSVDD.py",
    "evaluate.py",
    "bench/encoder.py",
    "bench/scoring.py",
]


def _script_constants(relative: str) -> dict:
    name = "readme_check_" + relative.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return config_constants(vars(module))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_constant_is_in_the_readme(script):
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"#### `{script}`", 1)
    assert len(section) == 2, f"README has no section for {script}"
    body = section[1].split("####", 1)[0]
    missing = [name for name in _script_constants(script) if f"`{name}`" not in body]
    assert not missing, f"README's {script} table lacks {missing}"


def test_readme_names_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert "run_all.py" in makefile and "pytest" in makefile
