"""What a run folder promises: one run per list of distinct folders and seeds, refused before anything
is created; a lock every writer takes; paths inside it that still work after the folder moves."""

from __future__ import annotations

import pytest

import run_all
import train
from asd import pipeline


@pytest.fixture
def no_pipeline(monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *args, **kwargs: calls.append(args) or [])
    return calls


@pytest.mark.parametrize(
    "spelling, message",
    [
        ("{a},{a}", "twice"),
        ("{a},{a}/", "twice"),
        ("{a},{link}", "twice"),
        ("{a}/../{name},{a}", "twice"),
        (",,", "empty folder name"),
        ("{a},,{b}", "empty folder name"),
        ("{a},", "empty folder name"),
    ],
)
def test_a_folder_list_with_a_repeat_or_a_gap_is_refused_before_anything_is_created(
    tmp_path, no_pipeline, spelling, message
):
    a, b = tmp_path / "data" / "a", tmp_path / "data" / "b"
    a.mkdir(parents=True)
    b.mkdir()
    (tmp_path / "data" / "link").symlink_to(a)
    value = spelling.format(a=a, b=b, link=tmp_path / "data" / "link", name="a")
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit, match=f"run_all.py: error: .*{message}"):
        run_all.main(["--data_dir", value, "--runs_dir", str(runs)])
    assert not no_pipeline and not runs.exists()
    output = tmp_path / "out" / "model.pth"
    with pytest.raises(ValueError, match=message):  # train.py: before it reads any clip or writes
        train.main(["--data_dir", value, "--output", str(output)])
    assert not output.parent.exists()


def test_distinct_folders_pass(tmp_path, no_pipeline):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "fan" / "train").mkdir(parents=True)
    cfg = run_all.parse_config(vars(run_all), ["--data_dir", f"{a},{b}/"])
    assert run_all.choose_data_dirs(cfg) == ([a, b], False)


def test_a_seed_named_twice_is_refused_before_anything_is_created(tiny_demo_dir, tmp_path, no_pipeline):
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit, match="run_all.py: error: SEEDS 0,1,0 names seed 0 twice"):
        run_all.main(["--data_dir", str(tiny_demo_dir), "--runs_dir", str(runs), "--seeds", "0,1,0"])
    assert not no_pipeline and not runs.exists()
