"""Scorer A, step 1: fit one Deep SVDD (pyod) per machine type on the normal training embeddings.

    python train_deepSVDD.py --epochs 50 --use_stats true

Inputs are standardised (a StandardScaler fitted on the machine type's training normals); with
USE_STATS the signal statistics are appended to the embeddings. Each machine type's scaler, model
and the fingerprint of the embeddings it was fitted on go to SVDD_DIR/deepsvdd_<machine>.joblib.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

from utils import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import joblib
import numpy as np
import torch
from pyod.models.deep_svdd import DeepSVDD
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from extract_embeddings import load_split_features
from utils import atomic_path, config_to_dict, parse_config, print_config, seed_everything

DATA_DIR = "dev_data"                  # DCASE folder: <machine>/{train,test}/*.wav
MODEL_PATH = "best_encoder_model.pth"  # tuned encoder (to check or rebuild the embeddings)
EMBED_DIR = "."                        # folder of normal_embeddings.pt / normal_stats.pt
SVDD_DIR = "svdd_models_per_type"      # one model file per machine type
USE_STATS = False                      # append the signal statistics to the embeddings
HIDDEN_NEURONS = [256, 64]             # MLP widths; the last one is the hypersphere's dimension
EPOCHS = 50                            # pyod epochs (the lowest-loss epoch is kept)
BATCH_SIZE = 64                        # clips per pyod training batch
LEARNING_RATE = 1e-3                   # Adam learning rate of the SVDD network
DROPOUT = 0.0                          # dropout between the MLP layers
WEIGHT_DECAY = 1e-6                    # pyod's l2_regularizer (Adam weight decay)
SEED = 0                               # network initialisation and shuffling seed
THREADS = 1                            # torch CPU threads while fitting: the network is small, more threads only add overhead
DEVICE = "auto"                        # for embedding clips when the embeddings must be rebuilt
# allowed values of the constants above, checked by utils.parse_config
_LIMITS = {"HIDDEN_NEURONS": (1, None), "EPOCHS": (1, None), "BATCH_SIZE": (1, None), "LEARNING_RATE": (">0", None),
           "DROPOUT": (0.0, "<1"), "WEIGHT_DECAY": (0.0, None), "SEED": (0, None), "THREADS": (1, None)}

# -----------------------------------------------------------------------------


def bundle_path(svdd_dir: str | os.PathLike, machine_type: str) -> Path:
    return Path(svdd_dir) / f"deepsvdd_{machine_type}.joblib"


def svdd_inputs(embeddings: dict, stats: dict, rows: Sequence[int], use_stats: bool) -> np.ndarray:
    """Rows of the embedding matrix, with the statistics appended when ``use_stats``."""
    x = embeddings["matrix"][list(rows)].numpy().astype(np.float64)
    if use_stats:
        x = np.concatenate([x, stats["matrix"][list(rows)].numpy().astype(np.float64)], axis=1)
    return x


def rows_by_machine(records: Sequence[dict]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record["machine_type"], []).append(i)
    return dict(sorted(groups.items()))


def fit_svdd(x: np.ndarray, hidden_neurons: Sequence[int] = HIDDEN_NEURONS, epochs: int = EPOCHS,
             batch_size: int = BATCH_SIZE, learning_rate: float = LEARNING_RATE, dropout: float = DROPOUT,
             weight_decay: float = WEIGHT_DECAY, seed: int = SEED,
             threads: int = THREADS) -> tuple[StandardScaler, DeepSVDD]:
    """A StandardScaler and a pyod DeepSVDD fitted on its standardised rows."""
    if len(x) < 2:
        raise ValueError(f"Deep SVDD needs at least 2 training rows, got {len(x)}")
    seed_everything(seed)   # pyod seeds torch only; its shuffle uses numpy's global generator
    scaler = StandardScaler().fit(x)
    svdd = DeepSVDD(n_features=x.shape[1], hidden_neurons=list(hidden_neurons), epochs=epochs,
                    batch_size=batch_size, learning_rate=learning_rate, dropout_rate=dropout,
                    l2_regularizer=weight_decay, preprocessing=False, verbose=0, random_state=seed)
    with torch_threads(threads):
        svdd.fit(scaler.transform(x))
    return scaler, svdd


@contextlib.contextmanager
def torch_threads(threads: int):
    """Temporarily run torch's CPU ops on ``threads`` threads (0 = leave as is)."""
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def svdd_scores(scaler: StandardScaler, svdd: DeepSVDD, x: np.ndarray) -> np.ndarray:
    """Squared distance to the hypersphere centre (higher = more anomalous)."""
    return np.asarray(svdd.decision_function(scaler.transform(x)), dtype=np.float64)


def save_bundle(bundle: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        joblib.dump(bundle, tmp)


def load_bundle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"Deep SVDD model {path} not found: run train_deepSVDD.py first")
    try:
        return joblib.load(path)
    except Exception as error:
        raise ValueError(f"cannot read Deep SVDD model {path}: {type(error).__name__}: {error}") from error


def main(argv: list[str] | None = None) -> dict[str, Path]:
    cfg = parse_config(globals(), argv, description=__doc__)
    print_config(cfg)
    embeddings, stats = load_split_features("train", cfg.data_dir, cfg.model_path, cfg.embed_dir, device=cfg.device)
    written = {}
    groups = rows_by_machine(embeddings["records"])
    for machine, rows in tqdm(groups.items(), desc="Deep SVDD per machine type", unit="type"):
        x = svdd_inputs(embeddings, stats, rows, cfg.use_stats)
        scaler, svdd = fit_svdd(x, cfg.hidden_neurons, cfg.epochs, cfg.batch_size, cfg.learning_rate,
                                cfg.dropout, cfg.weight_decay, cfg.seed, cfg.threads)
        train_scores = svdd_scores(scaler, svdd, x)
        bundle = {
            "machine_type": machine, "scaler": scaler, "model": svdd, "use_stats": cfg.use_stats,
            "n_features": x.shape[1], "n_train": len(rows),
            "embeddings_fingerprint": embeddings["fingerprint"],
            "stats_fingerprint": stats["fingerprint"] if cfg.use_stats else None,
            "settings": config_to_dict(cfg),
        }
        path = bundle_path(cfg.svdd_dir, machine)
        save_bundle(bundle, path)
        written[machine] = path
        tqdm.write(f"{machine}: {len(rows)} clips x {x.shape[1]} features, training distance "
                   f"mean {train_scores.mean():.4g} (max {train_scores.max():.4g}) -> {path}")
    return written


if __name__ == "__main__":
    main()
