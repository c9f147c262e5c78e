"""The official evaluator's ground truth: labels and domains of evaluation-set clips with anonymised names.

A ground-truth folder holds, per machine type and section,
  ground_truth_data/ground_truth_<machine>_section_<XX>_test.csv     "<clip name>,<0|1>"  (1 = anomaly)
  ground_truth_domain/ground_truth_<machine>_section_<XX>_test.csv   "<clip name>,<0|1>"  (1 = target)
``apply_ground_truth`` gives test records their label and domain from these files, so the tables,
summaries, report and official score are computed exactly as for labelled names. Within a section
that has clips, a clip without a row, or a row without a clip, is an error naming both; files of
sections without clips are ignored (one data folder's scorer may get the ground truth of several).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

_FILE = re.compile(r"^ground_truth_(?P<machine>.+)_section_(?P<section>\d+)_test\.csv$")
_KINDS = {"ground_truth_data": ("normal", "anomaly"), "ground_truth_domain": ("source", "target")}


def _read_rows(path: Path, values: tuple[str, str]) -> dict[str, str]:
    """{clip name: values[0 or 1]} of one ground-truth CSV."""
    rows: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                if not row:
                    continue
                if len(row) != 2 or row[1].strip() not in ("0", "1"):
                    raise ValueError(f"{path}:{line}: expected '<clip name>,<0|1>', got {row}")
                if row[0] in rows:
                    raise ValueError(f"{path}:{line}: {row[0]} listed twice")
                rows[row[0]] = values[int(row[1])]
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from error
    return rows


def read_ground_truth(folder: str | os.PathLike) -> dict[tuple[str, str], dict[str, tuple[str, str, Path]]]:
    """{(machine_type, section): {clip name: (label, domain, data file)}} of a ground-truth folder."""
    folder = Path(folder)
    tables: dict[str, dict[tuple[str, str], tuple[Path, dict[str, str]]]] = {}
    for kind, values in _KINDS.items():
        tables[kind] = {}
        for path in sorted((folder / kind).glob("*.csv")):
            match = _FILE.match(path.name)
            if match is None:
                raise ValueError(f"{path}: expected ground_truth_<machine>_section_<XX>_test.csv")
            tables[kind][(match["machine"], match["section"])] = (path, _read_rows(path, values))
    data, domain = tables["ground_truth_data"], tables["ground_truth_domain"]
    if not data:
        raise FileNotFoundError(
            f"{folder}: no ground_truth_data/ground_truth_<machine>_section_<XX>_test.csv files"
        )
    truth = {}
    for key, (data_path, labels) in data.items():
        if key not in domain:
            raise FileNotFoundError(
                f"{data_path} has no partner {folder / 'ground_truth_domain' / data_path.name} (the domains)"
            )
        domain_path, domains = domain[key]
        if set(labels) != set(domains):
            only = sorted(set(labels) ^ set(domains))
            raise ValueError(f"{data_path} and {domain_path} list different clips, e.g. {only[0]}")
        truth[key] = {name: (label, domains[name], data_path) for name, label in labels.items()}
    extra = sorted(set(domain) - set(data))
    if extra:
        raise FileNotFoundError(f"{domain[extra[0]][0]} has no partner in {folder / 'ground_truth_data'}")
    return truth


def apply_ground_truth(records: Sequence, folder: str | os.PathLike) -> list:
    """The test ``records`` with label and domain from the ground-truth folder.

    Every (machine type, section) of the clips that the folder covers must match them exactly: a clip
    without a row or a row without a clip is a ValueError naming both. Files of sections without any
    clip here (e.g. the evaluation set's, when scoring the development folder) are ignored and named
    in one printed line. Records of sections the folder does not cover keep their labels, and must
    have them (named clips of a development set).
    """
    truth = read_ground_truth(folder)
    present = {(r.machine_type, r.section) for r in records}
    absent = sorted(key for key in truth if key not in present)
    if absent:
        print(
            "ground truth of sections without test clips here ignored: "
            + ", ".join(str(next(iter(truth[key].values()))[2]) for key in absent)
        )
    truth = {key: rows for key, rows in truth.items() if key in present}
    out, seen = [], set()
    for record in records:
        key, name = (record.machine_type, record.section), Path(record.path).name
        if key not in truth:
            if record.label not in ("normal", "anomaly"):
                raise ValueError(
                    f"{record.path} has no label and {folder} has no ground truth for "
                    f"{record.machine_type} section {record.section}"
                )
            out.append(record)
            continue
        if name not in truth[key]:
            data_file = next(iter(truth[key].values()))[2]
            raise ValueError(f"{record.path}: no row for {name} in {data_file}")
        label, domain, _ = truth[key][name]
        out.append(dataclasses.replace(record, label=label, domain=domain))
        seen.add((key, name))
    for key, rows in truth.items():
        missing = sorted(name for name in rows if (key, name) not in seen)
        if missing:
            raise ValueError(
                f"{rows[missing[0]][2]} lists {missing[0]} ({len(missing)} rows in all) but no such "
                f"{key[0]} section {key[1]} test clip was scored"
            )
    return out
