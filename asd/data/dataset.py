"""DCASE Task 2 folders, the attribute-classification labels, and a torch Dataset (clip names and
attribute tables: asd/data/names.py).

    records = discover_clips("dev_data")                       # every <machine>/{train,test}/*.wav
    train = [r for r in records if r.split == "train"]
    labels = LabelIndex.from_records(train)                    # machine/section/attributes classes
    fit, val = stratified_split(train, 0.1, seed=0)
    loader = DataLoader(ClipDataset(fit, labels, FeatureCache()), batch_size=8,
                        collate_fn=fbank_collate(policy, train=True))
"""

from __future__ import annotations

import math
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import soundfile as sf
import torch
from torch.utils.data import Dataset

from asd.data.clips import ClipPolicy, pad_or_crop, padded_frames
from asd.data.fbank import ENCODER_MAX_FRAMES, FRAME_SHIFT_MS, SAMPLE_RATE, num_frames
from asd.data.names import (
    SPLITS,
    ClipRecord,
    apply_attribute_row,
    attribute_row_for,
    parse_clip_name,
    read_attribute_tables,
)
from asd.data.preprocessing import CHANNELS, AudioError, FeatureCache, channels_needed, check_clip_channels

# -----------------------------------------------------------------------------
# folders


def machine_type_dirs(data_dir: str | os.PathLike, machine_types: Sequence[str] | None = None) -> list[Path]:
    """The machine type folders of a DCASE data folder (those holding a train/ or test/ folder)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data folder {data_dir} does not exist (expected {data_dir}/<machine_type>/{{train,test}}/*.wav)"
        )
    found = sorted(d for d in data_dir.iterdir() if d.is_dir() and any((d / s).is_dir() for s in SPLITS))
    if machine_types:
        names = {d.name for d in found}
        missing = [m for m in machine_types if m not in names]
        if missing:
            raise FileNotFoundError(
                f"{data_dir}: no folder for machine type(s) {missing}; found {sorted(names)}"
            )
        found = [d for d in found if d.name in set(machine_types)]
    if not found:
        raise FileNotFoundError(f"{data_dir}: no <machine_type>/train or <machine_type>/test folders found")
    return found


def wav_files(split_dir: str | os.PathLike) -> list[Path]:
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        return []
    return sorted(p for p in split_dir.iterdir() if p.is_file() and p.suffix.lower() == ".wav")


def discover_clips(
    data_dir: str | os.PathLike,
    splits: Sequence[str] = SPLITS,
    machine_types: Sequence[str] | None = None,
    channels: str = CHANNELS,
    max_frames: int | None = ENCODER_MAX_FRAMES,
) -> list[ClipRecord]:
    """Every clip under ``data_dir/<machine_type>/<split>/``, parsed and merged with attributes CSVs, sorted by path.

    The clips' headers are checked before anything is computed (check_clips): a clip with too few
    channels for ``channels`` or longer than ``max_frames`` fbank frames raises AudioError naming it.
    """
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown split(s) {bad}; expected a subset of {SPLITS}")
    records = []
    for machine_dir in machine_type_dirs(data_dir, machine_types):
        rows = read_attribute_tables(machine_dir)
        for split in splits:
            for path in wav_files(machine_dir / split):
                record = parse_clip_name(path, machine_dir.name, split)
                records.append(apply_attribute_row(record, attribute_row_for(rows, path)))
    if not records:
        raise ValueError(f"{data_dir}: no .wav clips found in the {list(splits)} folders")
    check_clips([r.path for r in records], channels, max_frames)
    return sorted(records, key=lambda r: r.path)


def clip_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(fbank frames at 16 kHz, channels) of a clip, from its header only (no samples are read)."""
    info = sf.info(str(path))
    samples = math.ceil(info.frames * SAMPLE_RATE / info.samplerate) if info.samplerate else 0
    return num_frames(samples), info.channels


def too_long_message(path: str | os.PathLike, frames: int, max_frames: int = ENCODER_MAX_FRAMES) -> str:
    """What to say about a clip of ``frames`` fbank frames, longer than the encoder's reach."""
    return (
        f"{path}: {frames * FRAME_SHIFT_MS / 1000:.1f} s ({frames} fbank frames) is longer than the "
        f"encoder's reach ({max_frames} frames, about {max_frames * FRAME_SHIFT_MS / 1000:.0f} s): "
        "cut it into DCASE-length clips (score_clips.py scores long recordings as windows)"
    )


def check_clips(
    paths: Iterable[str | os.PathLike],
    channels: str = CHANNELS,
    max_frames: int | None = ENCODER_MAX_FRAMES,
    shown: int = 10,
) -> None:
    """AudioError naming the clips (up to ``shown``) that have too few channels for ``channels`` or more
    than ``max_frames`` fbank frames (None: any length), read from their headers only.

    Long clips are refused rather than silently cut to the encoder's reach. A header soundfile
    cannot read is left to the loader, which names what is wrong with it.
    """
    channels_needed(channels)  # an unknown mode is an error even before any clip is read
    problems = []
    for path in paths:
        try:
            frames, count = clip_shape(path)
        except Exception:
            continue
        try:
            check_clip_channels(path, count, channels)
        except AudioError as exc:
            problems.append(str(exc))
        if max_frames is not None and frames > max_frames:
            problems.append(too_long_message(path, frames, max_frames))
    if problems:
        more = f"\n  ... and {len(problems) - shown} more" if len(problems) > shown else ""
        raise AudioError(
            f"{len(problems)} clip(s) cannot be used:\n  " + "\n  ".join(problems[:shown]) + more
        )


# -----------------------------------------------------------------------------
# labels for the auxiliary classification task


class LabelIndex:
    """A stable class index over ``ClipRecord.class_name`` (sorted), saved as JSON beside the model."""

    def __init__(self, names: Iterable[str]):
        self.names: list[str] = sorted(set(names))
        self._index = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def from_records(cls, records: Iterable[ClipRecord]) -> LabelIndex:
        return cls(r.class_name for r in records)

    def index(self, record: ClipRecord | str) -> int:
        name = record if isinstance(record, str) else record.class_name
        if name not in self._index:
            raise KeyError(f"class {name!r} is not in the label index ({len(self)} classes)")
        return self._index[name]

    def get(self, record: ClipRecord | str, default: int = -1) -> int:
        name = record if isinstance(record, str) else record.class_name
        return self._index.get(name, default)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, record: ClipRecord | str) -> bool:
        return (record if isinstance(record, str) else record.class_name) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelIndex) and self.names == other.names

    def to_dict(self) -> dict:
        return {"names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict) -> LabelIndex:
        return cls(d["names"])


def stratified_split(
    records: Sequence[ClipRecord], val_fraction: float, seed: int = 0
) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """Hold out about ``val_fraction`` of each class_name (source and target domain alike).

    Every class keeps at least one clip for training; a class of one clip goes to training only.
    Deterministic for a seed; both lists come back sorted by path.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups: dict[tuple, list[ClipRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.path):
        groups[(record.class_name, record.domain or "")].append(record)
    rng = random.Random(seed)
    train, val = [], []
    for key in sorted(groups):
        members = groups[key][:]
        rng.shuffle(members)
        n_val = min(round(len(members) * val_fraction), len(members) - 1)
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train, key=lambda r: r.path), sorted(val, key=lambda r: r.path)


# -----------------------------------------------------------------------------
# torch


class ClipDataset(Dataset):
    """(fbank [frames, 128] full length, class label or -1, record) per clip."""

    def __init__(
        self,
        records: Sequence[ClipRecord],
        label_index: LabelIndex | None = None,
        cache: FeatureCache | None = None,
    ):
        self.records = list(records)
        self.label_index = label_index
        self.cache = cache if cache is not None else FeatureCache(None)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, ClipRecord]:
        record = self.records[i]
        label = self.label_index.get(record) if self.label_index is not None else -1
        return self.cache.fbank(record.path), label, record


class FixedLengthCollate:
    """Pad/crop every fbank to ``target_frames`` -> ([B, 1, T, 128], LongTensor[B], records).

    ``random_crop=True`` crops clips longer than ``target_frames`` at a random offset (training
    augmentation); the default crops from the start (asd.data.clips.ClipPolicy.training_fbank).
    """

    def __init__(self, target_frames: int, random_crop: bool = False):
        self.policy = ClipPolicy(target_frames=target_frames, random_crop=random_crop)

    def __call__(self, batch: Sequence[tuple[torch.Tensor, int, ClipRecord]]):
        return _collated([self.policy.training_fbank(fbank, True) for fbank, _, _ in batch], batch)


class VariableLengthCollate:
    """Each clip at its own length, zero-padded (EAT's normalised zero, PAD_VALUE) to a multiple of
    ``multiple`` frames, and the batch to its longest clip -> ([B, 1, T, 128], LongTensor[B], records).

    Nothing is cut: a 10 s clip (998 frames) gives 1024 frames, a 12 s one (1198) 1216.
    """

    def __init__(self, multiple: int = 32):
        if multiple < 1:
            raise ValueError(f"multiple must be at least 1 frame, got {multiple}")
        self.multiple = multiple

    def __call__(self, batch: Sequence[tuple[torch.Tensor, int, ClipRecord]]):
        frames = padded_frames(max(fbank.shape[0] for fbank, _, _ in batch), self.multiple)
        return _collated([pad_or_crop(fbank, frames) for fbank, _, _ in batch], batch)


def fbank_collate(policy: ClipPolicy, train: bool):
    """The collate of fbank clips under ``policy``: whole clips padded to its pad_multiple and the batch's
    longest (target_frames 0), else each cut to target_frames (at a random offset when ``train`` and
    random_crop)."""
    if policy.target_frames == 0:
        return VariableLengthCollate(policy.pad_multiple)
    return FixedLengthCollate(policy.target_frames, random_crop=train and policy.random_crop)


def _collated(fbanks: list[torch.Tensor], batch: Sequence[tuple[torch.Tensor, int, ClipRecord]]):
    """(equal-length fbanks stacked to [B, 1, T, 128], labels, records) of one batch."""
    labels = torch.tensor([label for _, label, _ in batch], dtype=torch.long)
    return torch.stack(fbanks)[:, None], labels, [record for _, _, record in batch]
