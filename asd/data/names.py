"""DCASE Task 2 file names and attribute tables: what a clip's name and its attributes_XX.csv row say.

Every naming scheme from DCASE 2020 to 2026 is understood:
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
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

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
