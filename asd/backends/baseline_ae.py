"""The official DCASE Task 2 baseline autoencoder (nttcslab/dcase2023_task2_baseline_ae, 2023-2026) as a scorer.

Written from the baseline's published description (tests/fixtures/baseline_fixture/README.md states each
formula with its file and line); the fixture's outputs of the baseline's own code are the tests' truth.

- Features (``file_to_vectors``): librosa's mel power spectrogram (128 mels, n_fft 1024, hop 512) at the
  clip's own sample rate, ``10 log10(max(mel, eps))``, 5 consecutive frames concatenated into 640-dim
  vectors. The clip is read with soundfile through preprocessing.load_audio in the project's channel mode
  (near = channel 0 = the baseline's 2026 reading).
- Network (``AENet``, in asd/backends/baseline_network.py with its training loop):
  640-128-128-128-128-8-128-128-128-128-640, batch norm and ReLU after each hidden layer (the 8-dim code
  too); ``cov_source``/``cov_target`` buffers.
- Training, one model per machine type: Adam (lr 1e-3, torch's fused implementation), batch 256 shuffled,
  MSE, 100 epochs, seed 13711; 10 % of the training data held out for validation. Then the covariance pass over the training vectors
  (residual blocks of 128, centred per batch, summed, divided by the domain's vector count - 1; target =
  source without target vectors) and the inverses.
- Scores per clip: ``MSE`` (mean squared residual) or ``MAHALA`` (min over the domains of
  ``dbar^T inv(cov) dbar``, dbar the clip's mean residual block).

Deviation, for the decision thresholds: the baseline holds out 10 % of the *vectors*; here 10 % of the
*clips* (all their vectors; stratified by section and domain where possible), so those clips' scores are
out of sample. ``training_scores`` returns them and NaN for the clips trained on (threshold_info drops
non-finite scores); a section with a single clip keeps that clip, scored in sample.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asd.backends.base import Backend, pick
from asd.backends.baseline_network import AENet, clip_scores, covariance_pass, train_network
from asd.base.files import atomic_torch_save
from asd.base.runtime import resolve_device, seed_everything
from asd.data.names import ClipRecord
from asd.data.preprocessing import RESIDUAL_WEIGHT, channel_views, load_audio
from asd.embed.embedding_files import Split

BASELINE_FORMAT = "eat-lora-asd/baseline-ae-v1"
N_MELS = 128  # mel bands = the Mahalanobis block size
N_FRAMES = 5  # frames concatenated into one vector
N_FFT = 1024
HOP_LENGTH = 512
POWER = 2.0
INPUT_DIM = N_MELS * N_FRAMES
SCORES = ("MSE", "MAHALA")
VALIDATION_SHARE = 0.1  # share of each machine type's training clips held out (the baseline's 10 %)
# the baseline's recipe (baseline.yaml); evaluate.py's BASELINE_* constants take these over
# score of a clip: MSE (the baseline's default) | MAHALA
SCORE = "MSE"
# training epochs
EPOCHS = 100
# vectors per training batch
BATCH_SIZE = 256
# Adam's learning rate
LEARNING_RATE = 1e-3
# seed of the initialisation, the batches and the held-out clips
SEED = 13711
# CPU threads of torch while fitting (0 = torch's default, one per core)
THREADS = 0


def check_one_view(channels: str) -> None:
    """ValueError for an unknown channel mode or one of two views ('both'): the baseline hears one channel."""
    if len(channel_views(channels)) != 1:
        raise ValueError(
            f"the baseline autoencoder hears one channel; CHANNELS={channels!r} gives two views "
            "(use near, far, mix or residual)"
        )


def read_clip(path: str | os.PathLike, channels: str = "near", residual_weight: float = RESIDUAL_WEIGHT):
    """(samples float32, sample rate) of one channel view at the clip's own rate (the baseline's sr=None)."""
    import soundfile as sf

    check_one_view(channels)
    try:
        rate = sf.info(str(path)).samplerate
    except Exception:  # load_audio names what is wrong with the file
        rate = 16000
    wav = load_audio(path, rate, channels, residual_weight)
    return wav.numpy(), rate


def log_mel_vectors(y: np.ndarray, rate: int) -> np.ndarray:
    """[n_vectors, 640] float32: the baseline's log-mel frames, 5 at a time (none for a too-short clip)."""
    import librosa

    mel = librosa.feature.melspectrogram(
        y=y, sr=rate, n_fft=N_FFT, hop_length=HOP_LENGTH, n_mels=N_MELS, power=POWER, fmin=0.0, fmax=None
    )
    log_mel = 20.0 / POWER * np.log10(np.maximum(mel, sys.float_info.epsilon))
    n_vectors = log_mel.shape[1] - N_FRAMES + 1
    vectors = np.zeros((max(n_vectors, 0), INPUT_DIM), dtype=np.float32)
    for t in range(N_FRAMES if n_vectors > 0 else 0):
        vectors[:, N_MELS * t : N_MELS * (t + 1)] = log_mel[:, t : t + n_vectors].T
    return vectors


def file_to_vectors(
    path: str | os.PathLike, channels: str = "near", residual_weight: float = RESIDUAL_WEIGHT
) -> np.ndarray:
    """The baseline's feature vectors of one clip, read in channel mode ``channels``."""
    vectors = log_mel_vectors(*read_clip(path, channels, residual_weight))
    if len(vectors) == 0:
        raise ValueError(
            f"{path}: too short for one baseline feature vector ({N_FRAMES} frames of {HOP_LENGTH})"
        )
    return vectors


def target_flags(records: Sequence[ClipRecord], per_clip: Sequence[np.ndarray]) -> torch.Tensor:
    """Per vector: does it come from a target-domain clip (the parsed domain; the baseline tests for
    "target" in the clip name, which is the same for DCASE names)."""
    return torch.tensor([r.domain == "target" for r, v in zip(records, per_clip) for _ in range(len(v))])


def validation_rows(records: Sequence[ClipRecord], share: float, seed: int) -> np.ndarray:
    """Boolean mask of the clips held out for validation: sklearn's train_test_split(test_size=share),
    stratified by section and domain (else by section, else not), then one clip of every section of
    two or more clips that got none."""
    from sklearn.model_selection import train_test_split

    held_out = np.zeros(len(records), dtype=bool)
    if len(records) < 2:
        return held_out
    rows = np.arange(len(records))
    strata = ([f"{r.section}/{r.domain}" for r in records], [r.section for r in records], None)
    for labels in strata:
        try:
            held_out[train_test_split(rows, test_size=share, random_state=seed, stratify=labels)[1]] = True
            break
        except ValueError:  # a stratum too small to split
            continue
    rng = np.random.default_rng(seed)
    sections = np.array([r.section for r in records])
    for section in np.unique(sections):
        members = rows[sections == section]
        if len(members) > 1 and not held_out[members].any():
            held_out[rng.choice(members)] = True
        if held_out[members].all():  # never leave a section without training clips
            held_out[members[0]] = False
    return held_out


class BaselineAE(Backend):
    """The baseline autoencoder behind the scorer interface, fitted per machine type; reads the audio of
    the records itself (the embeddings of the Split are not used)."""

    EMBEDDING = False  # reads the audio: never the ensemble's embedding branch

    def __init__(
        self,
        score: str = SCORE,
        epochs: int = EPOCHS,
        batch_size: int = BATCH_SIZE,
        learning_rate: float = LEARNING_RATE,
        seed: int = SEED,
        channels: str = "near",
        residual_weight: float = RESIDUAL_WEIGHT,
        device: str = "auto",
        threads: int = THREADS,
    ):
        super().__init__(group_by="machine_type", seed=seed)
        if score not in SCORES:
            raise ValueError(f"baseline score must be one of {SCORES}, got {score!r}")
        check_one_view(channels)  # refuses a mode before any work
        self.settings = {
            "score": score,
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "learning_rate": float(learning_rate),
            "seed": int(seed),
            "channels": channels,
            "residual_weight": float(residual_weight),
            "threads": int(threads),
        }
        self.device = resolve_device(device)
        self.model = AENet(INPUT_DIM, N_MELS)
        self.held_out: dict | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], make=None) -> BaselineAE:
        """From evaluate.py's settings: BASELINE_SCORE, BASELINE_EPOCHS, BASELINE_BATCH_SIZE, BASELINE_LR,
        BASELINE_SEED, BASELINE_THREADS, DEVICE, and the embeddings' channel mode (CHANNELS, RESIDUAL_WEIGHT:
        the clips are heard as the encoder heard them; both = the baseline's own channel 0, near)."""
        values = pick(
            settings,
            ("baseline_score", "baseline_epochs", "baseline_batch_size", "baseline_lr", "baseline_seed"),
        )
        channels = settings.get("channels", "near")
        return cls(
            score=values["baseline_score"],
            epochs=values["baseline_epochs"],
            batch_size=values["baseline_batch_size"],
            learning_rate=values["baseline_lr"],
            seed=values["baseline_seed"],
            channels="near" if channels == "both" else channels,
            residual_weight=settings.get("residual_weight", RESIDUAL_WEIGHT),
            device=settings.get("device", "auto"),
            threads=settings.get("baseline_threads", THREADS),
        )

    def describe(self) -> str:
        s = self.settings
        return f"DCASE baseline autoencoder ({s['score']}, {s['epochs']} epochs, channel {s['channels']})"

    def clip_vectors(self, records: Sequence[ClipRecord]) -> list[np.ndarray]:
        s = self.settings
        return [file_to_vectors(r.path, s["channels"], s["residual_weight"]) for r in records]

    def fit(self, normal: Split) -> BaselineAE:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.settings["threads"] or previous)
        try:
            return self._fit(normal)
        finally:
            torch.set_num_threads(previous)

    def _fit(self, normal: Split) -> BaselineAE:
        s = self.settings
        records = list(normal.records)
        if not records:
            raise ValueError("the baseline autoencoder needs at least one training clip")
        per_clip = self.clip_vectors(records)
        held_out = validation_rows(records, VALIDATION_SHARE, s["seed"])
        stack = lambda rows: torch.from_numpy(  # noqa: E731
            np.concatenate([per_clip[i] for i in rows] or [np.zeros((0, INPUT_DIM), np.float32)])
        ).to(self.device)
        train_rows, valid_rows = np.flatnonzero(~held_out), np.flatnonzero(held_out)
        train, valid = stack(train_rows), stack(valid_rows)
        is_target = target_flags([records[i] for i in train_rows], [per_clip[i] for i in train_rows])
        seed_everything(s["seed"])
        generator = torch.Generator().manual_seed(s["seed"])
        self.model = AENet(INPUT_DIM, N_MELS).to(self.device)
        self.history = train_network(
            self.model, train, valid, s, generator, f"baseline AE {records[0].machine_type}"
        )
        order = torch.randperm(len(train), generator=generator)
        source, target = covariance_pass(self.model, train, is_target.to(self.device), order, s["batch_size"])
        self.model.cov_source.copy_(source)
        self.model.cov_target.copy_(target)
        self._inverses = None
        scored = self._score_vectors([per_clip[i] for i in valid_rows])
        in_sample = self._in_sample_rows(records, held_out)
        scores = np.full(len(records), np.nan)
        scores[valid_rows] = scored
        scores[in_sample] = self._score_vectors([per_clip[i] for i in in_sample])
        self.held_out = {"paths": [r.path for r in records], "scores": scores}
        return self

    @staticmethod
    def _in_sample_rows(records: Sequence[ClipRecord], held_out: np.ndarray) -> np.ndarray:
        """Rows of the sections with no held-out clip (a single clip): their scores are in sample."""
        sections = np.array([r.section for r in records])
        alone = [s for s in np.unique(sections) if not held_out[sections == s].any()]
        if alone:
            print(
                f"note: {records[0].machine_type} section(s) {', '.join(alone)} have one training clip: "
                "its decision threshold comes from an in-sample score"
            )
        return np.flatnonzero(np.isin(sections, alone))

    def inverses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """inv(cov_source), inv(cov_target) in float64 (the baseline inverts in float32: the fixture's
        scores agree to 2e-7 either way, and float64 keeps ``dbar^T inv dbar`` positive when a covariance
        is ill-conditioned, e.g. mel bands that are always empty)."""
        if getattr(self, "_inverses", None) is None:
            self._inverses = tuple(
                torch.linalg.inv(cov.double()) for cov in (self.model.cov_source, self.model.cov_target)
            )
        return self._inverses

    def _score_vectors(self, per_clip: Sequence[np.ndarray]) -> np.ndarray:
        inverses = self.inverses()
        name = self.settings["score"]
        return np.array(
            [clip_scores(self.model, torch.from_numpy(v).to(self.device), inverses)[name] for v in per_clip],
            dtype=np.float64,
        )

    def score(self, clips: Split) -> np.ndarray:
        return self._score_vectors(self.clip_vectors(clips.records))

    def training_scores(self, normal: Split) -> np.ndarray:
        """The held-out clips' scores kept by ``fit`` for these very rows (NaN for the clips trained on);
        for other rows, their scores."""
        if self.held_out is not None and self.held_out["paths"] == [r.path for r in normal.records]:
            return np.asarray(self.held_out["scores"], dtype=np.float64)
        return self.score(normal)

    def state(self) -> dict:
        """Tensors and plain data only: loadable with torch.load(weights_only=True)."""
        held = self.held_out or {"paths": [], "scores": np.zeros(0)}
        return {
            "format": BASELINE_FORMAT,
            "settings": dict(self.settings),
            "network": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "held_out_paths": list(held["paths"]),
            "held_out_scores": torch.as_tensor(held["scores"], dtype=torch.float64),
        }

    def save(self, path: str | os.PathLike) -> None:
        atomic_torch_save(self.state(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> BaselineAE:
        """A saved model, read with torch.load(weights_only=True); refused when it is not one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"baseline autoencoder model {path} not found: fit it first")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"cannot read baseline autoencoder model {path} ({type(error).__name__}: {error})"
            ) from error
        if not isinstance(state, dict) or state.get("format") != BASELINE_FORMAT:
            raise ValueError(
                f"{path} is not a baseline autoencoder model of this project ({BASELINE_FORMAT})"
            )
        scorer = cls(**state["settings"], device=device)
        scorer.model.load_state_dict(state["network"])
        scorer.model.to(scorer.device)
        if state["held_out_paths"]:
            scorer.held_out = {"paths": state["held_out_paths"], "scores": state["held_out_scores"].numpy()}
        return scorer
