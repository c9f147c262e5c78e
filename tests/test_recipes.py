"""asd/base/recipes.py: a recipe sets its values over a script's constants, whether RECIPE is set at the top
of the file or by --recipe; flags win; every value says where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest

import evaluate
import train
from asd.base import recipes
from asd.base.cli import check_script_arguments, parse_config, print_config
from asd.base.settings_source import config_constants, source_constants

ROOT = Path(__file__).resolve().parents[1]


def test_every_recipe_sets_only_constants_its_scripts_have():
    for name, parts in recipes.RECIPES.items():
        for script, values in parts.items():
            constants = config_constants(vars({"train": train, "evaluate": evaluate}[script]))
            unknown = sorted(set(values) - set(constants))
            assert not unknown, f"recipe {name} sets constants {script}.py does not have: {unknown}"


def test_recipe_values_apply_and_explicit_flags_win():
    old = parse_config(vars(train), ["--recipe", "arcface-v1"])
    expected = recipes.recipe("arcface-v1", "train")
    assert {key: getattr(old, key.lower()) for key in expected} == expected
    assert old.head == "arcface" and old.lora_targets == ["qkv", "proj"]
    for argv in (["--recipe", "arcface-v1", "--epochs", "3"], ["--epochs", "3", "--recipe=arcface-v1"]):
        cfg = parse_config(vars(train), argv)
        assert cfg.epochs == 3 and cfg.head == "arcface" and cfg.recipe == "arcface-v1"
        assert cfg.sources["epochs"].startswith("command line (recipe arcface-v1: 10)")
        assert cfg.sources["head"] == "recipe arcface-v1"


def test_recipe_at_the_top_of_the_file_works_like_the_flag(tmp_path):
    by_flag = parse_config(vars(evaluate), ["--recipe", "asdkit-eat-lora"])
    edited = {**vars(evaluate), "RECIPE": "asdkit-eat-lora"}  # what the running script sees after the edit
    assert parse_config(edited, []) == by_flag and by_flag.w == 1.0
    # and from the source (--help, run_all): a copy of evaluate.py with RECIPE edited at its top
    copy = tmp_path / "evaluate.py"
    copy.write_text(
        (ROOT / "evaluate.py").read_text().replace('\nRECIPE = ""', '\nRECIPE = "asdkit-eat-lora"', 1)
    )
    from_source = check_script_arguments(copy, [])
    assert from_source.recipe == "asdkit-eat-lora"
    assert (from_source.w, from_source.metric) == (1.0, "euclidean")
    assert from_source.sources["metric"] == "recipe asdkit-eat-lora"
    assert from_source.sources["smote_ratio"] == "top of evaluate.py"  # ASDKit's 0.2 is evaluate.py's own
    assert check_script_arguments(copy, ["--recipe", ""]).metric == evaluate.METRIC


def test_unknown_recipe_names_the_recipes(capsys):
    with pytest.raises(SystemExit):
        train.main(["--recipe", "nope"])
    assert "unknown recipe 'nope'; the recipes are arcface-v1, asdkit-eat-lora" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        recipes.recipe("nope", "train")


def test_evaluate_side_of_the_published_recipe():
    cfg = parse_config(
        vars(evaluate), ["--recipe", "asdkit-eat-lora", "-k", "3"], aliases={"-k": "K", "--w": "W"}
    )
    values = recipes.recipe("asdkit-eat-lora", "evaluate")
    assert (cfg.w, cfg.smote_ratio, cfg.embedding_backend, cfg.k) == (
        values["W"],
        0.2,  # ASDKit's ratio is evaluate.py's default, so the recipe need not name it
        values["EMBEDDING_BACKEND"],
        3,
    )
    assert cfg.backends[0] == "smote_knn"  # the headline: ASDKit's published figures come from it
    assert cfg.sources["k"].startswith("command line") and cfg.sources["w"] == "recipe asdkit-eat-lora"


def test_print_config_names_the_source_of_every_value(capsys, monkeypatch):
    monkeypatch.setenv("ASD_OPTIONS_GIVEN_TO", "run_all.py")
    print_config(parse_config(vars(evaluate), ["--recipe", "asdkit-eat-lora", "--plots", "false"]))
    out = capsys.readouterr().out
    assert "constant at the top of the file < recipe < value given to run_all.py < command-line flag" in out
    assert "PLOTS" in out and "= False  [run_all.py]" in out
    assert "= 1.0  [recipe asdkit-eat-lora]" in out and "[top of evaluate.py]" in out


def test_a_recipe_lists_only_what_differs_from_the_scripts_constants():
    """Every value is written once: a recipe never repeats a script's own constant, so an edit at the
    top of the script holds under a recipe that does not set it (train.py's constants ARE asdkit-eat-lora's
    training settings: that recipe sets nothing for train.py)."""
    for name, parts in recipes.RECIPES.items():
        for script, values in parts.items():
            constants = source_constants(ROOT / f"{script}.py")
            repeated = sorted(key for key, value in values.items() if constants.get(key) == value)
            assert not repeated, f"recipe {name} repeats {script}.py's own constants {repeated}"
    assert recipes.recipe("asdkit-eat-lora", "train") == {}
    plain, recipe = parse_config(vars(train), []), parse_config(vars(train), ["--recipe", "asdkit-eat-lora"])
    assert {**vars(plain), "recipe": "asdkit-eat-lora"} == vars(recipe)
