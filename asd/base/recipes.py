"""Named recipes: the script constants of a published or earlier configuration, set in one go.

    python train.py --recipe asdkit-eat-lora            # or RECIPE = "asdkit-eat-lora" at the top of train.py
    python train.py --recipe arcface-v1 --epochs 5      # this project's first recipe; explicit flags win

RECIPES[name][script] holds only what the recipe sets for that script (keyed by the script's name:
"train", "evaluate", ...), and only where it differs from the script's own constant (as nanoGPT's config
files do): every value is written once, so a constant edited at the top of a script still holds under
any recipe that does not set it. asd.base.cli.parse_config applies it to any script with a RECIPE constant, under
the one precedence rule: constant at the top of the file < recipe < value given to run_all.py <
command-line flag.

asdkit-eat-lora: ASDKit's "dis_eat_scac_trainable" (TakuyaFujimura/dcase-asd-toolkit at ed27d82; the
settings as tests/fixtures/asdkit_fixture/README.md lists them with their ASDKit file and line),
re-evaluated over 4 seeds (train.py's own constants are its training settings; the recipe sets
evaluate.py's differences): official score 63.98 +- 0.70 (DCASE2023 dev), 72.04 +- 0.77 (2023 eval),
59.93 +- 0.37 (2024 dev), 61.47 +- 0.73 (2024 eval). Training: EAT-base (epoch-10 pretrained
checkpoint: pass it as --eat_checkpoint), LoRA rank 64 on qkv with peft's defaults alpha 8 and dropout
0, drop path 0.1 rising linearly over the blocks, CLS token projected to 256, sub-cluster AdaCos (16
trainable xavier-initialised centres per class, fixed scale sqrt(2) ln(N - 1)), classes machine,
section, attributes and domain counted over training and labelled test names, every waveform tiled or
cropped to 18 s (DCASE 2023) / 12 s (2024) at a random offset, per-sample waveform mixup (probability
0.5, lambda ~ U(0, 1)), AdamW lr 1e-4 with decay 0.01 on every trainable parameter after timm's
5,000-step linear warm-up from 0, no gradient clipping, float32 (no bf16 autocast), 25 epochs of batch
8, no SpecAugment, nothing held out, the last epoch kept; train on the development and
additional-training folders together (--data_dir dev_data,eval_data). Scoring: cosine k-NN (k = 1) on
separate source and target banks, the smaller distance taken, the target bank grown by SMOTE (ratio 0.2,
2 neighbours): evaluate.py with W = 1 (the k-NN branch alone; evaluate.py's own default mixes in the
statistics' Mahalanobis branch, W = 0.5, and says so).
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    # train.py's constants are this recipe's training settings: it sets only evaluate.py's differences
    "asdkit-eat-lora": {
        "evaluate": {
            # ASDKit's k-NN + SMOTE is the headline; the ensemble and ASDKit's other three side by side
            "BACKENDS": ["smote_knn", "ensemble", "knn", "kmeans", "rescale"],
            "EMBEDDING_BACKEND": "smote_knn",
            "W": 1.0,
            # ASDKit's back ends: half the Euclidean distance of unit rows, per machine type, raw distances
            "METRIC": "euclidean",
            "GROUP_BY": "machine_type",
            "BANK_NORMALISE": "off",
        },
    },
    # this project's choices before the asdkit-eat-lora recipe followed ASDKit item by item
    "arcface-v1": {
        "train": {
            "PROJECTION_DIM": 0,
            "HEAD": "arcface",
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
            "LORA_DROPOUT": 0.1,
            "DROP_PATH": 0.0,
            "SCALE": "adaptive",
            "CENTRE_INIT": "normal",
            "LABEL": "attributes",
            "CLASSES_FROM": "train",
            "WARMUP_RULE": "project",
            "DECAY": "matrices",
            "GRAD_CLIP": 1.0,
            "MIXUP": "batch_fbank",
            "CLIP_SECONDS": "whole",
            "VAL_FRACTION": 0.1,
            "KEEP_EPOCH": "best",
            "AMP": True,
        },
        # the raw k-NN distance this recipe was measured with (before domain-calibrated banks)
        "evaluate": {"BANK_NORMALISE": "off"},
    },
}


def recipe(name: str, script: str) -> dict[str, Any]:
    """The constants recipe ``name`` sets for ``script`` ("train", "evaluate"); ValueError naming the recipes."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; the recipes are {', '.join(sorted(RECIPES))}")
    return RECIPES[name].get(script, {})
