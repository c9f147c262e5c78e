"""Command-line constants and atomic writes shared by every script."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from asd.base.cli import check_script_arguments, parse_config
from asd.base.files import atomic_path, atomic_torch_save, atomic_write_text, remove_stale_temp_files
from asd.base.settings_source import config_constants


@pytest.fixture
def script_globals(tmp_path):
    """The globals of a small script file, as a script's parse_config(globals()) sees them."""
    source = tmp_path / "script.py"
    source.write_text(
        textwrap.dedent("""
        from asd.data.preprocessing import SAMPLE_RATE
        EPOCHS = 10              # passes over the data
        LEARNING_RATE = 3e-4
        EAT_CHECKPOINT = None    # local folder
        MIXUP = False
        K_GRID = [1, 3]
        HEAD = "arcface"
        _PRIVATE = 1
        _LIMITS = {"EPOCHS": (1, None), "LEARNING_RATE": (">0", "<1"), "K_GRID": (1, 9), "HEAD": ("arcface", "linear")}
    """)
    )
    namespace = {"__file__": str(source)}
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    return namespace


def test_only_the_scripts_own_upper_case_constants_become_options(script_globals):
    assert list(config_constants(script_globals)) == [
        "EPOCHS",
        "LEARNING_RATE",
        "EAT_CHECKPOINT",
        "MIXUP",
        "K_GRID",
        "HEAD",
    ]


def test_defaults_and_typed_overrides(script_globals):
    cfg = parse_config(script_globals, [])
    assert (cfg.epochs, cfg.learning_rate, cfg.eat_checkpoint, cfg.mixup, cfg.k_grid, cfg.head) == (
        10,
        3e-4,
        None,
        False,
        [1, 3],
        "arcface",
    )
    cfg = parse_config(
        script_globals,
        [
            "--epochs",
            "5",
            "--learning_rate",
            "1e-3",
            "--eat_checkpoint",
            "/ckpt/EAT-base",
            "--mixup",
            "true",
            "--k_grid",
            "1,5,9",
            "--head",
            "linear",
        ],
    )
    assert (cfg.epochs, cfg.learning_rate, cfg.eat_checkpoint, cfg.mixup, cfg.k_grid, cfg.head) == (
        5,
        1e-3,
        "/ckpt/EAT-base",
        True,
        [1, 5, 9],
        "linear",
    )
    assert parse_config(script_globals, ["--eat_checkpoint", "none"]).eat_checkpoint is None
    assert script_globals["EPOCHS"] == 10  # the module's globals are never changed


def test_aliases_bad_values_and_unknown_options(script_globals, capsys):
    assert parse_config(script_globals, ["-e", "7"], aliases={"-e": "EPOCHS"}).epochs == 7
    for argv in (["--epochs", "five"], ["--mixup", "maybe"], ["--sample_rate", "8000"], ["--epo", "3"]):
        with pytest.raises(SystemExit):
            parse_config(script_globals, argv)
    assert "--sample_rate" in capsys.readouterr().err


def test_one_spelling_per_option(script_globals, capsys):
    for argv in (["--learning-rate", "1e-3"], ["--MIXUP", "true"], ["--EPOCHS", "3"]):
        with pytest.raises(SystemExit):
            parse_config(script_globals, argv)
        assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], False),
        (["--mixup"], True),
        (["--mixup", "true"], True),
        (["--mixup", "false"], False),
        (["--mixup", "--epochs", "2"], True),
    ],
)
def test_a_boolean_works_bare_and_with_a_value(script_globals, argv, expected):
    assert parse_config(script_globals, argv).mixup is expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "script.py: error: --epochs must be >= 1, got 0"),
        (["--epochs", "-3"], "--epochs must be >= 1, got -3"),
        (["--learning_rate", "0"], "--learning_rate must be > 0 and < 1, got 0.0"),
        (["--learning_rate", "1"], "--learning_rate must be > 0 and < 1, got 1.0"),
        (["--k_grid", "1,10"], "--k_grid must be >= 1 and <= 9, got 10"),
        (["--head", "cosine"], "--head must be one of arcface, linear, got 'cosine'"),
    ],
)
def test_values_outside_the_limits_are_rejected_by_name(script_globals, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(script_globals, argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_limits_accept_their_bounds(script_globals):
    cfg = parse_config(script_globals, ["--epochs", "1", "--learning_rate", "0.5", "--k_grid", "1,9"])
    assert (cfg.epochs, cfg.learning_rate, cfg.k_grid) == (1, 0.5, [1, 9])


def test_the_source_parser_matches_the_running_one(script_globals, capsys):
    argv = ["--epochs", "4", "--mixup", "--k_grid", "2,3", "--eat_checkpoint", "none"]
    assert check_script_arguments(script_globals["__file__"], argv) == parse_config(script_globals, argv)
    with pytest.raises(SystemExit):
        check_script_arguments(script_globals["__file__"], ["--epochs", "0"])
    assert "script.py: error: --epochs must be >= 1, got 0" in capsys.readouterr().err


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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text("x", tmp_path / "out.txt")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temp_files_are_removed(tmp_path):
    (tmp_path / "results").mkdir()
    stale = [tmp_path / ".model.pth.abc123.tmp", tmp_path / "results" / ".summary.json.x9.tmp"]
    kept = [tmp_path / "model.pth", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for path in stale + kept:
        path.write_text("x")
    half_swapped = tmp_path / ".ensemble.k2j4.tmp"  # a results folder atomic_folder was building
    (half_swapped / "sub").mkdir(parents=True)
    (half_swapped / "sub" / ".roc.png.q1.tmp").write_text("x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale + [half_swapped])
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale + [half_swapped])
    assert remove_stale_temp_files(tmp_path / "absent") == []


def test_importing_the_low_level_modules_leaves_torch_unloaded():
    import subprocess
    import sys

    modules = (
        "asd.base.cli, asd.base.files, asd.base.freshness, asd.base.recipes, asd.base.docs, asd.run.pipeline"
    )
    code = f"import sys, {modules}; print(sorted({{'torch', 'numpy'}} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.stdout.strip() == "[]"


def test_none_turns_off_a_text_setting_only_where_off_is_allowed(script_globals, capsys):
    assert parse_config(script_globals, ["--eat_checkpoint", "None"]).eat_checkpoint is None
    with pytest.raises(SystemExit):
        parse_config(script_globals, ["--head", "none"])
    assert "--head must be one of arcface, linear, got none" in capsys.readouterr().err


def test_a_live_writers_temp_file_is_never_removed(tmp_path):
    import subprocess
    import sys

    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(finished.stdout)
    live = tmp_path / f".model.pth.{os.getpid()}.k2j4x.tmp"
    dead = tmp_path / f".model.pth.{dead_pid}.a1b2c.tmp"
    live_folder = tmp_path / f".ensemble.{os.getpid()}.q9w8.tmp"
    live_folder.mkdir()
    for path in (live, dead):
        path.write_text("half a model")
    assert remove_stale_temp_files(tmp_path) == [dead]
    assert live.exists() and live_folder.exists() and not dead.exists()
    # and atomic_path's own temporary name carries its pid
    with atomic_path(tmp_path / "out.txt") as tmp:
        assert tmp.name.startswith(f".out.txt.{os.getpid()}.") and remove_stale_temp_files(tmp_path) == []
        tmp.write_text("x")


def test_a_full_disk_says_so_names_the_file_and_keeps_the_old_one(tmp_path):
    import torch

    target = tmp_path / "model.pth"
    atomic_torch_save({"v": 1}, target)
    with pytest.raises(OSError, match=f"no space left on device while writing {target}"):
        with atomic_path(target) as tmp, open("/dev/full", "wb") as full:  # writes fail with ENOSPC
            tmp.write_bytes(b"half")
            torch.save({"w": torch.ones(1000)}, full)  # torch's own "unexpected pos ..." error
    with pytest.raises(OSError, match=f"no space left on device while writing {target}"):
        with atomic_path(target) as tmp, open("/dev/full", "w") as full:
            full.write("x" * 100_000)
            full.flush()
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_a_full_disk_for_real(tmp_path):
    """On a 64 KiB tmpfs (needs permission to mount; skipped otherwise)."""
    import subprocess

    import torch

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        atomic_torch_save({"v": torch.ones(10)}, disk / "model.pth")
        with pytest.raises(OSError, match=f"no space left on device while writing {disk / 'model.pth'}"):
            atomic_torch_save({"v": torch.ones(100_000)}, disk / "model.pth")
        assert torch.equal(torch.load(disk / "model.pth", weights_only=True)["v"], torch.ones(10))
        assert [p.name for p in disk.iterdir()] == ["model.pth"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)
