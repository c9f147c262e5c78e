"""Settings of every script: help that survives the formatter, literal values, one precedence rule."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asd.base.cli import check_script_arguments, parse_config, print_config
from asd.base.docs import SCRIPTS
from asd.base.settings_source import read_source

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).with_name("ruff")


def _formatted(script: str) -> str:
    """The script's source as `ruff format` (the project's settings) leaves it; the file is not touched."""
    done = subprocess.run(
        [str(RUFF), "format", "--config", str(ROOT / "pyproject.toml"), "--stdin-filename", script, "-"],
        input=(ROOT / script).read_text(),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return done.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_constant_has_help_that_survives_the_formatter(script):
    source = read_source((ROOT / script).read_text(), ROOT / script)
    missing = [name for name, text in source.comments.items() if not text or text == f"constant {name}"]
    assert not missing, f"{script}: constants without help (write a comment above each): {missing}"
    after = read_source(_formatted(script), ROOT / script).comments
    changed = {
        name: (text, after.get(name)) for name, text in source.comments.items() if after.get(name) != text
    }
    assert not changed, f"{script}: help text changes under `ruff format` (before, after): {changed}"


def _script(tmp_path: Path, body: str, name: str = "script.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_help_is_the_comment_above_or_a_one_line_trailing_comment(tmp_path):
    path = _script(
        tmp_path,
        """
        # ---- data (a section heading: a blank line separates it)

        # the first line of the help,
        # and its second line
        EAT_CHECKPOINT = "a very long default value that the formatter would have to wrap somewhere"
        EPOCHS = 10  # passes over the data
        WRAPPED = (
            None  # a trailing comment the formatter moved inside the brackets: not help
        )
        """,
    )
    comments = read_source(path.read_text(), path).comments
    assert comments == {
        "EAT_CHECKPOINT": "the first line of the help, and its second line",
        "EPOCHS": "passes over the data",
        "WRAPPED": "",
    }


def test_a_constant_that_is_not_a_literal_is_an_error_naming_it(tmp_path):
    path = _script(
        tmp_path,
        """
        from asd.base.cli import exit_if_help, parse_config

        exit_if_help(globals())
        # passes over the data
        EPOCHS = 5 * 5
        if __name__ == "__main__":
            parse_config(globals())
        """,
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv in (["--help"], []):
        done = subprocess.run(
            [sys.executable, str(path), *argv], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode != 0
        assert f"{path}: constant EPOCHS (script.py:6) is not a literal: EPOCHS = 5 * 5" in done.stderr
    namespace = {"__file__": str(path), "__name__": "script"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    with pytest.raises(SystemExit, match="constant EPOCHS"):
        parse_config(namespace, [])


def test_a_setting_shared_by_scripts_is_written_once_in_its_library(tmp_path):
    _script(
        tmp_path, '# on-disk cache folder; "none" = off\nFEATURE_CACHE = "cache/features"\n', "library.py"
    )
    path = _script(
        tmp_path,
        """
        import library

        FEATURE_CACHE = library.FEATURE_CACHE
        """,
    )
    assert check_script_arguments(path, []).feature_cache == "cache/features"
    assert (
        read_source(path.read_text(), path).comments["FEATURE_CACHE"] == 'on-disk cache folder; "none" = off'
    )
    assert check_script_arguments(path, ["--feature_cache", "none"]).feature_cache is None  # "none" is off


def test_precedence_file_recipe_run_all_flag(capsys, monkeypatch):
    import train

    monkeypatch.setenv("ASD_OPTIONS_GIVEN_TO", "run_all.py")
    cfg = parse_config(vars(train), ["--recipe", "arcface-v1", "--epochs", "2"])
    assert cfg.sources["seed"] == "top of train.py"
    assert cfg.sources["head"] == "recipe arcface-v1"
    assert cfg.sources["epochs"] == "run_all.py (recipe arcface-v1: 10)" and cfg.epochs == 2
    monkeypatch.delenv("ASD_OPTIONS_GIVEN_TO")
    assert parse_config(vars(train), ["--epochs", "2"]).sources["epochs"].startswith("command line")
    print_config(cfg)
    assert "precedence, lowest first: constant at the top of the file < recipe" in capsys.readouterr().out


def test_feature_cache_is_written_once_and_off_is_none():
    """The rule for a setting several scripts share: its value and help live in the library module that
    uses it (asd/data/preprocessing.py); each script takes it over with FEATURE_CACHE = preprocessing.FEATURE_CACHE."""
    import ast

    written = []
    for path in [*SCRIPTS, "asd/data/preprocessing.py", "asd/data/dataset.py", "asd/model/model.py"]:
        for node in ast.parse((ROOT / path).read_text()).body:
            if (
                isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "FEATURE_CACHE" for t in node.targets)
                and not isinstance(node.value, ast.Attribute)
            ):
                written.append(path)
    assert written == ["asd/data/preprocessing.py"], f"FEATURE_CACHE is written in {written}; write it once"
    for script in ("train.py", "extract_embeddings.py"):
        source = read_source((ROOT / script).read_text(), ROOT / script)
        assert source.settings["FEATURE_CACHE"].where.startswith("preprocessing.py:"), script
        assert '"none"' in source.comments["FEATURE_CACHE"] or "none" in source.comments["FEATURE_CACHE"]
        assert check_script_arguments(ROOT / script, ["--feature_cache", "none"]).feature_cache is None


@pytest.mark.parametrize("name", ["CHANNELS", "RESIDUAL_WEIGHT", "CHANNEL_COMBINE"])
def test_channel_settings_are_written_once(name):
    """The channel defaults live in asd/data/preprocessing.py; every script that has them takes them over, with its
    own help and its _LIMITS still checked."""
    import ast

    written = []
    for path in [*SCRIPTS, "asd/data/dataset.py", "asd/model/model.py"]:
        for node in ast.parse((ROOT / path).read_text()).body:
            if (
                isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == name for t in node.targets)
                and not isinstance(node.value, ast.Attribute)
                # run_all's None is "not set", datashape's "" is "require no mode": not a default
                and ast.literal_eval(node.value) not in (None, "")
            ):
                written.append(path)
    assert written == [], f"{name} is written in {written}; take it over from asd/data/preprocessing.py"
    for script in ("train.py", "extract_embeddings.py", "score_clips.py"):
        source = read_source((ROOT / script).read_text(), ROOT / script)
        assert source.settings[name].where.startswith("preprocessing.py:"), script
        assert source.comments[name], script
        with pytest.raises(SystemExit):
            check_script_arguments(ROOT / script, [f"--{name.lower()}", "-1" if "WEIGHT" in name else "x"])


@pytest.mark.parametrize(
    "script", [s for s in SCRIPTS if "RECIPE" in read_source((ROOT / s).read_text(), ROOT / s).values]
)
def test_a_script_starts_from_its_own_defaults(script):
    """A script's top holds its own defaults; a recipe (asd/base/recipes.py) holds only what it sets."""
    assert read_source((ROOT / script).read_text(), ROOT / script).values["RECIPE"] == "", (
        f'{script}: RECIPE at its top should be "" (no recipe); its constants are the script\'s defaults'
    )


def test_limits_can_name_a_module_constant_read_from_its_source(tmp_path):
    """_LIMITS names allowed values another module owns (``library.MODES``, ``("", *library.MODES)``, a
    dict's keys); --help and run_all read them from that module's source, as Python computes them."""
    _script(tmp_path, 'MODES = ("a", "b")\nTABLE = {"x": 1, "y": 2}\n', "library.py")
    path = _script(
        tmp_path,
        """
        import library

        # mode
        MODE = "a"
        # table entry
        ENTRY = ""
        _LIMITS = {"MODE": library.MODES, "ENTRY": ("", *library.TABLE)}
        """,
    )
    assert read_source(path.read_text(), path).limits == {"MODE": ("a", "b"), "ENTRY": ("", "x", "y")}
    assert check_script_arguments(path, ["--mode", "b", "--entry", "y"]).entry == "y"
    with pytest.raises(SystemExit):
        check_script_arguments(path, ["--entry", "z"])
    path.write_text(path.read_text().replace("library.MODES", "library.MISSING"))
    with pytest.raises(SystemExit, match="_LIMITS cannot be read from the source"):
        check_script_arguments(path, [])


def test_allowed_values_are_named_not_copied():
    """Recipe names and channel modes are written once (asd/base/recipes.py, asd/data/preprocessing.py): every script's
    _LIMITS names them, and what --help reads from the source is what the running script checks."""
    import ast

    import evaluate
    import run_all
    import train
    from asd.base import recipes
    from asd.data import preprocessing

    owned = {frozenset(recipes.RECIPES), frozenset(preprocessing.CHANNEL_MODES)}
    for script in SCRIPTS:
        tree = ast.parse((ROOT / script).read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_LIMITS":
                for key, value in zip(node.value.keys, node.value.values):
                    if isinstance(value, ast.Tuple) and all(isinstance(e, ast.Constant) for e in value.elts):
                        copied = frozenset(e.value for e in value.elts) - {""}
                        assert copied not in owned, (
                            f"{script}: _LIMITS {key.value} copies a list; name its owner"
                        )
    for module in (train, evaluate, run_all):
        assert read_source(Path(module.__file__).read_text(), module.__file__).limits == module._LIMITS
