"""Score the embedding files with the back ends BACKENDS names (asd/backends/registry.py), each into its
own results folder, side by side.

  ensemble   per machine type and section: W * z(EMBEDDING_BACKEND's distance) + (1 - W) * z(Mahalanobis
             distance of the signal statistics), each branch standardised by its training normals;
  knn        mean METRIC distance to the K nearest normals, a source and a target memory bank
             (SEPARATE_DOMAIN_BANKS; the smaller distance taken); BANK_NORMALISE loo divides each bank's
             distance by the bank's typical leave-one-out neighbour distance (domain-calibrated);
  smote_knn  knn with the target bank grown by imbalanced-learn's SMOTE (SMOTE_RATIO, SMOTE_NEIGHBOURS);
  kmeans     cosine distance to KMEANS_CLUSTERS scikit-learn k-means centres of the source normals and to
             every target normal;
  rescale    min over all normals of the distance to it / its mean distance to RESCALE_NEIGHBOURS others;
  mahalanobis  Mahalanobis distance of the statistics (MAHALANOBIS per_domain: source and target fits,
             the smaller distance; pooled: one fit).
ASDKit's four back ends are knn, smote_knn, kmeans and rescale with METRIC euclidean, GROUP_BY
machine_type and BANK_NORMALISE off (the recipe asdkit-eat-lora). The decision thresholds
(asd/score/thresholds.py) come from the training normals' scores out of sample. The ensemble writes
RESULTS_DIR, every other back end BACKENDS_DIR/<name>; with several back ends their tables are printed
side by side in BACKENDS order and written to BACKENDS_DIR/comparison.csv. Reads only the embedding
files of extract_embeddings.py.

    python evaluate.py -k 3 --w 0.7
    python evaluate.py --embedding_backend smote_knn --smote_ratio 0.2
    python evaluate.py --backends ensemble,knn,smote_knn,kmeans,rescale
    python evaluate.py --score_results_dir my_submission --ground_truth dcase_ground_truth
    python evaluate.py --sweep            # the ensemble's score over a grid of K and W (analysis only)
"""

from __future__ import annotations

import sys
from pathlib import Path

from asd.base.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

from asd.backends import baseline_ae, registry
from asd.backends.registry import backend_factory, make_backend
from asd.base import recipes
from asd.base.cli import config_to_dict, parse_config, print_config
from asd.base.errors import run_script
from asd.base.locks import hold_run_folder_lock
from asd.data.ground_truth import apply_ground_truth
from asd.embed.embedding_files import embedding_channels, load_features
from asd.report.comparison import (
    backend_folders,
    backends_folder,
    comparison_rows,
    format_comparison,
    write_comparison,
)
from asd.report.evaluation import compute_official
from asd.report.results import score_results_folder, write_scorer_results
from asd.score import calibration
from asd.score.scoring import score_by_group

# named settings (asd/base/recipes.py), e.g. asdkit-eat-lora (ASDKit's back ends); explicit flags win
RECIPE = ""
# folder of normal_/test_ embeddings and stats (.pt)
EMBED_DIR = "."
# back ends to run, in this order (asd/backends/registry.py); the first's results are the headline
BACKENDS = ["ensemble"]
# the ensemble's official CSVs, summary, plots
RESULTS_DIR = "results/ensemble"
# folder of the other back ends' results; "" = "backends" beside RESULTS_DIR
BACKENDS_DIR = ""
# the ensemble's embedding branch: knn | smote_knn | kmeans | rescale
EMBEDDING_BACKEND = "knn"
# nearest normals averaged by knn (1 = nearest, the usual DCASE choice)
K = 1
# weight of the ensemble's embedding branch; 1 - W goes to Mahalanobis
W = 0.5
# knn, rescale: cosine (1 - cos) | euclidean (half the Euclidean distance, ASDKit's)
METRIC = "cosine"
# knn, rescale: L2-normalise the embeddings first (ASDKit: True)
L2_NORMALISE = True
# back ends other than the ensemble: one fit per section | machine_type (ASDKit)
GROUP_BY = "section"
# knn: source and target memory banks, smaller distance taken
SEPARATE_DOMAIN_BANKS = True
# knn: loo = each bank's distance / its typical leave-one-out neighbour distance (domain-calibrated:
# one threshold per section fits both domains) | off (the raw distance)
BANK_NORMALISE = "loo"
# smote_knn: SMOTE rows join the target bank until target/source = this (ASDKit: 0.2)
SMOTE_RATIO = 0.2
# smote_knn: a new row lies between a target normal and one of its this many nearest
SMOTE_NEIGHBOURS = 2
# kmeans: scikit-learn k-means centres of the source normals
KMEANS_CLUSTERS = 16
# kmeans: k-means runs from different seedings (ASDKit's scikit-learn default "auto" = 1)
KMEANS_N_INIT = 1
# rescale: a normal's density = its mean distance to this many nearest other normals
RESCALE_NEIGHBOURS = 4
# smote_knn, kmeans, rescale: refits scoring the thresholds' training normals out of fold
FOLDS = 5
# baseline_ae (the DCASE baseline autoencoder, on the clips' audio): MSE | MAHALA
BASELINE_SCORE = baseline_ae.SCORE
# baseline_ae: training epochs (the baseline's 100)
BASELINE_EPOCHS = baseline_ae.EPOCHS
# baseline_ae: feature vectors per batch
BASELINE_BATCH_SIZE = baseline_ae.BATCH_SIZE
# baseline_ae: Adam's learning rate
BASELINE_LR = baseline_ae.LEARNING_RATE
# baseline_ae: seed of its initialisation, batches and held-out clips
BASELINE_SEED = baseline_ae.SEED
# baseline_ae: CPU threads while it trains (0 = one per core)
BASELINE_THREADS = baseline_ae.THREADS
# baseline_ae: auto | cpu | cuda
DEVICE = "auto"
# seed of SMOTE, of k-means and of the fold splits
SEED = 0
# statistics: per_domain (source, target apart; smaller distance) | pooled
MAHALANOBIS = "per_domain"
# per_domain: a domain with fewer training normals is replaced by the pooled fit
MIN_DOMAIN_STATS = 5
# refits scoring the statistics of the thresholds' training normals (0 = in-sample)
STATS_FOLDS = 10
# metric rules: auto (from the names and folder) | 2020 | 2021 | 2022+
DCASE_YEAR = "auto"
# print the ensemble's score over SWEEP_KS x SWEEP_WS, then stop
SWEEP = False
# k values of the sweep
SWEEP_KS = [1, 2, 3, 5, 10]
# w values of the sweep (0 = Mahalanobis only, 1 = embedding branch only)
SWEEP_WS = [0.0, 0.25, 0.5, 0.75, 1.0]
# measure this existing results folder (its CSVs) instead of scoring embeddings
SCORE_RESULTS_DIR = ""
# where SCORE_RESULTS_DIR's tables go; "" = "<SCORE_RESULTS_DIR>_scored" beside it
SCORED_DIR = ""
# labels and domains of unlabelled test clips: the evaluator's ground-truth folder, an eval_data_list_YYYY.csv
# (also attributes), or both comma-separated
GROUND_TRUTH = ""
# decision threshold's gamma fit: zero (location fixed at 0) | free (the earlier fit)
GAMMA_LOCATION = "zero"
# scores relative to their nearest training normals' (one threshold for both domains): neighbours | off
CALIBRATION = "neighbours"
# training normals of the same section each score is compared with (CALIBRATION neighbours)
CALIBRATION_K = 5
# ROC curves and score histograms (PNG)
PLOTS = True
# report.html: the tables, plots and a t-SNE map of the embeddings
REPORT = True
# allowed values of the constants above, checked by asd.base.cli.parse_config; BACKENDS and EMBEDDING_BACKEND
# are the registry's names (asd/backends/registry.py; tests/test_registry.py keeps them equal)
_LIMITS = {
    "RECIPE": ("", *recipes.RECIPES),
    "BACKENDS": (*registry.REGISTRY,),
    "EMBEDDING_BACKEND": ("knn", "smote_knn", "kmeans", "rescale"),
    "K": (1, None),
    "W": (0.0, 1.0),
    "METRIC": ("cosine", "euclidean"),
    "GROUP_BY": ("section", "machine_type"),
    "BANK_NORMALISE": ("off", "loo"),
    "SMOTE_RATIO": (0.0, 1.0),
    "SMOTE_NEIGHBOURS": (1, None),
    "KMEANS_CLUSTERS": (1, None),
    "KMEANS_N_INIT": (1, None),
    "RESCALE_NEIGHBOURS": (1, None),
    "FOLDS": (2, None),
    "BASELINE_SCORE": baseline_ae.SCORES,
    "BASELINE_EPOCHS": (1, None),
    "BASELINE_BATCH_SIZE": (1, None),
    "BASELINE_LR": (">0", None),
    "BASELINE_SEED": (0, None),
    "BASELINE_THREADS": (0, None),
    "DEVICE": ("auto", "cpu", "cuda"),
    "SEED": (0, None),
    "MAHALANOBIS": ("per_domain", "pooled"),
    "MIN_DOMAIN_STATS": (2, None),
    "STATS_FOLDS": (0, None),
    "DCASE_YEAR": ("auto", "2020", "2021", "2022+"),
    "SWEEP_KS": (1, None),
    "SWEEP_WS": (0.0, 1.0),
    "GAMMA_LOCATION": ("zero", "free"),
    "CALIBRATION": calibration.CALIBRATIONS,
    "CALIBRATION_K": (1, None),
}


def ensemble_scores(features, settings: dict):
    """Test scores {path: score} and the training normals' scores per section for one setting."""
    factory, grouping = backend_factory("ensemble", settings)
    return score_by_group(
        features.normal, features.test, factory, grouping, settings["calibration"], settings["calibration_k"]
    )


def sweep(features, cfg) -> list[list[float]]:
    """Score for every (k, w); prints the grid. Choosing K and W on the test set overfits it:
    use this to understand the data, then fix K and W on development data."""
    records = features.test.records
    if cfg.ground_truth:
        records = apply_ground_truth(records, cfg.ground_truth)
    grid = []
    for k in cfg.sweep_ks:
        grid.append([])
        for w in cfg.sweep_ws:
            scores, _ = ensemble_scores(features, {**vars(cfg), "k": k, "w": w})
            evaluation = compute_official(
                scores,
                records,
                year=cfg.dcase_year,
                data_dir=features.data_dir,
            )
            grid[-1].append(evaluation.score)
    print(
        f"{evaluation.score_label()} over K (rows) and W (columns); analysis only: "
        "picking K and W from this grid tunes them on the test set"
    )
    print("K \\ W " + "".join(f"{w:>8.2f}" for w in cfg.sweep_ws))
    for k, row in zip(cfg.sweep_ks, grid):
        print(f"{k:<6d}" + "".join(f"{v:>8.4f}" for v in row))
    return grid


def backend_results(features, cfg) -> dict[str, dict]:
    """Score with each of BACKENDS, in its order; write each one's results folder and, with several, the
    side-by-side table (printed and BACKENDS_DIR/comparison.csv)."""
    # back ends that read the audio hear it as the encoder did (the embedding files' channel mode)
    settings = {**config_to_dict(cfg), **embedding_channels(features.fingerprint)}
    folders = backend_folders(cfg.backends, cfg.results_dir, cfg.backends_dir)
    summaries = {}
    for name in cfg.backends:
        factory, grouping = backend_factory(name, settings)
        scores, train_scores = score_by_group(
            features.normal, features.test, factory, grouping, cfg.calibration, cfg.calibration_k
        )
        title = f"{name}: {make_backend(name, settings).describe()}"
        summaries[name] = write_scorer_results(
            features, scores, train_scores, cfg, name, title, folders[name], {**settings, "backend": name}
        )
    if len(summaries) > 1:
        rows = comparison_rows(summaries)
        print(format_comparison(rows, "back ends side by side"))
        write_comparison(rows, backends_folder(cfg.results_dir, cfg.backends_dir) / "comparison.csv")
    return summaries


def main(argv: list[str] | None = None) -> dict:
    """The first back end's summary, with every back end's under "backends" (the sweep's grid with --sweep)."""
    cfg = parse_config(globals(), argv, description=__doc__, aliases={"-k": "K", "--w": "W"})
    print_config(cfg)
    hold_run_folder_lock(
        [cfg.results_dir, cfg.backends_dir, cfg.scored_dir or cfg.score_results_dir], "evaluate.py"
    )
    if cfg.score_results_dir:
        source = Path(cfg.score_results_dir)
        out = Path(cfg.scored_dir) if cfg.scored_dir else source.with_name(source.name + "_scored")
        return score_results_folder(source, out, cfg.ground_truth, cfg.dcase_year, cfg.plots, cfg.report)
    for name in cfg.backends + (["ensemble"] if cfg.sweep else []):
        backend_factory(name, vars(cfg))  # checks the settings before the files are read
    if "ensemble" in cfg.backends and cfg.w in (0.0, 1.0) and not cfg.sweep:
        print(
            f"note: W={cfg.w} uses only the ensemble's {cfg.embedding_backend if cfg.w == 1.0 else 'Mahalanobis'} branch"
        )
    features = load_features(cfg.embed_dir)
    if cfg.ground_truth:  # a clip or row without its partner stops here, before any scoring
        apply_ground_truth(features.test.records, cfg.ground_truth)
    if cfg.sweep:
        return {"sweep": sweep(features, cfg), "ks": cfg.sweep_ks, "ws": cfg.sweep_ws}
    summaries = backend_results(features, cfg)
    return {**summaries[cfg.backends[0]], "backends": summaries}


if __name__ == "__main__":
    sys.exit(run_script(main))
