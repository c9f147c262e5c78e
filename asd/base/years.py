"""Everything the project knows about the DCASE Task 2 years, in one table, and which year a set of clips is.

    found = detect_year(records, data_dirs)     # from the clips' NAMES and MACHINE TYPES, never a folder name
    found.year, found.rules, found.clip_seconds  # "2023", "2022+", 18.0
    YEARS["2024"].eval_machine_types

Per year (DcaseYear): the clip-name patterns (labelled names and the evaluation set's anonymised ones),
the machine types of the development and of the evaluation set, the sections (2020: machine IDs), the
attribute keys of the development machine types' names where known (DCASE 2023 and 2024: read from
ASDKit's label files, tests/fixtures/asdkit_fixture/labels), whether attributes_XX.csv tables were
published, the clip seconds of the recipe's fixed-length clips (ASDKit's parse_sec: 2023 18 s, 2024 12 s;
None: the longest clip), the metric rules ("2020", "2021", "2022+"; asd/report/evaluation.py applies them) and
the file name of the evaluation list (anonymised name -> original name; asd/data/ground_truth.py reads it).

Detection: a year fits when every name follows one of its patterns, every machine type and section is
one of its own, the names' attribute keys are those it is known to use and, when the data has
attributes CSVs, the year published them. Among the years that fit, those the data CONFIRMS (every
machine type either has known attribute keys that matched, or belongs to that year alone) win. Several
years may remain (e.g. ToyCar alone is 2023 or 2024): the year is then None, and the rules and clip
seconds are those all remaining years share (the rules by the old section heuristic when they differ).
Adding a year = one DcaseYear entry below and a test in tests/test_years.py.

An unlabelled clip (an evaluation-set test clip under its anonymised name) has label UNLABELLED (None),
and nothing else means unlabelled.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

UNLABELLED = None  # the label of a clip whose name does not say it (anonymised evaluation test clips)

RULE_SETS = ("2020", "2021", "2022+")  # metric rules; asd/report/evaluation.py measures each
RULES = {
    "2020": "DCASE 2020 rules: AUC and pAUC per machine ID, arithmetic means",
    "2021": "DCASE 2021 rules: AUC and pAUC per domain, harmonic mean",
    "2022+": "DCASE 2022-2025 rules (official evaluator): AUC per domain vs all anomalies, pAUC, harmonic mean",
}

# clip-name patterns (file stems): 2020's machine-ID names, the labelled section names of 2021 on,
# and the evaluation sets' anonymised names
ID_NAME = r"(?:(?:normal|anomaly)_)?id_\d{2}_\d{8}"
LABELLED = r"section_\d{2}_(?:source|target)_(?:train|test)_(?:normal|anomaly)_\d{4}"
# attributes (or noAttribute; a name without any fits too), no repeated microphone key
ONE_MIC_TAIL = r"(?:_(?!.*mic_\d+_mic_\d+$).+)?"
TWO_MIC_TAIL = r"_.*mic_\d+_mic_\d+"  # 2026: the key 'mic' repeats (near, far microphone)
ANONYMISED = r"section_\d{2}_\d{4}"

_DEV_2022 = ("ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve")
_SECTIONS_2021 = tuple(f"{s:02d}" for s in range(6))


@dataclass(frozen=True)
class DcaseYear:
    """One DCASE Task 2 year. Empty machine types / sections: not known, any fits."""

    year: str
    name_patterns: tuple[str, ...]
    dev_machine_types: tuple[str, ...]
    eval_machine_types: tuple[str, ...]
    sections: tuple[str, ...]
    rules: str
    clip_seconds: float | None = None  # the recipe's fixed clip length; None: the longest clip
    eval_list: str | None = None  # the published evaluation list (anonymised,original rows)
    attribute_tables: bool = True  # attributes_XX.csv files were published
    attribute_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)  # dev machine type -> keys

    @property
    def machine_types(self) -> tuple[str, ...]:
        return self.dev_machine_types + self.eval_machine_types

    def name_fits(self, stem: str) -> bool:
        return any(re.fullmatch(pattern, stem) for pattern in self.name_patterns)


YEARS = {
    y.year: y
    for y in (
        DcaseYear(
            "2020",
            (ID_NAME,),
            ("ToyCar", "ToyConveyor", "fan", "pump", "slider", "valve"),
            (),  # the evaluation set has the same machine types (other IDs)
            tuple(f"{s:02d}" for s in range(8)),
            "2020",
            attribute_tables=False,
        ),
        DcaseYear(
            "2021",
            (LABELLED + r"(?:_.+)?", r"section_\d{2}_(?:source|target)_test_\d{4}", ANONYMISED),
            ("ToyCar", "ToyTrain", "fan", "gearbox", "pump", "slider", "valve"),
            (),
            _SECTIONS_2021,
            "2021",
            attribute_tables=False,
        ),
        DcaseYear("2022", (LABELLED + ONE_MIC_TAIL, ANONYMISED), _DEV_2022, (), _SECTIONS_2021, "2022+"),
        DcaseYear(
            "2023",
            (LABELLED + ONE_MIC_TAIL, ANONYMISED),
            _DEV_2022,
            ("ToyDrone", "ToyNscale", "ToyTank", "Vacuum", "bandsaw", "grinder", "shaker"),
            ("00",),
            "2022+",
            clip_seconds=18.0,
            eval_list="eval_data_list_2023.csv",
            attribute_keys={
                "ToyCar": ("car", "spd", "mic"),
                "ToyTrain": ("car", "spd", "mic"),
                "bearing": ("vel", "loc"),
                "fan": ("m-n",),
                "gearbox": ("volt", "wt"),
                "slider": ("vel", "ac"),
                "valve": ("pat",),
            },
        ),
        DcaseYear(
            "2024",
            (LABELLED + ONE_MIC_TAIL, ANONYMISED),
            _DEV_2022,
            (
                "3DPrinter",
                "AirCompressor",
                "BrushlessMotor",
                "HairDryer",
                "HoveringDrone",
                "RoboticArm",
                "Scanner",
                "ToothBrush",
                "ToyCircuit",
            ),
            ("00",),
            "2022+",
            clip_seconds=12.0,
            eval_list="eval_data_list_2024.csv",
            attribute_keys={
                "ToyCar": ("car", "spd", "mic"),
                "ToyTrain": (),
                "bearing": ("pro", "vel", "loc"),
                "fan": ("n",),
                "gearbox": (),
                "slider": (),
                "valve": ("v1pat", "v2pat"),
            },
        ),
        DcaseYear(
            "2025",
            (LABELLED + ONE_MIC_TAIL, ANONYMISED),
            _DEV_2022,
            (
                "AutoTrash",
                "BandSealer",
                "CoffeeGrinder",
                "HomeCamera",
                "Polisher",
                "ScrewFeeder",
                "ToyPet",
                "ToyRCCar",
            ),
            ("00",),
            "2022+",
            eval_list="eval_data_list_2025.csv",
        ),
        # two-channel clips named with both microphones; machine types and sections not published yet
        DcaseYear("2026", (LABELLED + TWO_MIC_TAIL, ANONYMISED), (), (), (), "2022+"),
    )
}


@dataclass(frozen=True)
class Detection:
    """Which DCASE year a set of clips is, and what follows from it."""

    year: str | None  # None: the names fit several years, or none
    candidates: tuple[str, ...]  # the years that remained
    rules: str  # metric rules (RULE_SETS)
    clip_seconds: float | None  # the recipe's fixed clip length; None: the longest clip
    why: str


def _keys_by_machine(records: Iterable) -> dict[str, set[tuple[str, ...]]]:
    """{machine type: the attribute-key tuples of its labelled names}."""
    keys: dict[str, set[tuple[str, ...]]] = {}
    for record in records:
        if record.label is not UNLABELLED:
            keys.setdefault(record.machine_type, set()).add(tuple(key for key, _ in record.attributes))
    return keys


def _fits(year: DcaseYear, stems: set, machines: set, sections: set, keys: dict, has_tables: bool) -> bool:
    if not all(year.name_fits(stem) for stem in stems):
        return False
    if year.machine_types and not machines <= set(year.machine_types):
        return False
    if year.sections and not sections <= set(year.sections):
        return False
    if has_tables and not year.attribute_tables:
        return False
    return all(found <= {year.attribute_keys[m]} for m, found in keys.items() if m in year.attribute_keys)


def _confirms(year: DcaseYear, machines: set) -> bool:
    """Every machine type has known attribute keys in ``year`` (they matched) or is ``year``'s alone."""
    others = {m for y in YEARS.values() if y is not year for m in y.machine_types}
    return all(m in year.attribute_keys or (m in year.machine_types and m not in others) for m in machines)


def section_heuristic(records: Sequence, has_tables: bool) -> tuple[str, str]:
    """(rules, why) when the names name no single year: 2020-style names -> "2020"; section names ->
    "2021" when a machine type has several sections and there is no attributes CSV, else "2022+"."""
    if not any(Path(r.path).name.startswith("section_") for r in records):
        return "2020", "2020-style names (<normal|anomaly>_id_XX_NNNNNNNN.wav)"
    sections: dict[str, set] = {}
    for record in records:
        sections.setdefault(record.machine_type, set()).add(record.section)
    if any(len(s) > 1 for s in sections.values()) and not has_tables:
        return "2021", "section_XX names, several sections per machine type, no attributes CSV"
    why = "attributes CSV present" if has_tables else "one section per machine type"
    return "2022+", f"section_XX names, {why}"


def has_attribute_tables(data_dirs: Iterable[str | os.PathLike]) -> bool:
    return any(any(Path(d).glob("*/attributes*.csv")) for d in data_dirs)


def detect_year(records: Sequence, data_dirs: Iterable[str | os.PathLike] = ()) -> Detection:
    """The DCASE year of ``records`` (ClipRecords) from their names, machine types, sections and attribute
    keys; ``data_dirs`` only say whether attributes CSVs exist. See the module docstring."""
    if isinstance(data_dirs, (str, os.PathLike)):
        data_dirs = [data_dirs]
    has_tables = has_attribute_tables(data_dirs)
    stems = {Path(r.path).stem.split("#")[0] for r in records}
    machines = {r.machine_type for r in records}
    sections = {r.section for r in records}
    keys = _keys_by_machine(records)
    fits = [y for y in YEARS.values() if _fits(y, stems, machines, sections, keys, has_tables)]
    chosen = [y for y in fits if _confirms(y, machines)] or fits
    names = tuple(y.year for y in chosen)
    rule_sets = {y.rules for y in chosen}
    if len(rule_sets) == 1:
        rules = rule_sets.pop()
        how = f"names and machine types of DCASE {' or '.join(names)}"
    else:
        rules, how = section_heuristic(records, has_tables)
        if names:
            how = f"names fit DCASE {', '.join(names)}; {how}"
    seconds = {y.clip_seconds for y in chosen}
    clip_seconds = seconds.pop() if len(seconds) == 1 else None
    year = names[0] if len(names) == 1 else None
    return Detection(year, names, rules, clip_seconds, how)
