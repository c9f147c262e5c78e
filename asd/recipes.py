"""Named recipes: the script constants of a published or earlier configuration, set in one go.

    python train.py --recipe asdkit-eat-lora            # train.py's constants already equal this one
    python train.py --recipe arcface-v1 --epochs 5      # this project's first recipe; explicit flags win

expand_recipe() puts a recipe's flags in front of the user's own; argparse keeps the last value of a
flag, so anything given on the command line overrides the recipe.

asdkit-eat-lora: ASDKit's "dis_eat_scac_trainable", re-evaluated over 4 seeds: official score
63.98 +- 0.70 (DCASE2023 dev), 72.04 +- 0.77 (2023 eval), 59.93 +- 0.37 (2024 dev), 61.47 +- 0.73
(2024 eval). EAT-base (epoch-10 pretrained checkpoint: pass it as --eat_checkpoint), LoRA rank 64 on
qkv, CLS token projected to 256, sub-cluster AdaCos (16 trainable centres per class), mixup on half
the batches, AdamW lr 1e-4 after a 5,000-step linear warm-up, 25 epochs of batch 8, no SpecAugment,
every clip at its own length padded to a multiple of 32 frames. Values the source does not state
keep this project's choices (LoRA alpha / rank = 2, dropout 0.1, weight decay 0.01, gradient clip
1.0, mixup alpha 0.2, a constant rate after the warm-up). Scoring: cosine k-NN (k = 1) on separate
source and target banks, the smaller distance taken, the target bank grown by SMOTE (ratio 0.2,
2 neighbours): evaluate.py with W = 1 (the k-NN branch alone; evaluate.py's own default mixes in the
statistics' Mahalanobis branch, W = 0.5, and says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "asdkit-eat-lora": {
        "train": {
            "POOLING": "cls",
            "PROJECTION_DIM": 256,
            "HEAD": "scadacos",
            "SUB_CLUSTERS": 16,
            "TRAIN_CENTRES": True,
            "LORA_RANK": 64,
            "LORA_ALPHA": 128.0,
            "LORA_TARGETS": ["qkv"],
            "EPOCHS": 25,
            "BATCH_SIZE": 8,
            "LEARNING_RATE": 1e-4,
            "WARMUP_STEPS": 5000,
            "WARMUP_EPOCHS": 0.0,
            "LR_SCHEDULE": "constant",
            "MIXUP_PROB": 0.5,
            "SPEC_AUGMENT": False,
            "TARGET_FRAMES": 0,
            "PAD_MULTIPLE": 32,
        },
        "evaluate": {
            "BACKEND": "knn",
            "K": 1,
            "W": 1.0,
            "SEPARATE_DOMAIN_BANKS": True,
            "SMOTE_RATIO": 0.2,
            "SMOTE_NEIGHBOURS": 2,
            "ASDKIT_BACKENDS": ["knn", "smote_knn", "kmeans", "rescale"],  # ASDKit's four, side by side
        },
    },
    "arcface-v1": {
        "train": {
            "POOLING": "cls",
            "PROJECTION_DIM": 0,
            "HEAD": "arcface",
            "ARCFACE_SCALE": 30.0,
            "ARCFACE_MARGIN": 0.5,
            "LORA_RANK": 8,
            "LORA_ALPHA": 16.0,
            "LORA_TARGETS": ["qkv", "proj"],
            "EPOCHS": 10,
            "BATCH_SIZE": 16,
            "LEARNING_RATE": 3e-4,
            "WARMUP_STEPS": 0,
            "WARMUP_EPOCHS": 1.0,
            "LR_SCHEDULE": "cosine",
            "MIXUP_PROB": 0.0,
            "SPEC_AUGMENT": True,
            "TARGET_FRAMES": 1024,
        },
        "evaluate": {
            "BACKEND": "knn",
            "K": 1,
            "W": 0.5,
            "SEPARATE_DOMAIN_BANKS": True,
            "SMOTE_RATIO": 0.0,
        },
    },
}


def recipe(name: str, script: str) -> dict[str, Any]:
    """The constants recipe ``name`` sets for ``script`` ("train", "evaluate"); ValueError naming the recipes."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; the recipes are {', '.join(sorted(RECIPES))}")
    return RECIPES[name].get(script, {})


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return "none" if value is None else str(value)


def requested_recipe(argv: Sequence[str]) -> str | None:
    """The recipe named by the last --recipe NAME / --recipe=NAME in ``argv`` (None when none is)."""
    name = None
    for i, arg in enumerate(argv):
        flag, has_value, value = arg.partition("=")
        if flag == "--recipe":
            if not has_value:
                if i + 1 >= len(argv):
                    raise ValueError("--recipe needs a name: " + ", ".join(sorted(RECIPES)))
                value = argv[i + 1]
            name = value
    return name


def expand_recipe(script: str, argv: Sequence[str]) -> list[str]:
    """``argv`` with the flags of the recipe it names (--recipe) inserted before the user's own flags."""
    argv = list(argv)
    name = requested_recipe(argv)
    if name is None:
        return argv
    flags = [
        part
        for key, value in recipe(name, script).items()
        for part in (f"--{key.lower()}", _flag_value(value))
    ]
    return flags + argv


def recipe_summary(name: str, script: str, settings: dict[str, Any]) -> str:
    """One line: the recipe's values for ``script`` and those of ``settings`` (lower-case keys) that differ."""
    values = recipe(name, script)
    differ = [
        f"{key}={settings[key.lower()]!r} (recipe {value!r})"
        for key, value in values.items()
        if key.lower() in settings and settings[key.lower()] != value
    ]
    shown = ", ".join(f"{key}={value!r}" for key, value in values.items())
    return f"recipe {name}: {shown}" + (f"\n  set otherwise here: {', '.join(differ)}" if differ else "")
