"""The classes of the auxiliary task: which clips form one class (LABEL) and which clips count (CLASSES_FROM).

    LABEL "attributes"          machine type, section and attribute values (this project's first label)
    LABEL "attributes_domain"   the same plus the domain, as ASDKit's machine_section_attr_domain label:
                                "<machine>---<int(section)>---<attributes>---<1 if target else 0>"
    CLASSES_FROM "train"        classes of the training clips only
    CLASSES_FROM "train_test"   also the classes of labelled test clips (ASDKit counts classes over train
                                and test); such classes get centres but no training clip. Anonymised
                                evaluation test clips (label None) count only under their original
                                names, given by the evaluation list (EVAL_LIST; asd/data/ground_truth.py)
The class index is the rank of a class name among the sorted names (scikit-learn's LabelEncoder order).
"""

from __future__ import annotations

from collections.abc import Iterable

from asd.base.years import UNLABELLED
from asd.data.dataset import LabelIndex
from asd.data.names import SINGLE_ATTRIBUTE_KEY, ClipRecord

LABELS = ("attributes", "attributes_domain")


def asdkit_attributes(record: ClipRecord) -> str:
    """The attribute part of a name as ASDKit joins it: the tail after the clip index, "noAttribute" if none."""
    if len(record.attributes) == 1 and record.attributes[0][0] == SINGLE_ATTRIBUTE_KEY:
        return record.attributes[0][1]  # a tail that did not pair up, kept whole
    return record.attribute_string


def class_name(record: ClipRecord, label: str) -> str:
    """The class of ``record`` under LABEL ``label``."""
    if label == "attributes":
        return record.class_name
    if label == "attributes_domain":
        target = int(record.domain == "target")
        return f"{record.machine_type}---{int(record.section)}---{asdkit_attributes(record)}---{target}"
    raise ValueError(f"LABEL must be one of {LABELS}, got {label!r}")


class ClassIndex(LabelIndex):
    """A LabelIndex whose records are named by class_name(record, ``label``); saved with its label."""

    def __init__(self, names: Iterable[str], label: str = "attributes"):
        super().__init__(names)
        if label not in LABELS:
            raise ValueError(f"LABEL must be one of {LABELS}, got {label!r}")
        self.label = label

    @classmethod
    def from_records(cls, records: Iterable[ClipRecord], label: str = "attributes") -> ClassIndex:
        return cls((class_name(r, label) for r in records), label)

    def _name(self, record: ClipRecord | str) -> str:
        return record if isinstance(record, str) else class_name(record, self.label)

    def index(self, record: ClipRecord | str) -> int:
        return super().index(self._name(record))

    def get(self, record: ClipRecord | str, default: int = -1) -> int:
        return super().get(self._name(record), default)

    def __contains__(self, record: ClipRecord | str) -> bool:
        return super().__contains__(self._name(record))

    def to_dict(self) -> dict:
        return {"names": list(self.names), "label": self.label}

    @classmethod
    def from_dict(cls, d: dict) -> ClassIndex:
        return cls(d["names"], d.get("label", "attributes"))


def counted_records(train: list[ClipRecord], test: list[ClipRecord], classes_from: str) -> list[ClipRecord]:
    """The clips whose classes count: the training clips, plus (``train_test``) the labelled test clips
    (anonymised evaluation names carry no attributes or domain, so they add nothing)."""
    if classes_from == "train":
        return list(train)
    if classes_from == "train_test":
        return list(train) + [r for r in test if r.label is not UNLABELLED]
    raise ValueError(f"CLASSES_FROM must be 'train' or 'train_test', got {classes_from!r}")


def counted_note(test: list[ClipRecord], counted: int, classes: int) -> str:
    """What train.py says about the test clips CLASSES_FROM train_test counted."""
    unlabelled = sum(r.label is UNLABELLED for r in test)
    note = (
        f"{classes} classes from {counted} clips: {len(test) - unlabelled} of {len(test)} test clips counted"
    )
    if unlabelled:
        note += f"; {unlabelled} unlabelled (anonymised) test clips add no class (EVAL_LIST names their originals)"
    return note
