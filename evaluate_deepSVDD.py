"""Scorer A, step 2: score the test clips with the per-machine-type Deep SVDD models.

    python evaluate_deepSVDD.py --results_dir results/deepsvdd

The anomaly score is the squared distance to the machine type's hypersphere centre; the decision
threshold of each section comes from its training normals' scores. Reads only the embedding files
of extract_embeddings.py and the models of train_deepSVDD.py. Writes the official CSVs, a summary
and plots.
"""

from __future__ import annotations

from pathlib import Path

from asd.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import torch

from asd.cli import parse_config, print_config
from asd.scoring import SVDD_FORMAT, DeepSVDDScorer, load_features, score_by_group, write_scorer_results
from train_deepSVDD import bundle_path

EMBED_DIR = "."  # folder of the normal_/test_ embeddings and stats
SVDD_DIR = "svdd_models_per_type"  # written by train_deepSVDD.py
RESULTS_DIR = "results/deepsvdd"  # official CSVs, summary, plots
DCASE_YEAR = "auto"  # metric rules: auto (from the names and folder) | 2020 | 2021 | 2022+
PLOTS = True  # ROC curves and score histograms (PNG)
REPORT = True  # report.html: the tables, plots and a t-SNE map of the embeddings
# allowed values of the constants above, checked by asd.cli.parse_config
_LIMITS = {"DCASE_YEAR": ("auto", "2020", "2021", "2022+")}


def load_scorer(path: Path, fingerprint: dict):
    """The saved Deep SVDD of one machine type, refused unless fitted on these normal embeddings."""
    if not path.is_file():
        raise FileNotFoundError(f"Deep SVDD model {path} not found: run train_deepSVDD.py first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"cannot read Deep SVDD model {path} ({type(error).__name__}: {error}); rerun train_deepSVDD.py"
        ) from error
    if not isinstance(state, dict) or state.get("format") != SVDD_FORMAT:
        raise ValueError(
            f"{path} is not a Deep SVDD model of this project ({SVDD_FORMAT}); rerun train_deepSVDD.py"
        )
    if state["embeddings_fingerprint"] != fingerprint:
        raise ValueError(
            f"{path} was fitted on other embeddings (another tuned model, data or settings); "
            "rerun train_deepSVDD.py"
        )
    return DeepSVDDScorer.from_state(state)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(globals(), argv, description=__doc__)
    print_config(cfg)
    features = load_features(cfg.embed_dir)
    scores, train_scores = score_by_group(
        features.normal,
        features.test,
        lambda key, normal: load_scorer(bundle_path(cfg.svdd_dir, key[0]), features.fingerprint),
        "machine_type",
    )
    return write_scorer_results(features, scores, train_scores, cfg, "deepsvdd", "Deep SVDD")


if __name__ == "__main__":
    main()
