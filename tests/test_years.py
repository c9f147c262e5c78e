"""The DCASE years table (asd/base/years.py): detection from clip names and machine types, never folder names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import evaluate
import evaluate_deepSVDD
from asd.base.years import RULE_SETS, YEARS, detect_year
from asd.data.names import parse_clip_name

LABELS = Path(__file__).resolve().parent / "fixtures" / "asdkit_fixture" / "labels"


def _records(year: str, machines: set[str] | None = None, folder: str = "dev_data") -> list:
    names = json.loads((LABELS / f"dcase{year}_main.json").read_text())["path2idx_dict"]
    return [
        parse_clip_name(Path(folder, *Path(p).parts[-3:]))
        for p in names
        if machines is None or Path(p).parts[-3] in machines
    ]


@pytest.mark.parametrize("year", ["2023", "2024"])
def test_every_name_of_asdkits_label_files_gives_its_year(year):
    """Development, evaluation and both sets of the year, in a folder whose name says nothing (or lies)."""
    entry = YEARS[year]
    for machines in (set(entry.dev_machine_types), set(entry.eval_machine_types), None):
        found = detect_year(_records(year, machines, folder="dcase2020_dev"))
        assert (found.year, found.rules, found.clip_seconds) == (year, "2022+", entry.clip_seconds)


def test_table_agrees_with_asdkits_label_files():
    for year in ("2023", "2024"):
        records = _records(year)
        entry = YEARS[year]
        assert {r.machine_type for r in records} == set(entry.machine_types)
        for record in records:
            assert entry.name_fits(Path(record.path).stem), record.path
            if record.machine_type in entry.attribute_keys:
                assert tuple(k for k, _ in record.attributes) == entry.attribute_keys[record.machine_type]


def test_ambiguous_names_give_no_year_and_the_longest_clip():
    toycar = detect_year(_records("2023", {"ToyCar"}))  # ToyCar's names are the same in 2023 and 2024
    assert toycar.year is None and set(toycar.candidates) == {"2023", "2024"}
    assert toycar.rules == "2022+" and toycar.clip_seconds is None


def test_2020_2021_and_unknown_data(samples_dir, tmp_path):
    from asd.data.dataset import discover_clips

    found = detect_year(discover_clips(samples_dir / "dcase2020_dev"))
    assert (found.year, found.rules, found.clip_seconds) == ("2020", "2020", None)
    pump = [
        parse_clip_name(tmp_path / "pump" / "train" / f"section_0{s}_source_train_normal_0000_a.wav")
        for s in "012"
    ]
    assert detect_year(pump).year == "2021"  # pump and section names: 2021 alone
    demo = [parse_clip_name(tmp_path / "fan" / "train" / "section_00_source_train_normal_0000_vel_6.wav")]
    (tmp_path / "fan").mkdir(exist_ok=True)
    (tmp_path / "fan" / "attributes_00.csv").write_text("file_name,d1p,d1v\n")
    assert detect_year(demo, [tmp_path]).rules == "2022+"
    two_mics = [
        parse_clip_name(
            tmp_path / "x" / "train" / "section_00_source_train_normal_0000_vel_6_mic_2_mic_1.wav"
        )
    ]
    assert detect_year(two_mics).year == "2026"


def test_dcase_year_limits_equal_the_tables_rules():
    """evaluate.py's and evaluate_deepSVDD.py's _LIMITS stay literals (asd/base/cli.py reads them) but equal the table."""
    for script in (evaluate, evaluate_deepSVDD):
        assert script._LIMITS["DCASE_YEAR"] == ("auto", *RULE_SETS)
    assert {entry.rules for entry in YEARS.values()} == set(RULE_SETS)
