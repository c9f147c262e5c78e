"""Deep SVDD (pyod), one per machine type: the scorer, its file format and where its files live.

Inputs are standardised on the machine type's training normals (with the signal statistics appended
when USE_STATS); score = squared distance to the hypersphere centre. A saved model holds tensors and
plain data only (read back with torch.load(weights_only=True)) and the fingerprint of the embeddings
it was fitted on, so a model fitted on other embeddings is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler

from asd.base.files import load_plain
from asd.embed.embedding_files import Split
from asd.score.scoring import out_of_fold_scores

SVDD_FORMAT = "eat-lora-asd/deepsvdd-v1"
MIN_FIT_ROWS = 2  # Deep SVDD is fitted on at least this many rows (so refits need one more)


class DeepSVDDScorer:
    """A StandardScaler and a pyod DeepSVDD on the embeddings (with the statistics appended when
    ``use_stats``); score = squared distance to the hypersphere centre."""

    def __init__(
        self,
        use_stats: bool = False,
        hidden_neurons: Sequence[int] = (256, 64),
        epochs: int = 50,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        dropout: float = 0.0,
        weight_decay: float = 1e-6,
        seed: int = 0,
        threads: int = 1,
    ):
        self.settings = {
            "use_stats": use_stats,
            "hidden_neurons": list(hidden_neurons),
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "dropout": dropout,
            "weight_decay": weight_decay,
            "seed": seed,
            "threads": threads,
        }

    def inputs(self, clips: Split) -> np.ndarray:
        x = clips.embeddings.astype(np.float64)
        return (
            np.concatenate([x, clips.stats.astype(np.float64)], axis=1) if self.settings["use_stats"] else x
        )

    def _detector(self, n_features: int):
        from pyod.models.deep_svdd import DeepSVDD

        s = self.settings
        return DeepSVDD(
            n_features=n_features,
            hidden_neurons=list(s["hidden_neurons"]),
            epochs=s["epochs"],
            batch_size=s["batch_size"],
            learning_rate=s["learning_rate"],
            dropout_rate=s["dropout"],
            l2_regularizer=s["weight_decay"],
            preprocessing=False,
            verbose=0,
            random_state=s["seed"],
        )

    def fit(self, normal: Split) -> DeepSVDDScorer:
        from asd.base.runtime import seed_everything

        x = self.inputs(normal)
        if len(x) < MIN_FIT_ROWS:
            raise ValueError(f"Deep SVDD needs at least {MIN_FIT_ROWS} training rows, got {len(x)}")
        seed_everything(self.settings["seed"])  # pyod seeds torch only; its shuffle uses numpy's generator
        scaler = StandardScaler().fit(x)
        self.mean, self.scale = scaler.mean_, scaler.scale_
        self.detector = self._detector(x.shape[1])
        previous = torch.get_num_threads()
        torch.set_num_threads(self.settings["threads"])  # a small network: more threads only add overhead
        try:
            self.detector.fit((x - self.mean) / self.scale)
        finally:
            torch.set_num_threads(previous)
        return self

    def score(self, clips: Split) -> np.ndarray:
        x = (self.inputs(clips) - self.mean) / self.scale
        return np.asarray(self.detector.decision_function(x), dtype=np.float64)

    def fit_out_of_fold(self, normal: Split, folds: int) -> DeepSVDDScorer:
        """Fit on all ``normal`` rows and keep their out-of-fold scores (``folds`` refits, each scoring
        the rows it was fitted without) for the decision threshold; ``folds`` 0 keeps none."""
        self.fit(normal)
        if folds and len(normal) <= MIN_FIT_ROWS:
            print(
                f"note: {len(normal)} training normals are too few for refits on held-out folds (each needs "
                f"{MIN_FIT_ROWS}): this group's decision threshold comes from in-sample distances"
            )
        elif folds:
            settings = dict(self.settings)
            held_out = out_of_fold_scores(lambda: DeepSVDDScorer(**settings), normal, folds, settings["seed"])
            self.held_out = {"paths": [r.path for r in normal.records], "scores": held_out}
        return self

    def training_scores(self, normal: Split) -> np.ndarray:
        """The out-of-fold scores kept by fit_out_of_fold for these very rows; else the in-sample ones."""
        held_out = getattr(self, "held_out", None)
        if held_out is not None and held_out["paths"] == [r.path for r in normal.records]:
            return np.asarray(held_out["scores"], dtype=np.float64)
        return self.score(normal)

    def state(self) -> dict:
        """Tensors and plain data only: loadable with torch.load(weights_only=True)."""
        return {
            "format": SVDD_FORMAT,
            "settings": self.settings,
            "n_features": len(self.mean),
            "mean": torch.from_numpy(self.mean),
            "scale": torch.from_numpy(self.scale),
            "network": self.detector.model_.state_dict(),
            "centre": self.detector.c_.detach().clone(),
            **(
                {
                    "held_out_paths": list(self.held_out["paths"]),
                    "held_out_scores": torch.as_tensor(self.held_out["scores"], dtype=torch.float64),
                }
                if getattr(self, "held_out", None) is not None
                else {}
            ),
        }

    @classmethod
    def from_state(cls, state: dict) -> DeepSVDDScorer:
        from pyod.models.deep_svdd import InnerDeepSVDD

        scorer = cls(**state["settings"])
        scorer.mean, scorer.scale = state["mean"].numpy(), state["scale"].numpy()
        detector = scorer._detector(state["n_features"])
        detector.model_ = InnerDeepSVDD(
            state["n_features"],
            use_ae=False,
            hidden_neurons=detector.hidden_neurons,
            hidden_activation=detector.hidden_activation,
            output_activation=detector.output_activation,
            dropout_rate=detector.dropout_rate,
            l2_regularizer=detector.l2_regularizer,
        )
        detector.model_.load_state_dict(state["network"])
        detector.c_ = state["centre"]
        scorer.detector = detector
        if "held_out_scores" in state:
            scorer.held_out = {
                "paths": list(state["held_out_paths"]),
                "scores": state["held_out_scores"].numpy(),
            }
        return scorer


def bundle_path(svdd_dir: str | os.PathLike, machine_type: str) -> Path:
    """The model file of one machine type."""
    return Path(svdd_dir) / f"deepsvdd_{machine_type}.pt"


def load_scorer(path: Path, fingerprint: dict) -> DeepSVDDScorer:
    """The saved Deep SVDD of one machine type, refused unless fitted on these normal embeddings."""
    if not path.is_file():
        raise FileNotFoundError(f"Deep SVDD model {path} not found: run train_deepSVDD.py first")
    try:
        state = load_plain(path, "Deep SVDD model")
    except ValueError as error:
        raise ValueError(f"{error}; rerun train_deepSVDD.py") from error
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


def svdd_factory(svdd_dir: str | os.PathLike, fingerprint: dict):
    """A scoring.score_by_group factory: each machine type's saved Deep SVDD."""
    return lambda key, normal: load_scorer(bundle_path(svdd_dir, key[0]), fingerprint)
