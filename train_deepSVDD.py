"""Scorer A, step 1: fit one Deep SVDD (pyod) per machine type on the normal training embeddings.

    python train_deepSVDD.py --svdd_epochs 50 --use_stats true

Inputs are standardised on the machine type's training normals; with USE_STATS the signal
statistics are appended to the embeddings (asd/score/svdd.py). Each machine type's scaler,
network, centre and the fingerprint of the embeddings it was fitted on go to
SVDD_DIR/deepsvdd_<machine>.pt (tensors and plain data only: read back without unpickling code).
Reads only the embedding files of extract_embeddings.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from asd.base.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

from tqdm import tqdm

from asd.base.cli import config_to_dict, parse_config, print_config
from asd.base.errors import run_script
from asd.base.files import atomic_torch_save
from asd.base.locks import hold_run_folder_lock
from asd.embed.embedding_files import load_features
from asd.score.scoring import row_groups
from asd.score.svdd import DeepSVDDScorer, bundle_path

# folder of normal_embeddings.pt / normal_stats.pt
EMBED_DIR = "."
# one model file per machine type
SVDD_DIR = "svdd_models_per_type"
# append the signal statistics to the embeddings
USE_STATS = False
# MLP widths; the last one is the hypersphere's dimension
HIDDEN_NEURONS = [256, 64]
# pyod epochs
SVDD_EPOCHS = 50
# clips per pyod training batch
SVDD_BATCH_SIZE = 64
# Adam learning rate of the SVDD network
LEARNING_RATE = 1e-3
# dropout between the MLP layers
DROPOUT = 0.0
# pyod's l2_regularizer (Adam weight decay)
WEIGHT_DECAY = 1e-6
# network initialisation and shuffling seed
SEED = 0
# refits whose held-out scores set the decision threshold (0 = in-sample, as before)
THRESHOLD_FOLDS = 5
# torch CPU threads while fitting: the network is small, more threads only add overhead
THREADS = 1
# allowed values of the constants above, checked by asd.base.cli.parse_config
_LIMITS = {
    "HIDDEN_NEURONS": (1, None),
    "SVDD_EPOCHS": (0, None),
    "SVDD_BATCH_SIZE": (1, None),
    "LEARNING_RATE": (">0", None),
    "DROPOUT": (0.0, "<1"),
    "WEIGHT_DECAY": (0.0, None),
    "SEED": (0, None),
    "THRESHOLD_FOLDS": (0, None),
    "THREADS": (1, None),
}


def main(argv: list[str] | None = None) -> dict[str, Path]:
    cfg = parse_config(globals(), argv, description=__doc__)
    print_config(cfg)
    hold_run_folder_lock([cfg.svdd_dir], "train_deepSVDD.py")
    features = load_features(cfg.embed_dir, splits=("train",))
    written = {}
    for (machine,), rows in tqdm(
        row_groups(features.normal.records, "machine_type").items(),
        desc="Deep SVDD per machine type",
        unit="type",
    ):
        normal = features.normal.rows(rows)
        scorer = DeepSVDDScorer(
            cfg.use_stats,
            cfg.hidden_neurons,
            cfg.svdd_epochs,
            cfg.svdd_batch_size,
            cfg.learning_rate,
            cfg.dropout,
            cfg.weight_decay,
            cfg.seed,
            cfg.threads,
        ).fit_out_of_fold(normal, cfg.threshold_folds)
        train_scores = scorer.training_scores(normal)
        path = bundle_path(cfg.svdd_dir, machine)
        atomic_torch_save(
            {
                **scorer.state(),
                "machine_type": machine,
                "n_train": len(rows),
                "embeddings_fingerprint": features.fingerprint,
                "config": config_to_dict(cfg),
            },
            path,
        )
        written[machine] = path
        tqdm.write(
            f"{machine}: {len(rows)} clips x {scorer.inputs(normal).shape[1]} features, "
            f"{'out-of-fold' if getattr(scorer, 'held_out', None) else 'in-sample'} training distance "
            f"mean {train_scores.mean():.4g} (max {train_scores.max():.4g}) -> {path}"
        )
    return written


if __name__ == "__main__":
    sys.exit(run_script(main))
