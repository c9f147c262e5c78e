"""Scorer B: a nearest-reference distance on embeddings + Mahalanobis distance on signal statistics.

For each machine type and section (asd/backends.py, KnnMahalanobis):
  embedding branch  the mean distance to the K nearest references, with separate source and target
                    memory banks (the smaller distance is taken: target has few clips); BACKEND:
                      knn      references = the training normals, cosine distance;
                      kmeans   references = KMEANS_CLUSTERS spherical k-means centres per bank;
                      density  references = the training normals, cosine distance divided by the
                               reference's mean distance to its DENSITY_NEIGHBOURS nearest references;
                    SMOTE_RATIO > 0 enlarges the target bank with SMOTE rows (target/source = ratio);
  stats branch      Mahalanobis distance of the statistics vector under a shrinkage (Ledoit-Wolf)
                    covariance of the training normals' statistics; MAHALANOBIS per_domain fits
                    source and target apart and takes the smaller distance (the DCASE baseline's
                    selective Mahalanobis; a domain with fewer than MIN_DOMAIN_STATS normals uses
                    the pooled fit), pooled fits all normals at once;
each branch is standardised by its own distribution on the training normals (the embedding branch
leave-one-out, so a clip is never its own reference), then  score = W * embedding + (1 - W) *
mahalanobis. The decision thresholds (asd/thresholds.py) come from the training normals' scores out of
sample: leave-one-out for the embedding branch, over STATS_FOLDS refits for the statistics branch.
Reads only the embedding files of extract_embeddings.py.

ASDKIT_BACKENDS adds ASDKit's own back ends (asd/asdkit_backends.py: plain k-NN, k-NN + SMOTE, k-means
16, KnnRescale; per machine type on L2-normalised embeddings): each writes its official CSVs, summary
and plots into BACKENDS_DIR/<name>/, and their tables are printed side by side and written to
BACKENDS_DIR/comparison.csv (the recipe asdkit-eat-lora runs all four).

    python evaluate.py -k 3 --w 0.7
    python evaluate.py --backend kmeans --smote_ratio 0.2
    python evaluate.py --asdkit_backends knn,smote_knn,kmeans,rescale
    python evaluate.py --score_results_dir my_submission --ground_truth dcase_ground_truth
    python evaluate.py --sweep            # score over a grid of K and W (analysis only)
"""

from __future__ import annotations

from pathlib import Path

from asd.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

from asd import recipes
from asd.asdkit_backends import asdkit_factory
from asd.backends import ensemble_factory
from asd.cli import config_to_dict, parse_config, print_config
from asd.comparison import comparison_rows, format_comparison, write_comparison
from asd.embedding_files import load_features
from asd.evaluation import compute_official
from asd.ground_truth import apply_ground_truth
from asd.results import score_results_folder, write_scorer_results
from asd.scoring import score_by_group

# named settings (asd/recipes.py), e.g. asdkit-eat-lora (k-NN alone, SMOTE 0.2); explicit flags win
RECIPE = ""
# folder of normal_/test_ embeddings and stats (.pt)
EMBED_DIR = "."
# official CSVs, summary, plots
RESULTS_DIR = "results/ensemble"
# nearest references averaged in the embedding branch (1 = nearest, the usual DCASE choice)
K = 1
# weight of the embedding branch; 1 - W goes to Mahalanobis
W = 0.5
# source and target memory banks, smaller distance taken
SEPARATE_DOMAIN_BANKS = True
# embedding branch: knn | kmeans (cosine k-means centres) | density (k-NN / local density)
BACKEND = "knn"
# kmeans: spherical k-means centres per bank (at most the bank's rows)
KMEANS_CLUSTERS = 16
# density: a reference's density = its mean cosine distance to this many nearest references
DENSITY_NEIGHBOURS = 4
# SMOTE rows join the target bank until target/source = this (0 = off; ASDKit: 0.2)
SMOTE_RATIO = 0.0
# SMOTE: a new row lies between a target normal and one of its this many nearest
SMOTE_NEIGHBOURS = 2
# seed of SMOTE, of the k-means seeding and of the STATS_FOLDS split
SEED = 0
# statistics: per_domain (source, target apart; smaller distance) | pooled
MAHALANOBIS = "per_domain"
# per_domain: a domain with fewer training normals is replaced by the pooled fit
MIN_DOMAIN_STATS = 5
# refits scoring the statistics of the thresholds' training normals (0 = in-sample)
STATS_FOLDS = 10
# metric rules: auto (from the names and folder) | 2020 | 2021 | 2022+
DCASE_YEAR = "auto"
# print the score over SWEEP_KS x SWEEP_WS, then stop
SWEEP = False
# k values of the sweep
SWEEP_KS = [1, 2, 3, 5, 10]
# w values of the sweep (0 = Mahalanobis only, 1 = k-NN only)
SWEEP_WS = [0.0, 0.25, 0.5, 0.75, 1.0]
# also score with ASDKit's back ends (knn, smote_knn, kmeans, rescale), one results folder each
ASDKIT_BACKENDS = []
# folder of the ASDKIT_BACKENDS results; "" = "backends" beside RESULTS_DIR
BACKENDS_DIR = ""
# measure this existing results folder (its CSVs) instead of scoring embeddings
SCORE_RESULTS_DIR = ""
# where SCORE_RESULTS_DIR's tables go; "" = "<SCORE_RESULTS_DIR>_scored" beside it
SCORED_DIR = ""
# the evaluator's ground-truth folder: labels and domains of unlabelled test clips
GROUND_TRUTH = ""
# decision threshold's gamma fit: zero (location fixed at 0) | free (the earlier fit)
GAMMA_LOCATION = "zero"
# ROC curves and score histograms (PNG)
PLOTS = True
# report.html: the tables, plots and a t-SNE map of the embeddings
REPORT = True
# allowed values of the constants above, checked by asd.cli.parse_config
_LIMITS = {
    "RECIPE": ("", *recipes.RECIPES),
    "K": (1, None),
    "W": (0.0, 1.0),
    "BACKEND": ("knn", "kmeans", "density"),
    "KMEANS_CLUSTERS": (1, None),
    "DENSITY_NEIGHBOURS": (1, None),
    "SMOTE_RATIO": (0.0, 1.0),
    "SMOTE_NEIGHBOURS": (1, None),
    "SEED": (0, None),
    "MAHALANOBIS": ("per_domain", "pooled"),
    "MIN_DOMAIN_STATS": (2, None),
    "STATS_FOLDS": (0, None),
    "DCASE_YEAR": ("auto", "2020", "2021", "2022+"),
    "SWEEP_KS": (1, None),
    "SWEEP_WS": (0.0, 1.0),
    "ASDKIT_BACKENDS": ("knn", "smote_knn", "kmeans", "rescale"),
    "GAMMA_LOCATION": ("zero", "free"),
}


def ensemble_scores(features, settings: dict):
    """Test scores {path: score} and the training normals' scores per section for one setting."""
    return score_by_group(features.normal, features.test, ensemble_factory(settings), "section")


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


def asdkit_backend_results(features, cfg) -> dict[str, dict]:
    """Score with each of ASDKIT_BACKENDS (per machine type, as ASDKit groups), write each one's results
    folder in BACKENDS_DIR and the side-by-side table (printed and BACKENDS_DIR/comparison.csv)."""
    folder = Path(cfg.backends_dir) if cfg.backends_dir else Path(cfg.results_dir).parent / "backends"
    summaries = {}
    for name in cfg.asdkit_backends:
        scores, train_scores = score_by_group(
            features.normal, features.test, asdkit_factory(name), "machine_type"
        )
        settings = {**config_to_dict(cfg), "asdkit_backend": name}
        summaries[name] = write_scorer_results(
            features,
            scores,
            train_scores,
            cfg,
            f"asdkit-{name}",
            f"ASDKit back end: {name}",
            folder / name,
            settings,
        )
    rows = comparison_rows(summaries)
    print(format_comparison(rows, "ASDKit back ends side by side"))
    write_comparison(rows, folder / "comparison.csv")
    return summaries


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(globals(), argv, description=__doc__, aliases={"-k": "K", "--w": "W"})
    print_config(cfg)
    if cfg.score_results_dir:
        source = Path(cfg.score_results_dir)
        out = Path(cfg.scored_dir) if cfg.scored_dir else source.with_name(source.name + "_scored")
        return score_results_folder(source, out, cfg.ground_truth, cfg.dcase_year, cfg.plots, cfg.report)
    ensemble_factory(vars(cfg))  # checks the settings before the files are read
    if cfg.w in (0.0, 1.0) and not cfg.sweep:
        print(f"note: W={cfg.w} uses only the {cfg.backend if cfg.w == 1.0 else 'Mahalanobis'} branch")
    features = load_features(cfg.embed_dir)
    if cfg.ground_truth:  # a clip or row without its partner stops here, before any scoring
        apply_ground_truth(features.test.records, cfg.ground_truth)
    if cfg.sweep:
        return {"sweep": sweep(features, cfg), "ks": cfg.sweep_ks, "ws": cfg.sweep_ws}
    scores, train_scores = ensemble_scores(features, vars(cfg))
    title = f"ensemble: {cfg.backend} (K={cfg.k}) x {cfg.w} + Mahalanobis x {1 - cfg.w:g}"
    summary = write_scorer_results(features, scores, train_scores, cfg, "ensemble", title)
    if cfg.asdkit_backends:
        summary["asdkit_backends"] = asdkit_backend_results(features, cfg)
    return summary


if __name__ == "__main__":
    main()
