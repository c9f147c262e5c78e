"""The evaluation list (eval_data_list_YYYY.csv) as ground truth: label, domain and attributes of the
anonymised evaluation test clips, alone or beside the evaluator's ground-truth folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from asd.data.ground_truth import apply_ground_truth, ground_truth_parts, read_evaluation_list
from asd.data.names import parse_clip_name

LIST = Path(__file__).resolve().parent / "fixtures" / "asdkit_fixture" / "labels" / "eval_data_list_2023.csv"


def _anonymised(machine: str = "bandsaw") -> tuple[list, dict[str, str]]:
    rows = read_evaluation_list(LIST)[(machine, "00")]
    return [parse_clip_name(Path("/eval", machine, "test", name)) for name in sorted(rows)], rows


def test_the_list_names_each_anonymised_clip_by_its_original_name():
    records, rows = _anonymised()
    labelled = apply_ground_truth(records, str(LIST))
    assert [r.path for r in labelled] == [r.path for r in records]  # submission CSVs keep anonymised names
    for record in labelled:
        original = parse_clip_name(Path("bandsaw", "test", rows[record.file_name]))
        assert (record.label, record.domain, record.attributes) == (
            original.label,
            original.domain,
            original.attributes,
        )
    assert {r.label for r in labelled} == {"normal", "anomaly"}


def test_list_and_folder_together_must_agree(tmp_path):
    records, rows = _anonymised()
    truth = tmp_path / "truth"
    for kind, value in (
        ("data", lambda o: int(o.label == "anomaly")),
        ("domain", lambda o: int(o.domain == "target")),
    ):
        (truth / f"ground_truth_{kind}").mkdir(parents=True)
        lines = [f"{a},{value(parse_clip_name(Path('bandsaw', 'test', o)))}" for a, o in rows.items()]
        (truth / f"ground_truth_{kind}" / "ground_truth_bandsaw_section_00_test.csv").write_text(
            "\n".join(lines)
        )
    assert ground_truth_parts(f"{LIST},{truth}") == ([truth], [LIST])
    both = apply_ground_truth(records, f"{LIST},{truth}")
    assert both == apply_ground_truth(records, str(LIST))
    data = truth / "ground_truth_data" / "ground_truth_bandsaw_section_00_test.csv"
    first, label = data.read_text().splitlines()[0].split(",")
    data.write_text(data.read_text().replace(f"{first},{label}", f"{first},{1 - int(label)}", 1))
    with pytest.raises(ValueError, match=first):
        apply_ground_truth(records, f"{LIST},{truth}")


def test_a_clip_missing_from_the_list_or_a_listed_clip_missing_is_named(tmp_path):
    records, _ = _anonymised()
    with pytest.raises(ValueError, match=r"lists bandsaw .* no such bandsaw section 00 test clip"):
        apply_ground_truth(records[1:], str(LIST))
    stray = parse_clip_name(Path("/eval", "bandsaw", "test", "section_00_9999.wav"))
    with pytest.raises(ValueError, match="no row for bandsaw section_00_9999.wav"):
        apply_ground_truth(records + [stray], str(LIST))
    with pytest.raises(FileNotFoundError, match="no such ground-truth folder or evaluation list"):
        ground_truth_parts(str(tmp_path / "nothing.csv"))
