"""DCASE Task 2 folders and file names, the attribute-classification labels, and a torch Dataset.

    records = discover_clips("dev_data")                       # every <machine>/{train,test}/*.wav
    train = [r for r in records if r.split == "train"]
    labels = LabelIndex.from_records(train)                    # machine/section/attributes classes
    fit, val = stratified_split(train, 0.1, seed=0)
    loader = DataLoader(ClipDataset(fit, labels, FeatureCache()), batch_size=8,
                        collate_fn=FixedLengthCollate(1024))

Every naming scheme from DCASE 2020 to 2025 is understood:
    normal_id_00_00000000.wav, anomaly_id_00_...             2020 development set (no domain)
    id_00_00000000.wav                                        2020 evaluation set (label unknown)
    section_00_source_train_normal_0000.wav                   2021
    section_00_target_test_anomaly_0000_car_C2_spd_34V_mic_1.wav, ..._0000_noAttribute.wav  2022-2025
    section_00_0000.wav, section_00_test_0000.wav             evaluation sets (label unknown)
    section_00_source_train_normal_0000_car_B1_spd_2_mic_2_mic_1.wav   2026 (two-channel clips)
Names without a label (evaluation test sets) give records with label None and, unless the name
or an attributes CSV says it, domain None; they are allowed only in test/ (training clips are
named normal). A key may repeat (mic_2_mic_1): attributes are an ordered tuple of pairs.
Attributes after the clip index are key_value pairs (values may hold dots and dashes: m-n_W,
ac_0.08); a tail that does not pair up (2021's strength_1_ambient) is kept whole as one value.
``<machine>/attributes_XX.csv`` files, when present, fill missing attributes (and the domain, if
they have a ``domain`` column) and must agree with the names.
"""

from __future__ import annotations

import csv
import math
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import soundfile as sf
import torch
from torch.utils.data import Dataset

from asd.clips import ClipPolicy, pad_or_crop, padded_frames
from asd.fbank import ENCODER_MAX_FRAMES, FRAME_SHIFT_MS, SAMPLE_RATE, num_frames
from preprocessing import CHANNELS, AudioError, FeatureCache, channels_needed, check_clip_channels

SPLITS = ("train", "test")
NO_ATTRIBUTE = "noAttribute"
SINGLE_ATTRIBUTE_KEY = "attribute"  # key for a tail that does not split into key_value pairs

_NAME_2020 = re.compile(r"^(?:(?P<label>normal|anomaly)_)?id_(?P<section>\d+)_(?P<index>\d+)$")
_NAME_2021 = re.compile(
    r"^section_(?P<section>\d+)"
    r"(?:_(?P<domain>source|target))?"
    r"(?:_(?P<split>train|test))?"
    r"(?:_(?P<label>normal|anomaly))?"
    r"_(?P<index>\d+)"
    r"(?:_(?P<tail>.+))?$"
)


class ClipNameError(ValueError):
    """A file name that follows none of the DCASE naming schemes."""


@dataclass(frozen=True)
class ClipRecord:
    """One audio clip and everything its path and the attribute tables say about it."""

    path: str
    machine_type: str
    section: str  # "00"; 2020's id_04 gives "04"
    domain: str | None  # "source" | "target" | None (2020, evaluation names)
    split: str  # "train" | "test"
    label: str | None  # "normal" | "anomaly" | None (unlabelled evaluation test clips)
    attributes: tuple[tuple[str, str], ...] = ()

    @property
    def file_name(self) -> str:
        return os.path.basename(self.path)

    @property
    def is_anomaly(self) -> bool | None:
        return None if self.label is None else self.label == "anomaly"

    @property
    def attribute_string(self) -> str:
        if not self.attributes:
            return NO_ATTRIBUTE
        return "_".join(f"{key}_{value}" for key, value in self.attributes)

    @property
    def class_name(self) -> str:
        return f"{self.machine_type}/section_{self.section}/{self.attribute_string}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attributes"] = [list(pair) for pair in self.attributes]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ClipRecord:
        fields = dict(d)
        fields["attributes"] = tuple((str(k), str(v)) for k, v in fields.get("attributes", ()))
        if fields.get("label") == "unknown":  # files written before unlabelled clips had label None
            fields["label"] = None
        return cls(**fields)


# -----------------------------------------------------------------------------
# file names


def parse_attribute_tail(tail: str | None) -> tuple[tuple[str, str], ...]:
    """'car_C2_spd_34V' -> (('car','C2'), ('spd','34V')); None/'noAttribute' -> ()."""
    if not tail or tail == NO_ATTRIBUTE:
        return ()
    tokens = tail.split("_")
    if len(tokens) % 2 or any(not t for t in tokens):
        return ((SINGLE_ATTRIBUTE_KEY, tail),)
    return tuple(zip(tokens[0::2], tokens[1::2]))


def parse_clip_name(
    path: str | os.PathLike, machine_type: str | None = None, split: str | None = None
) -> ClipRecord:
    """Parse a DCASE clip path into a ClipRecord.

    ``machine_type`` and ``split`` default to the grandparent and parent folder names
    (``<machine>/<split>/<file>.wav``). Raises ClipNameError naming the file when the name fits no
    DCASE scheme or contradicts its folder.
    """
    path = Path(path)
    machine_type = machine_type or path.parent.parent.name
    split = split or path.parent.name
    if split not in SPLITS:
        raise ClipNameError(
            f"{path}: split must be one of {SPLITS}, got {split!r} (expected <machine>/<split>/<file>.wav)"
        )
    if path.suffix.lower() != ".wav":
        raise ClipNameError(f"{path}: not a .wav file")
    stem = path.stem
    match = _NAME_2020.match(stem)
    if match:
        label = _label(path, match["label"], split)
        return ClipRecord(str(path), machine_type, match["section"], None, split, label, ())
    match = _NAME_2021.match(stem)
    if not match:
        raise ClipNameError(
            f"{path}: file name follows no DCASE scheme (expected e.g. "
            "section_00_source_train_normal_0000_<attributes>.wav or normal_id_00_00000000.wav)"
        )
    if match["split"] and match["split"] != split:
        raise ClipNameError(
            f"{path}: name says split {match['split']!r} but the file lies in the {split!r} folder"
        )
    label = _label(path, match["label"], split)
    attributes = parse_attribute_tail(match["tail"])
    return ClipRecord(str(path), machine_type, match["section"], match["domain"], split, label, attributes)


def _label(path: Path, label: str | None, split: str) -> str | None:
    """The label a name gives; unlabelled names only in test/, anomalies never in train/."""
    if label is None and split == "train":
        raise ClipNameError(
            f"{path}: a clip without a label in the train folder (unlabelled names such as "
            "section_00_0000.wav belong to test/; training clips are named ..._normal_...)"
        )
    if label == "anomaly" and split == "train":
        raise ClipNameError(f"{path}: an anomalous clip in the train folder (training data must be normal)")
    return label


# -----------------------------------------------------------------------------
# attributes_XX.csv


@dataclass(frozen=True)
class AttributeRow:
    attributes: tuple[tuple[str, str], ...]
    domain: str | None
    source: str  # "<csv file>:<line>", for error messages


def _row_key(file_name: str) -> str:
    """'ToyCar/train/x.wav' or 'train/x.wav' -> 'train/x.wav'; a bare 'x.wav' stays."""
    parts = Path(file_name.strip().replace("\\", "/")).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else parts[-1]


def read_attribute_csv(path: str | os.PathLike) -> dict[str, AttributeRow]:
    """Rows of one DCASE attributes CSV (file_name, d1p, d1v, d2p, d2v, ...[, domain]), keyed by split/file."""
    path = Path(path)
    try:
        return _read_attribute_rows(path)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save the attributes CSV as UTF-8"
        ) from exc


def _read_attribute_rows(path: Path) -> dict[str, AttributeRow]:
    rows: dict[str, AttributeRow] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "file_name" not in reader.fieldnames:
            raise ValueError(f"{path}: attributes CSV needs a 'file_name' column, has {reader.fieldnames}")
        fields = reader.fieldnames
        pair_numbers = sorted({int(m[1]) for name in fields if (m := re.fullmatch(r"d(\d+)p", name))})
        for line, row in enumerate(reader, start=2):
            if not (row.get("file_name") or "").strip():
                continue
            pairs = []
            for n in pair_numbers:
                key, value = (row.get(f"d{n}p") or "").strip(), (row.get(f"d{n}v") or "").strip()
                if key and key != NO_ATTRIBUTE:
                    pairs.append((key, value))
            domain = (row.get("domain") or "").strip() or None
            rows[_row_key(row["file_name"])] = AttributeRow(tuple(pairs), domain, f"{path}:{line}")
    return rows


def read_attribute_tables(machine_dir: str | os.PathLike) -> dict[str, AttributeRow]:
    """All ``attributes*.csv`` tables of one machine type folder, merged."""
    rows: dict[str, AttributeRow] = {}
    for csv_path in sorted(Path(machine_dir).glob("attributes*.csv")):
        rows.update(read_attribute_csv(csv_path))
    return rows


def _same_attributes(name_pairs: tuple, table_pairs: tuple) -> bool:
    if name_pairs == table_pairs:
        return True
    # a name tail kept whole (it did not pair up) agrees with a table that spells out its parts
    joined = "_".join(f"{k}_{v}" for k, v in table_pairs)
    return len(name_pairs) == 1 and name_pairs[0][0] == SINGLE_ATTRIBUTE_KEY and name_pairs[0][1] == joined


def apply_attribute_row(record: ClipRecord, row: AttributeRow | None) -> ClipRecord:
    """Fill a record's missing attributes/domain from its CSV row; ValueError when they disagree."""
    if row is None:
        return record
    attributes, domain = record.attributes, record.domain
    if not attributes:
        attributes = row.attributes
    elif row.attributes and not _same_attributes(attributes, row.attributes):
        raise ValueError(
            f"{record.path}: attributes in the name {record.attribute_string!r} disagree with "
            f"{row.source}: {'_'.join(f'{k}_{v}' for k, v in row.attributes)!r}"
        )
    if row.domain is not None:
        if domain is not None and domain != row.domain:
            raise ValueError(
                f"{record.path}: domain {domain!r} in the name disagrees with {row.source}: {row.domain!r}"
            )
        domain = row.domain
    return replace(record, attributes=attributes, domain=domain)


def attribute_row_for(rows: dict[str, AttributeRow], path: str | os.PathLike) -> AttributeRow | None:
    path = Path(path)
    return rows.get(f"{path.parent.name}/{path.name}") or rows.get(path.name)


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
    augmentation); the default crops from the start (asd.clips.ClipPolicy.training_fbank).
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
