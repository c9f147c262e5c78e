"""Named recipes: the script constants of a published or earlier configuration, set in one go.

    python train.py --recipe asdkit-eat-lora            # or RECIPE = "asdkit-eat-lora" at the top of train.py
    python train.py --recipe arcface-v1 --epochs 5      # this project's first recipe; explicit flags win

RECIPES[name][script] holds only what the recipe sets for that script (keyed by the script's name:
"train", "evaluate", ...). asd.cli.parse_config applies it to any script with a RECIPE constant, under
the one precedence rule: constant at the top of the file < recipe < value given to run_all.py <
command-line flag.

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
