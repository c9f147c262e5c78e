"""The official DCASE Task 2 baseline autoencoder (nttcslab/dcase2023_task2_baseline_ae, 2023-2026) as a scorer.

Written from the baseline's published description (tests/fixtures/baseline_fixture/README.md states each
formula with its file and line); the fixture's outputs of the baseline's own code are the tests' truth.

- Features (``file_to_vectors``): librosa's mel power spectrogram (128 mels, n_fft 1024, hop 512) at the
  clip's own sample rate, ``10 log10(max(mel, eps))``, 5 consecutive frames concatenated into 640-dim
  vectors. The clip is read with soundfile through preprocessing.load_audio in the project's channel mode
  (near = channel 0 = the baseline's 2026 reading).
- Network (``AENet``): 640-128-128-128-128-8-128-128-128-128-640, batch norm and ReLU after each hidden
  layer (the 8-dim code too); ``cov_source``/``cov_target`` buffers.
- Training, one model per machine type: Adam (lr 1e-3), batch 256 shuffled, MSE, 100 epochs, seed 13711;
  10 % of the training data held out for validation. Then the covariance pass over the training vectors
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
from torch import nn

from asd.backends.base import Backend, pick
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
CODE_DIM = 8
HIDDEN = 128
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
# CPU threads of torch while fitting (more threads than free cores make this small network slower)
THREADS = 1


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


def _block(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out, momentum=0.01, eps=1e-3), nn.ReLU()]


class AENet(nn.Module):
    """The baseline's dense autoencoder; its state-dict names are the baseline's."""

    def __init__(self, input_dim: int = INPUT_DIM, block_size: int = N_MELS):
        super().__init__()
        self.input_dim = input_dim
        widths = [input_dim, HIDDEN, HIDDEN, HIDDEN, HIDDEN, CODE_DIM]
        self.encoder = nn.Sequential(*[m for a, b in zip(widths, widths[1:]) for m in _block(a, b)])
        back = widths[::-1]
        decoder = [m for a, b in zip(back[:-2], back[1:-1]) for m in _block(a, b)]
        self.decoder = nn.Sequential(*decoder, nn.Linear(HIDDEN, input_dim))
        self.register_buffer("cov_source", torch.zeros(block_size, block_size))
        self.register_buffer("cov_target", torch.zeros(block_size, block_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x.view(-1, self.input_dim))
        return self.decoder(z), z


def _batches(order: torch.Tensor, batch_size: int):
    """Runs of ``batch_size`` indices; a batch of one vector is skipped, as in the baseline."""
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        if len(batch) > 1:
            yield batch


def train_network(
    model: AENet,
    train: torch.Tensor,
    valid: torch.Tensor,
    settings: Mapping[str, Any],
    generator: torch.Generator,
    desc: str = "baseline AE",
) -> list[tuple[float, float]]:
    """The baseline's training loop (Adam, shuffled batches, MSE); returns (train loss, validation loss)
    per epoch (the validation loss is NaN without validation vectors)."""
    from tqdm import tqdm

    optimizer = torch.optim.Adam(model.parameters(), lr=settings["learning_rate"])
    history = []
    epochs = tqdm(range(settings["epochs"]), desc=desc, unit="epoch", leave=False, file=sys.stderr)
    for _ in epochs:
        model.train()
        total, steps = 0.0, 0
        order = torch.randperm(len(train), generator=generator).to(train.device)
        for batch in _batches(order, settings["batch_size"]):
            x = train[batch]
            optimizer.zero_grad()
            loss = torch.mean((model(x)[0] - x) ** 2)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.detach(), steps + 1
        history.append((float(total) / max(steps, 1), validation_loss(model, valid, settings["batch_size"])))
        epochs.set_postfix(loss=f"{history[-1][0]:.4g}", val_loss=f"{history[-1][1]:.4g}")
    return history


@torch.no_grad()
def validation_loss(model: AENet, valid: torch.Tensor, batch_size: int) -> float:
    """Mean over the validation batches of their mean squared error (eval mode)."""
    model.eval()
    losses = [
        torch.mean((model(valid[i : i + batch_size])[0] - valid[i : i + batch_size]) ** 2)
        for i in range(0, len(valid), batch_size)
    ]
    return float(torch.stack(losses).mean()) if losses else float("nan")


@torch.no_grad()
def covariance_pass(
    model: AENet, vectors: torch.Tensor, is_target: torch.Tensor, order: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cov_source, cov_target) of the residual blocks, batch by batch in ``order`` (the baseline's
    covariance epoch): each batch's blocks of one domain centred on their own mean, ``diff^T diff`` summed,
    divided by that domain's vector count - 1; a domain without vectors takes the other's."""
    model.eval()
    block = model.cov_source.shape[0]
    sums = {False: torch.zeros(block, block, device=vectors.device), True: torch.zeros_like(model.cov_source)}
    counts = {False: 0, True: 0}
    for batch in _batches(order.to(vectors.device), batch_size):
        x = vectors[batch]
        diff = x - model(x)[0]
        for domain in (False, True):
            rows = is_target[batch] == domain
            if rows.any():
                blocks = diff[rows].reshape(-1, block)
                centred = blocks - blocks.mean(dim=0)
                sums[domain] += centred.T @ centred
                counts[domain] += int(rows.sum())
    if counts[False] + counts[True] == 0:
        raise ValueError("the covariance pass needs at least one batch of two training vectors")
    covs = {d: sums[d] / (counts[d] - 1) if counts[d] else None for d in (False, True)}
    source = covs[False] if covs[False] is not None else covs[True]
    target = covs[True] if covs[True] is not None else source
    return source, target


@torch.no_grad()
def clip_scores(model: AENet, vectors: torch.Tensor, inverses: Sequence[torch.Tensor]) -> dict[str, float]:
    """One clip's scores: MSE, MAHALA_source, MAHALA_target and MAHALA (their minimum)."""
    model.eval()
    diff = vectors - model(vectors)[0]
    mean_block = diff.reshape(-1, inverses[0].shape[0]).mean(dim=0).to(inverses[0].dtype)
    mahala = [float(mean_block @ inverse @ mean_block) for inverse in inverses]
    return {
        "MSE": float(torch.mean(diff**2)),
        "MAHALA_source": mahala[0],
        "MAHALA_target": mahala[1],
        "MAHALA": min(mahala),
    }


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
        self.model = AENet()
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
        torch.set_num_threads(self.settings["threads"])
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
        self.model = AENet().to(self.device)
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
