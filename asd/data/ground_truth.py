"""Ground truth of evaluation-set clips with anonymised names: the official evaluator's folders and the
DCASE baseline's evaluation list.

A --ground_truth value (GROUND_TRUTH) is a ground-truth folder, an evaluation list file, or both,
comma-separated (``apply_ground_truth`` tells them apart: a file is a list, a folder the evaluator's).

An evaluation list (eval_data_list_YYYY.csv, published with the DCASE baseline; asd/base/years.py names
each year's) holds a machine-type line, then "<anonymised name>,<original name>" rows, per machine type.
``apply_evaluation_list`` gives each anonymised test clip the label, domain AND attributes of its
original name; the record keeps its anonymised path (submission CSVs keep the anonymised names).

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
from collections.abc import Callable, Sequence
from pathlib import Path

from asd.data.names import ClipNameError, parse_clip_name

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


def ground_truth_parts(value: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(ground-truth folders, evaluation list files) of a comma-separated --ground_truth value."""
    folders, lists = [], []
    for part in (p.strip() for p in str(value).split(",")):
        if not part:
            continue
        path = Path(part)
        if path.is_file():
            lists.append(path)
        elif path.is_dir():
            folders.append(path)
        else:
            raise FileNotFoundError(
                f"{path}: no such ground-truth folder or evaluation list (give a folder of the evaluator's "
                "ground_truth_data/ground_truth_domain CSVs, an eval_data_list_YYYY.csv, or both, comma-separated)"
            )
    return folders, lists


def read_evaluation_list(path: str | os.PathLike) -> dict[tuple[str, str], dict[str, str]]:
    """{(machine_type, section): {anonymised name: original name}} of an eval_data_list_YYYY.csv."""
    path, machine, rows = Path(path), None, {}
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from error
    for line_number, line in enumerate(lines, start=1):
        fields = [f.strip() for f in line.split(",")]
        if fields == [""]:
            continue
        if len(fields) == 1:
            machine = fields[0]
            continue
        if len(fields) != 2 or machine is None:
            raise ValueError(
                f"{path}:{line_number}: expected a machine-type line, then '<anonymised name>,<original name>' rows"
            )
        try:
            anonymised = parse_clip_name(Path(machine, "test", fields[0]))
            original = parse_clip_name(Path(machine, "test", fields[1]))
        except ClipNameError as error:
            raise ValueError(f"{path}:{line_number}: {error}") from error
        if original.label is None or original.section != anonymised.section:
            raise ValueError(
                f"{path}:{line_number}: {fields[1]} must be a labelled name of section {anonymised.section}"
            )
        section = rows.setdefault((machine, anonymised.section), {})
        if fields[0] in section:
            raise ValueError(f"{path}:{line_number}: {machine} {fields[0]} listed twice")
        section[fields[0]] = fields[1]
    if not rows:
        raise ValueError(f"{path}: no '<anonymised name>,<original name>' rows (an eval_data_list_YYYY.csv?)")
    return rows


def refuse_rows_without_clips(
    table: dict, seen: set, lists: Callable[[tuple, dict, str], str], tail: str
) -> None:
    """ValueError naming the first row of ``table`` ({(machine, section): {name: row}}) whose clip is not in
    ``seen`` ((key, name) pairs), with how many such rows there are; ``lists`` says who lists it."""
    for key, rows in table.items():
        missing = sorted(name for name in rows if (key, name) not in seen)
        if missing:
            raise ValueError(
                f"{lists(key, rows, missing[0])} ({len(missing)} rows in all) but no such "
                f"{key[0]} section {key[1]} test clip {tail}"
            )


def apply_evaluation_list(records: Sequence, path: str | os.PathLike) -> list:
    """The ``records`` with label, domain and attributes from their original names in the evaluation list.

    Sections the list does not cover keep their records as they are; within a covered section every
    test clip needs a row and every row a clip (a ValueError names the list and the clip)."""
    table = read_evaluation_list(path)
    present = {(r.machine_type, r.section) for r in records if r.split == "test"}
    table = {key: rows for key, rows in table.items() if key in present}
    out, seen = [], set()
    for record in records:
        key, name = (record.machine_type, record.section), Path(record.path).name
        if record.split != "test" or key not in table:
            out.append(record)
            continue
        if name not in table[key]:
            raise ValueError(f"{record.path}: no row for {record.machine_type} {name} in {path}")
        original = parse_clip_name(Path(record.machine_type, "test", table[key][name]))
        fields = {"label": original.label, "domain": original.domain, "attributes": original.attributes}
        out.append(dataclasses.replace(record, **fields))
        seen.add((key, name))
    refuse_rows_without_clips(table, seen, lambda key, rows, name: f"{path} lists {key[0]} {name}", "is here")
    return out


def apply_ground_truth(records: Sequence, value: str | os.PathLike) -> list:
    """The test ``records`` labelled by every part of a --ground_truth ``value`` (ground_truth_parts):
    evaluation lists first, then ground-truth folders (which must agree with a list's labels)."""
    folders, lists = ground_truth_parts(value)
    for path in lists:
        records = apply_evaluation_list(records, path)
    for folder in folders:
        records = apply_truth_folder(records, folder)
    return records


def apply_truth_folder(records: Sequence, folder: str | os.PathLike) -> list:
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
        label, domain, data_file = truth[key][name]
        if record.label is not None and (record.label, record.domain) != (label, domain):
            raise ValueError(
                f"{record.path}: {data_file} says {label}/{domain}, the clip's name or evaluation list "
                f"{record.label}/{record.domain}"
            )
        out.append(dataclasses.replace(record, label=label, domain=domain))
        seen.add((key, name))
    refuse_rows_without_clips(
        truth, seen, lambda key, rows, name: f"{rows[name][2]} lists {name}", "was scored"
    )
    return out
