"""Classes of the auxiliary task over real DCASE 2023 / 2024 names: ASDKit's partition and scale, with the
evaluation list naming the anonymised evaluation test clips, and no phantom class without it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from asd.data.ground_truth import read_evaluation_list
from asd.model.heads import SCAdaCosHead
from asd.train import training

LABELS = Path(__file__).resolve().parent / "fixtures" / "asdkit_fixture" / "labels"


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict:
    """Both years' trees, made once (some 36,000 empty files)."""
    return {year: _tree(tmp_path_factory.mktemp("labels"), year) for year in ("2023", "2024")}


def _tree(tmp_path: Path, year: str) -> tuple[Path, dict[str, int], dict]:
    """Empty clip files under every name of ASDKit's label file, the evaluation test clips under their
    anonymised names -> (folder, {path here: ASDKit class index}, the label file)."""
    labels = json.loads((LABELS / f"dcase{year}_main.json").read_text())
    anonymised = {
        (machine, original): name
        for (machine, _), rows in read_evaluation_list(LABELS / f"eval_data_list_{year}.csv").items()
        for name, original in rows.items()
    }
    root, expected = tmp_path / year, {}
    for path, index in labels["path2idx_dict"].items():
        machine, split, name = Path(path).parts[-3:]
        name = anonymised.get((machine, name), name) if split == "test" else name
        target = root / machine / split / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
        expected[str(target)] = index
    return root, expected, labels


def _cfg(root: Path, eval_list: str, classes_from: str = "train_test") -> SimpleNamespace:
    return SimpleNamespace(
        data_dir=str(root),
        machine_types=[],
        channels="near",
        classes_from=classes_from,
        label="attributes_domain",
        eval_list=eval_list,
    )


@pytest.mark.parametrize("year", ["2023", "2024"])
def test_class_index_gives_asdkits_partition_with_the_evaluation_list(trees, year, capsys):
    root, expected, labels = trees[year]
    eval_list = str(LABELS / f"eval_data_list_{year}.csv")
    cfg = _cfg(root, eval_list)
    train = training.training_records(cfg)
    index = training.class_index(cfg, train, show=True)
    assert len(index) == labels["num_class"]
    tests = len(expected) - len(train)
    assert f"{tests} of {tests} test clips counted" in capsys.readouterr().out
    records = train + training.test_records(cfg)
    assert {r.path for r in records} == set(expected)
    ours_to_theirs: dict[int, set[int]] = {}
    for record in records:
        ours_to_theirs.setdefault(index.index(record), set()).add(expected[record.path])
    assert all(len(theirs) == 1 for theirs in ours_to_theirs.values())  # same groups as path2idx_dict
    assert len(set().union(*ours_to_theirs.values())) == labels["num_class"]
    head = SCAdaCosHead(8, len(index), sub_clusters=16, dynamic=False)
    assert float(head.scale) == pytest.approx(math.sqrt(2) * math.log(16 * labels["num_class"] - 1))
    assert len(training.class_index(_cfg(root, eval_list, "train"), train)) == labels["num_class_train"]


def test_anonymised_names_add_no_class_without_the_evaluation_list(trees, capsys):
    root, _, _ = trees["2023"]
    with_list = _cfg(root, str(LABELS / "eval_data_list_2023.csv"))
    train = training.training_records(with_list)
    without = training.class_index(_cfg(root, ""), train, show=True)
    note = capsys.readouterr().out
    labelled_tests = [r for r in training.test_records(_cfg(root, "")) if r.label is not None]
    only_train_and_dev = training.class_index(_cfg(root, "", "train"), train + labelled_tests)
    assert without == only_train_and_dev  # the 1400 anonymised evaluation names add 0 classes
    assert "1400 unlabelled (anonymised) test clips add no class" in note
    assert len(without) < len(training.class_index(with_list, train))
