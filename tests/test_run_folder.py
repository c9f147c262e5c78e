"""What a run folder promises: one run per list of distinct folders and seeds, refused before anything
is created; a lock every writer takes; paths inside it that still work after the folder moves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import run_all
import train
from asd.base import locks
from asd.run import pipeline
from asd.run.steps import split_step_overrides
from helpers import extract_args

ROOT = Path(__file__).resolve().parents[1]


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


# ----------------------------------------------------------------------------- the lock


def _hold_in_child(path, env) -> subprocess.CompletedProcess:
    code = (
        f"from asd.base.locks import hold_run_folder_lock; hold_run_folder_lock([{str(path)!r}], 'child.py')"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_script_run_by_hand_into_a_locked_run_folder_stops_naming_the_holder(tmp_path):
    import train_deepSVDD

    run_dir = tmp_path / "runs" / "data-12345678"
    code = (
        "import time; from pathlib import Path; from asd.base.locks import run_folder_lock\n"
        f"with run_folder_lock(Path({str(run_dir)!r})):\n    print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        svdd_dir = run_dir / "svdd_models_per_type"
        with pytest.raises(
            SystemExit, match=f"train_deepSVDD.py: error: {run_dir} is in use by run_all.py pid"
        ):
            train_deepSVDD.main(["--embed_dir", str(run_dir), "--svdd_dir", str(svdd_dir)])
        assert not svdd_dir.exists()
        blocked = _hold_in_child(run_dir / "results" / "x", {**os.environ, locks.TOKEN_ENV: "not-the-holder"})
        assert blocked.returncode == 1 and f"child.py: error: {run_dir} is in use" in blocked.stderr
    finally:
        holder.kill()
        holder.wait()
    assert _hold_in_child(run_dir / "results", dict(os.environ)).returncode == 0  # free once it is gone


def test_a_step_run_all_starts_writes_under_run_all_s_lock(tmp_path):
    run_dir = tmp_path / "runs" / "data-12345678"
    without_token = {k: v for k, v in os.environ.items() if k != locks.TOKEN_ENV}
    with locks.run_folder_lock(run_dir):
        assert _hold_in_child(run_dir / "best_encoder_model.pth", dict(os.environ)).returncode == 0
        assert _hold_in_child(run_dir / "best_encoder_model.pth", without_token).returncode == 1
        nested = run_dir / "dev_data" / "results"  # several data folders: one folder further down
        assert _hold_in_child(nested, dict(os.environ)).returncode == 0
    assert locks.TOKEN_ENV not in os.environ
    assert (
        _hold_in_child(tmp_path / "elsewhere" / "model.pth", without_token).returncode == 0
    )  # no run folder


# ----------------------------------------------------------------------------- ground truth, checked first


@pytest.mark.parametrize("problem", ["empty", "no_partner", "bad_row"])
def test_a_bad_ground_truth_folder_stops_the_run_before_the_first_step(
    tiny_demo_dir, tmp_path, no_pipeline, problem
):
    truth = tmp_path / "truth"
    (truth / "ground_truth_data").mkdir(parents=True)
    (truth / "ground_truth_domain").mkdir()
    name = "ground_truth_fan_section_00_test.csv"
    if problem != "empty":
        (truth / "ground_truth_data" / name).write_text(
            "a.wav,1\n" if problem == "no_partner" else "a.wav,2\n"
        )
    if problem == "bad_row":
        (truth / "ground_truth_domain" / name).write_text("a.wav,0\n")
    expected = {"empty": "no ground_truth_data", "no_partner": "has no partner", "bad_row": "expected"}[
        problem
    ]
    runs = tmp_path / "runs"
    argv = ["--data_dir", str(tiny_demo_dir), "--runs_dir", str(runs), "--ground_truth", str(truth)]
    with pytest.raises(
        SystemExit, match=f"run_all.py: error: evaluate_deepSVDD: GROUND_TRUTH: {truth}.*{expected}"
    ):
        run_all.main(argv)
    assert not no_pipeline and not runs.exists()
    (truth / "ground_truth_data" / name).write_text("a.wav,1\n")  # a good folder passes the check
    (truth / "ground_truth_domain" / name).write_text("a.wav,0\n")
    overrides = split_step_overrides([])[1]
    assert run_all.plan(run_all.parse_config(vars(run_all), argv), overrides)


# ----------------------------------------------------------------------------- a run folder moved


def test_a_moved_run_folder_scores_and_evaluates_on_its_own(tmp_path):
    import shutil

    import evaluate
    import extract_embeddings
    import make_demo_data
    import score_clips
    from asd.embed.embedding_files import read_feature_file

    data = make_demo_data.main(
        ["--out_dir", str(tmp_path / "data"), "--machine_types", "fan", "--clip_seconds", "2"]
        + ["--source_train", "6", "--target_train", "2", "--test_normal", "3", "--test_anomaly", "3"]
        + ["--progress", "false"]
    )
    run, cache = tmp_path / "runs" / "data-12345678", str(tmp_path / "cache")
    model = run / "best_encoder_model.pth"
    with locks.run_folder_lock(run):  # as run_all: its steps write under its lock
        train.main(
            ["--data_dir", str(data), "--model_size", "tiny", "--epochs", "1", "--batch_size", "8"]
            + [
                "--target_frames",
                "0",
                "--clip_seconds",
                "whole",
                "--mixup",
                "batch_fbank",
                "--lora_rank",
                "2",
            ]
            + ["--num_workers", "0", "--feature_cache", cache, "--output", str(model)]
            + ["--last_checkpoint", str(run / "last_encoder_model.pth")]
        )
        extract_embeddings.main(extract_args(data, model, run, cache))
        evaluate.main(["--embed_dir", str(run), "--results_dir", str(run / "results" / "ensemble")])
    assert read_feature_file(run / "normal_embeddings.pt")["fingerprint"]["model_path"] == model.name
    moved = tmp_path / "elsewhere" / "copy"
    moved.parent.mkdir()
    shutil.move(run, moved)
    assert not run.exists()
    clip = sorted((data / "fan" / "test").glob("*.wav"))[0]
    rows = score_clips.main(
        ["--run", str(moved), "--machine_type", "fan", "--section", "00", "--output", str(tmp_path / "s.csv")]
        + [str(clip)]
    )
    assert len(rows) == 1
    summary = evaluate.main(
        ["--embed_dir", str(moved), "--results_dir", str(tmp_path / "again"), "--plots", "false"]
    )
    assert summary["sections"]
