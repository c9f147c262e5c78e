"""Scorer A, step 2: score the test clips with the per-machine-type Deep SVDD models.

    python evaluate_deepSVDD.py --results_dir results/deepsvdd

The anomaly score is the squared distance to the machine type's hypersphere centre. Test
embeddings come from the shared cache (rebuilt when stale); the decision threshold of each
section comes from its training normals' scores. Writes the official CSVs, a summary and plots.
"""
from __future__ import annotations

from utils import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import numpy as np

import metrics
from extract_embeddings import load_split_features
from train_deepSVDD import bundle_path, load_bundle, rows_by_machine, svdd_inputs, svdd_scores
from utils import config_to_dict, parse_config, print_config

DATA_DIR = "dev_data"                  # DCASE folder: <machine>/{train,test}/*.wav
MODEL_PATH = "best_encoder_model.pth"  # tuned encoder (to check or rebuild the embeddings)
EMBED_DIR = "."                        # folder of the normal_/test_ embeddings and stats
SVDD_DIR = "svdd_models_per_type"      # written by train_deepSVDD.py
RESULTS_DIR = "results/deepsvdd"       # official CSVs, summary, plots
DEVICE = "auto"                        # for embedding clips when a cache must be rebuilt
BATCH_SIZE = 16                        # idem
REBUILD = False                        # force re-embedding of the test clips
PLOTS = True                           # ROC curves and score histograms (PNG)
# allowed values of the constants above, checked by utils.parse_config
_LIMITS = {"BATCH_SIZE": (1, None)}


def check_bundle(bundle: dict, embeddings: dict, stats: dict, path) -> None:
    """The model must have been fitted on exactly these normal embeddings (and statistics)."""
    if bundle["embeddings_fingerprint"] != embeddings["fingerprint"] or (
            bundle["use_stats"] and bundle["stats_fingerprint"] != stats["fingerprint"]):
        raise ValueError(f"{path} was fitted on other embeddings (another checkpoint, data or settings); "
                         "rerun train_deepSVDD.py")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(globals(), argv, description=__doc__)
    print_config(cfg)
    from dataset import ClipRecord

    normal_emb, normal_stats = load_split_features("train", cfg.data_dir, cfg.model_path, cfg.embed_dir,
                                                   device=cfg.device, batch_size=cfg.batch_size)
    test_emb, test_stats = load_split_features("test", cfg.data_dir, cfg.model_path, cfg.embed_dir,
                                               device=cfg.device, batch_size=cfg.batch_size, rebuild=cfg.rebuild)
    train_rows, test_rows = rows_by_machine(normal_emb["records"]), rows_by_machine(test_emb["records"])
    test_records = [ClipRecord.from_dict(d) for d in test_emb["records"]]
    scores: dict[str, float] = {}
    train_scores: dict[tuple[str, str], list[float]] = {}
    for machine, rows in test_rows.items():
        path = bundle_path(cfg.svdd_dir, machine)
        bundle = load_bundle(path)
        check_bundle(bundle, normal_emb, normal_stats, path)
        x_test = svdd_inputs(test_emb, test_stats, rows, bundle["use_stats"])
        scores.update(zip((test_records[i].path for i in rows),
                          svdd_scores(bundle["scaler"], bundle["model"], x_test).tolist()))
        normal_rows = train_rows.get(machine, [])
        x_train = svdd_inputs(normal_emb, normal_stats, normal_rows, bundle["use_stats"])
        for i, s in zip(normal_rows, svdd_scores(bundle["scaler"], bundle["model"], x_train)):
            train_scores.setdefault((machine, normal_emb["records"][i]["section"]), []).append(float(s))
    train_scores = {key: np.asarray(v) for key, v in train_scores.items()}
    return metrics.write_results(scores, test_records, train_scores, cfg.results_dir, scorer="deepsvdd",
                                 settings=config_to_dict(cfg), plots=cfg.plots, title="Deep SVDD")


if __name__ == "__main__":
    main()
