"""Scorer A, step 2: score the test clips with the per-machine-type Deep SVDD models.

    python evaluate_deepSVDD.py --results_dir results/deepsvdd

The anomaly score is the squared distance to the machine type's hypersphere centre; the decision
threshold of each section comes from its training normals' scores. Reads only the embedding files
of extract_embeddings.py and the models of train_deepSVDD.py. Writes the official CSVs, a summary
and plots.
"""

from __future__ import annotations

import sys

from asd.base.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

from asd.base.cli import parse_config, print_config
from asd.base.errors import run_script
from asd.base.locks import hold_run_folder_lock
from asd.data.ground_truth import apply_ground_truth
from asd.embed.embedding_files import load_features
from asd.report.results import write_scorer_results
from asd.score import calibration
from asd.score.scoring import score_by_group
from asd.score.svdd import svdd_factory

# folder of the normal_/test_ embeddings and stats
EMBED_DIR = "."
# written by train_deepSVDD.py
SVDD_DIR = "svdd_models_per_type"
# official CSVs, summary, plots
RESULTS_DIR = "results/deepsvdd"
# metric rules: auto (from the names and folder) | 2020 | 2021 | 2022+
DCASE_YEAR = "auto"
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
# allowed values of the constants above, checked by asd.base.cli.parse_config
_LIMITS = {
    "DCASE_YEAR": ("auto", "2020", "2021", "2022+"),
    "GAMMA_LOCATION": ("zero", "free"),
    "CALIBRATION": calibration.CALIBRATIONS,
    "CALIBRATION_K": (1, None),
}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(globals(), argv, description=__doc__)
    print_config(cfg)
    hold_run_folder_lock([cfg.results_dir], "evaluate_deepSVDD.py")
    features = load_features(cfg.embed_dir)
    if cfg.ground_truth:  # a clip or row without its partner stops here, before any scoring
        apply_ground_truth(features.test.records, cfg.ground_truth)
    scores, train_scores = score_by_group(
        features.normal,
        features.test,
        svdd_factory(cfg.svdd_dir, features.fingerprint),
        "machine_type",
        cfg.calibration,
        cfg.calibration_k,
    )
    return write_scorer_results(features, scores, train_scores, cfg, "deepsvdd", "Deep SVDD")


if __name__ == "__main__":
    sys.exit(run_script(main))
