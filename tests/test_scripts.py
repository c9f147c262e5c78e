"""Every script's command line: each numeric constant has limits its default meets, the options read
from a script's source match the running script's, and --help answers without the heavy libraries."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from asd.base.cli import check_script_arguments, limit_violation
from asd.base.docs import SCRIPTS
from asd.base.settings_source import config_constants, source_constants

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "torchaudio", "sklearn", "scipy", "peft", "pyod"}


def _module(script: str):
    return importlib.import_module(script.removesuffix(".py").replace("/", "."))


def _is_numeric(value) -> bool:
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_constant_has_limits_its_default_meets(script):
    module = _module(script)
    limits = getattr(module, "_LIMITS", {})
    constants = config_constants(vars(module))
    unlimited = [name for name, value in constants.items() if _is_numeric(value) and name not in limits]
    assert not unlimited, f"{script}: no _LIMITS for {unlimited}"
    broken = {name: limit_violation(constants[name], limit) for name, limit in limits.items()}
    assert not any(broken.values()), f"{script}: defaults outside their limits: {broken}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_source_gives_the_same_options_as_the_running_script(script):
    assert source_constants(ROOT / script) == config_constants(vars(_module(script)))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_without_the_heavy_libraries(script):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / script), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "argparse" in imported and not imported & HEAVY, sorted(imported & HEAVY)
    first = next(iter(source_constants(ROOT / script)))
    assert f"--{first.lower()}" in done.stdout and "usage:" in done.stdout


@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("train.py", ["--epochs", "0"], "train.py: error: --epochs must be >= 1, got 0"),
        ("train.py", ["--epochs", "-3"], "train.py: error: --epochs must be >= 1, got -3"),
        ("train.py", ["--resume", "maybe"], "--resume must be one of auto, true, false, got 'maybe'"),
        ("evaluate.py", ["-k", "0"], "evaluate.py: error: --k must be >= 1, got 0"),
        ("evaluate.py", ["--k", "-1"], "evaluate.py: error: --k must be >= 1, got -1"),
        ("evaluate.py", ["--w", "1.5"], "--w must be >= 0 and <= 1, got 1.5"),
        ("train_deepSVDD.py", ["--hidden_neurons", "64,0"], "--hidden_neurons must be >= 1, got 0"),
    ],
)
def test_a_bad_value_stops_the_script_before_it_starts(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _module(script).main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_boolean_works_as_a_bare_flag_and_each_option_has_one_spelling():
    assert check_script_arguments(ROOT / "evaluate.py", ["--sweep"]).sweep is True
    assert check_script_arguments(ROOT / "evaluate.py", ["--sweep", "false"]).sweep is False
    assert check_script_arguments(ROOT / "evaluate.py", ["-k", "3"]).k == 3
    assert check_script_arguments(ROOT / "run_all.py", ["--eat_checkpoint", "x"]).eat_checkpoint == "x"
    for flag in ("--eat-checkpoint", "--EAT_CHECKPOINT"):
        with pytest.raises(SystemExit):
            check_script_arguments(ROOT / "run_all.py", [flag, "x"])
