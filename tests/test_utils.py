"""Command-line constants and atomic writes shared by every script."""
from __future__ import annotations

import textwrap

import pytest

from utils import atomic_path, atomic_torch_save, config_constants, parse_config


@pytest.fixture
def script_globals(tmp_path):
    """The globals of a small script file, as a script's parse_config(globals()) sees them."""
    source = tmp_path / "script.py"
    source.write_text(textwrap.dedent('''
        from preprocessing import SAMPLE_RATE
        EPOCHS = 10              # passes over the data
        LEARNING_RATE = 3e-4
        EAT_CHECKPOINT = None    # local folder
        MIXUP = False
        K_GRID = [1, 3]
        HEAD = "arcface"
        _PRIVATE = 1
    '''))
    namespace = {"__file__": str(source)}
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    return namespace


def test_only_the_scripts_own_upper_case_constants_become_options(script_globals):
    assert list(config_constants(script_globals)) == [
        "EPOCHS", "LEARNING_RATE", "EAT_CHECKPOINT", "MIXUP", "K_GRID", "HEAD"]


def test_defaults_and_typed_overrides(script_globals):
    cfg = parse_config(script_globals, [])
    assert (cfg.epochs, cfg.learning_rate, cfg.eat_checkpoint, cfg.mixup, cfg.k_grid, cfg.head) == (
        10, 3e-4, None, False, [1, 3], "arcface")
    cfg = parse_config(script_globals, ["--epochs", "5", "--learning-rate", "1e-3", "--eat_checkpoint",
                                        "/ckpt/EAT-base", "--MIXUP", "true", "--k_grid", "1,5,9",
                                        "--head", "linear"])
    assert (cfg.epochs, cfg.learning_rate, cfg.eat_checkpoint, cfg.mixup, cfg.k_grid, cfg.head) == (
        5, 1e-3, "/ckpt/EAT-base", True, [1, 5, 9], "linear")
    assert parse_config(script_globals, ["--eat_checkpoint", "none"]).eat_checkpoint is None
    assert script_globals["EPOCHS"] == 10          # the module's globals are never changed


def test_aliases_bad_values_and_unknown_options(script_globals, capsys):
    assert parse_config(script_globals, ["-e", "7"], aliases={"-e": "EPOCHS"}).epochs == 7
    for argv in (["--epochs", "five"], ["--mixup", "maybe"], ["--sample_rate", "8000"], ["--epo", "3"]):
        with pytest.raises(SystemExit):
            parse_config(script_globals, argv)
    assert "--sample_rate" in capsys.readouterr().err


def test_help_shows_the_constants_comment(script_globals, capsys):
    with pytest.raises(SystemExit):
        parse_config(script_globals, ["--help"])
    assert "passes over the data" in capsys.readouterr().out


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.pth"
    atomic_torch_save({"v": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a mod")
            raise RuntimeError("crash while writing")
    import torch
    assert torch.load(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]
