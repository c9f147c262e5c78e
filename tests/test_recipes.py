"""recipes.py: named recipes expand into flags before the user's own; train.py's defaults are one."""

from __future__ import annotations

import pytest

import train
from asd import recipes
from asd.cli import config_constants, parse_config


def _train_cfg(argv: list[str]):
    return parse_config(vars(train), recipes.expand_recipe("train", argv))


def test_train_defaults_are_the_named_recipe():
    constants = config_constants(vars(train))
    assert train.RECIPE == "asdkit-eat-lora"
    assert {key: constants[key] for key in recipes.RECIPES[train.RECIPE]["train"]} == recipes.RECIPES[
        train.RECIPE
    ]["train"]
    for name, table in recipes.RECIPES.items():
        unknown = sorted(set(table["train"]) - set(constants))
        assert not unknown, f"recipe {name} sets constants train.py does not have: {unknown}"


def test_recipe_values_apply_and_explicit_flags_win():
    old = _train_cfg(["--recipe", "arcface-v1"])
    assert (old.head, old.lora_rank, old.lora_targets, old.learning_rate, old.target_frames) == (
        "arcface",
        8,
        ["qkv", "proj"],
        3e-4,
        1024,
    )
    assert (old.warmup_steps, old.warmup_epochs, old.lr_schedule, old.mixup_prob, old.spec_augment) == (
        0,
        1.0,
        "cosine",
        0.0,
        True,
    )
    # explicit flags win wherever they stand
    for argv in (
        ["--recipe", "arcface-v1", "--epochs", "3"],
        ["--epochs", "3", "--recipe=arcface-v1"],
    ):
        cfg = _train_cfg(argv)
        assert cfg.epochs == 3 and cfg.head == "arcface" and cfg.recipe == "arcface-v1"
    # no --recipe: the argv is left alone (the constants in the file hold)
    assert recipes.expand_recipe("train", ["--epochs", "2"]) == ["--epochs", "2"]
    assert _train_cfg([]).head == "scadacos"
    # a script the recipe says nothing about gets no flags
    assert recipes.expand_recipe("datashape", ["--recipe", "arcface-v1"]) == ["--recipe", "arcface-v1"]


def test_unknown_recipe_names_the_recipes():
    with pytest.raises(ValueError, match="unknown recipe 'nope'.*arcface-v1, asdkit-eat-lora"):
        recipes.expand_recipe("train", ["--recipe", "nope"])
    with pytest.raises(ValueError, match="--recipe needs a name"):
        recipes.expand_recipe("train", ["--recipe"])
    with pytest.raises(ValueError, match="unknown recipe"):
        train.main(["--recipe", "nope"])


def test_evaluate_side_of_the_published_recipe():
    evaluate = recipes.recipe("asdkit-eat-lora", "evaluate")
    assert evaluate == {
        "BACKEND": "knn",
        "K": 1,
        "W": 1.0,  # the published scorer is k-NN alone
        "SEPARATE_DOMAIN_BANKS": True,
        "SMOTE_RATIO": 0.2,
        "SMOTE_NEIGHBOURS": 2,
    }
    assert recipes.expand_recipe("evaluate", ["--recipe", "asdkit-eat-lora", "--k", "3"]) == [
        "--backend",
        "knn",
        "--k",
        "1",
        "--w",
        "1.0",
        "--separate_domain_banks",
        "true",
        "--smote_ratio",
        "0.2",
        "--smote_neighbours",
        "2",
        "--recipe",
        "asdkit-eat-lora",
        "--k",
        "3",
    ]
    # evaluate.py applies it: k-NN alone with a SMOTE target bank; its own k wins
    import evaluate as evaluate_script
    from asd.cli import parse_config

    argv = recipes.expand_recipe("evaluate", ["--recipe", "asdkit-eat-lora", "-k", "3"])
    cfg = parse_config(vars(evaluate_script), argv, aliases={"-k": "K", "--w": "W"})
    assert (cfg.w, cfg.smote_ratio, cfg.backend, cfg.k) == (1.0, 0.2, "knn", 3)


def test_recipe_summary_names_what_differs():
    cfg = _train_cfg(["--recipe", "asdkit-eat-lora", "--epochs", "1"])
    summary = recipes.recipe_summary("asdkit-eat-lora", "train", vars(cfg))
    assert "HEAD='scadacos'" in summary and "EPOCHS=1 (recipe 25)" in summary
    assert "set otherwise" not in recipes.recipe_summary("asdkit-eat-lora", "train", vars(_train_cfg([])))
