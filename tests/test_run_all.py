"""The pipeline runner: skipping, rebuilding and stopping, on fake steps that only write files."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import run_all
from asd.base import locks
from asd.base.imports import PROJECT_DIR, local_sources
from asd.report import seeds
from asd.run import pipeline
from asd.run.pipeline import Step, StepFailed, run_pipeline
from asd.run.steps import STEP_NAMES, has_test_split, run_folder, split_step_overrides


def _writer(out: Path, text: str = "x", inputs: list[Path] | None = None) -> list[str]:
    """A command that copies its inputs' content (or a text) into ``out``."""
    code = (
        "import sys, pathlib; out = pathlib.Path(sys.argv[1]); "
        "parts = [pathlib.Path(p).read_text() for p in sys.argv[3:]]; "
        "out.write_text(sys.argv[2] + ''.join(parts)); print('wrote', out)"
    )
    return [sys.executable, "-c", code, str(out), text, *[str(p) for p in inputs or []]]


@pytest.fixture
def chain(tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("data")
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    steps = [
        Step("first", _writer(first, "1", [source]), inputs=[source], outputs=[first]),
        Step("second", _writer(second, "2", [first]), inputs=[first], outputs=[second]),
    ]
    return steps, source, first, second, tmp_path / "stamps"


def test_first_run_runs_every_step_and_writes_outputs(chain):
    steps, _, first, second, stamps = chain
    assert run_pipeline(steps, stamps) == ["first", "second"]
    assert first.read_text() == "1data"
    assert second.read_text() == "21data"


def test_up_to_date_steps_are_skipped(chain, capsys):
    steps, _, first, second, stamps = chain
    run_pipeline(steps, stamps)
    assert run_pipeline(steps, stamps) == []
    assert "up to date, skipped" in capsys.readouterr().out


def test_missing_output_is_rebuilt_and_later_steps_follow_changed_inputs(chain):
    steps, _, first, second, stamps = chain
    run_pipeline(steps, stamps)
    second.unlink()
    assert run_pipeline(steps, stamps) == ["second"]
    first.unlink()
    # 'first' is rebuilt with the same content: 'second' (keyed by content, not mtime) stays up to date
    assert run_pipeline(steps, stamps) == ["first"]


def test_changed_input_or_command_reruns(chain):
    steps, source, first, second, stamps = chain
    run_pipeline(steps, stamps)
    source.write_text("new data, other size")
    assert run_pipeline(steps, stamps) == ["first", "second"]
    assert second.read_text() == "21new data, other size"
    steps[1].command = _writer(second, "3", [first])
    assert run_pipeline(steps, stamps) == ["second"]


def test_force_reruns_everything(chain):
    steps, *_, stamps = chain
    run_pipeline(steps, stamps)
    assert run_pipeline(steps, stamps, force=True) == ["first", "second"]


def test_failing_step_stops_the_run_with_its_message(tmp_path):
    never = tmp_path / "never.txt"
    failing = [
        sys.executable,
        "-c",
        "import sys; print('loading clips'); sys.exit('bad wav: dev_data/fan/x.wav is empty')",
    ]
    steps = [
        Step("broken", failing, outputs=[tmp_path / "broken.txt"]),
        Step("after", _writer(never), outputs=[never]),
    ]
    with pytest.raises(StepFailed) as error:
        run_pipeline(steps, tmp_path / "stamps")
    message = str(error.value)
    assert "step 'broken' failed (exit 1)" in message
    assert "bad wav: dev_data/fan/x.wav is empty" in message
    assert not never.exists()
    assert not (tmp_path / "stamps" / "broken.json").exists()


def test_step_that_forgets_its_output_fails(tmp_path):
    steps = [Step("lazy", [sys.executable, "-c", "pass"], outputs=[tmp_path / "model.pth"])]
    with pytest.raises(StepFailed, match="did not write"):
        run_pipeline(steps, tmp_path / "stamps")


def test_always_run_steps_are_never_skipped(tmp_path):
    steps = [Step("check", [sys.executable, "-c", "print('ok')"], always_run=True)]
    assert run_pipeline(steps, tmp_path / "s") == ["check"]
    assert run_pipeline(steps, tmp_path / "s") == ["check"]


def test_editing_an_imported_project_module_reruns_the_step(tmp_path):
    (tmp_path / "helper.py").write_text("VALUE = 1\n")
    (tmp_path / "step.py").write_text(
        "import sys\nfrom helper import VALUE\nopen(sys.argv[1], 'w').write(str(VALUE))\n"
    )
    out = tmp_path / "out.txt"
    steps = [Step("step", [sys.executable, str(tmp_path / "step.py"), str(out)], outputs=[out])]
    assert run_pipeline(steps, tmp_path / "stamps") == ["step"]
    assert run_pipeline(steps, tmp_path / "stamps") == []
    (tmp_path / "helper.py").write_text("VALUE = 2\n")
    assert run_pipeline(steps, tmp_path / "stamps") == ["step"]
    assert out.read_text() == "2"


def test_train_step_depends_on_the_model_code():
    sources = {p.name for p in local_sources(PROJECT_DIR / "train.py")}
    assert {"train.py", "model.py", "dataset.py", "preprocessing.py", "cli.py"} <= sources
    assert "evaluate.py" not in sources


def test_step_words_reach_the_named_script_only():
    own, overrides = split_step_overrides(
        ["--force", "true", "train.epochs=3", "evaluate.py.k=5", "train.learning_rate=1e-3"]
    )
    assert own == ["--force", "true"]
    assert overrides["train"] == ["--epochs", "3", "--learning_rate", "1e-3"]
    assert overrides["evaluate"] == ["--k", "5"] and overrides["datashape"] == []
    with pytest.raises(SystemExit, match="unknown script 'trian'"):
        split_step_overrides(["trian.epochs=3"])


def test_split_accepts_script_names():
    _, overrides = split_step_overrides(["make_demo_data.seed=1", "make_demo_data.py.clip_seconds=2"])
    assert overrides["make_demo_data"] == ["--seed", "1", "--clip_seconds", "2"]


# -----------------------------------------------------------------------------
# the command line is checked before any state is touched


@pytest.fixture
def no_pipeline(monkeypatch):
    """run_all.main with run_pipeline replaced by a recorder (no step runs)."""
    calls = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *args, **kwargs: calls.append(args) or [])
    return calls


def test_a_data_dir_that_does_not_exist_is_an_error_naming_it(tmp_path, no_pipeline):
    typo = tmp_path / "dcase2023" / "dev_dta"
    with pytest.raises(SystemExit, match=f"--data_dir {typo}: no such folder"):
        run_all.main(["--data_dir", str(typo), "--runs_dir", str(tmp_path / "runs")])
    assert not no_pipeline and not (tmp_path / "runs").exists()


def test_the_demo_runs_only_when_no_data_folder_is_asked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = run_all.parse_config(vars(run_all), [])
    assert run_all.choose_data_dirs(cfg) == ([tmp_path / "demo_data"], True)
    (tmp_path / "dev_data").mkdir()
    assert run_all.choose_data_dirs(cfg) == ([tmp_path / "dev_data"], False)
    cfg = run_all.parse_config(vars(run_all), ["--data_dir", str(tmp_path / "dev_data")])
    assert run_all.choose_data_dirs(cfg) == ([tmp_path / "dev_data"], False)


@pytest.mark.parametrize(
    "words, message",
    [
        (["train.epoch=3"], "unrecognized arguments: --epoch 3"),
        (["train.epochs=0"], "train.py: error: --epochs must be >= 1, got 0"),
        (["evaluate.k=0"], "evaluate.py: error: --k must be >= 1, got 0"),
        (["make_demo_data.seed=1"], "make_demo_data, which this run does not use"),
        (["--force", "maybe"], "--force: expected true/false"),
        (["train.target_frames=8"], "TARGET_FRAMES 8: must be 0 (whole clips) or at least 16 frames"),
        (["train.clip_seconds=whole"], "MIXUP sample_wave mixes equal-length waveforms"),
        (["--data_dir", "elsewhere"], "--data_dir given 2 times: give several folders comma-separated"),
    ],
)
def test_bad_options_stop_the_run_before_any_stamp_is_touched(
    tiny_demo_dir, tmp_path, no_pipeline, capsys, words, message
):
    run_dir = run_folder(tmp_path / "runs", tiny_demo_dir)
    stamp = run_dir / ".stamps" / "train.json"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        run_all.main(["--data_dir", str(tiny_demo_dir), "--runs_dir", str(tmp_path / "runs"), *words])
    assert message in str(exit_info.value.code) + capsys.readouterr().err
    assert not no_pipeline and stamp.read_text() == "{}"


def test_run_folders_are_keyed_by_the_full_path(tmp_path, monkeypatch):
    one, other = tmp_path / "a" / "dev_data", tmp_path / "b" / "dev_data"
    folder = run_folder("runs", one)
    assert folder.parent == Path("runs") and folder.name.startswith("dev_data-") and len(folder.name) == 17
    assert run_folder("runs", other) != folder
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert run_folder("runs", Path("dev_data")) == folder


def test_no_stale_table_or_temp_file_survives_a_new_run(tiny_demo_dir, tmp_path, monkeypatch):
    run_dir = run_folder(tmp_path / "runs", tiny_demo_dir)
    (run_dir / "results").mkdir(parents=True)
    old_table, temp = run_dir / "results" / "comparison.csv", run_dir / ".best_encoder_model.pth.x1y2.tmp"
    old_table.write_text("old results\n")
    temp.write_text("half a model")

    def failing(*args, **kwargs):
        raise StepFailed("step 'train' failed")

    monkeypatch.setattr(pipeline, "run_pipeline", failing)
    assert run_all.main(["--data_dir", str(tiny_demo_dir), "--runs_dir", str(tmp_path / "runs")]) == 1
    assert not old_table.exists() and not temp.exists()


# -----------------------------------------------------------------------------
# what reruns a step


def test_only_clips_and_attributes_retrain_the_encoder(tiny_demo_dir, tmp_path):
    import shutil

    data = shutil.copytree(tiny_demo_dir, tmp_path / "data")
    cfg = run_all.parse_config(vars(run_all), ["--data_dir", str(data)])
    steps = {
        s.name: s
        for s in run_all.build_steps(cfg, [data], tmp_path / "run", False, {n: [] for n in STEP_NAMES})
    }

    def signatures():
        return {name: pipeline.step_signature(steps[name]) for name in ("train", "extract_embeddings")}

    before = signatures()
    (data / "notes.txt").write_text("recorded on a Tuesday")
    (data / "fan" / "README.md").write_text("fan notes")
    assert signatures() == before
    test_clip = next((data / "fan" / "test").glob("*.wav"))
    shutil.copy(test_clip, test_clip.with_name("section_00_source_test_normal_0099_extra.wav"))
    after_test_clip = signatures()
    # train.py's default CLASSES_FROM train_test builds its classes from labelled test names
    assert after_test_clip["train"] != before["train"]
    assert after_test_clip["extract_embeddings"] != before["extract_embeddings"]
    train_clip = next((data / "fan" / "train").glob("*.wav"))
    shutil.copy(train_clip, train_clip.with_name("section_00_source_train_normal_0099_extra.WAV"))
    after_train_clip = signatures()
    assert after_train_clip["train"] != after_test_clip["train"]
    (data / "fan" / "attributes_00.csv").write_text("file_name,d1p,d1v\n")
    assert signatures()["train"] != after_train_clip["train"]


def _torch_writer(out: Path) -> list[str]:
    return [sys.executable, "-c", f"import torch; torch.save({{'w': torch.ones(64)}}, {str(out)!r})"]


def test_an_output_that_cannot_be_read_reruns_its_step(tmp_path, capsys):
    model, svdd = tmp_path / "model.pt", tmp_path / "svdd"
    svdd_writer = [
        sys.executable,
        "-c",
        f"import pathlib; d = pathlib.Path({str(svdd)!r}); d.mkdir(exist_ok=True); "
        f"(d / 'deepsvdd_fan.joblib').write_bytes(b'x' * 100)",
    ]
    steps = [
        Step("train", _torch_writer(model), outputs=[model]),
        Step("svdd", svdd_writer, inputs=[model], outputs=[svdd]),
    ]
    stamps = tmp_path / "stamps"
    assert run_pipeline(steps, stamps) == ["train", "svdd"]
    assert run_pipeline(steps, stamps) == []
    model.write_bytes(model.read_bytes()[:100])  # truncated by hand or a full disk
    assert pipeline.unreadable(model).startswith(f"{model} cannot be read")
    assert run_pipeline(steps, stamps) == ["train"]  # rewritten as it was: svdd's input is unchanged
    joblib = svdd / "deepsvdd_fan.joblib"
    joblib.write_bytes(joblib.read_bytes()[:10])  # a format not checked by content
    assert run_pipeline(steps, stamps) == ["svdd"]
    assert "outputs changed since it ran" in capsys.readouterr().out
    joblib.write_bytes(b"")
    assert pipeline.unreadable(svdd) == f"{joblib} is empty"
    (tmp_path / "bad.json").write_text('{"cut')
    assert "cannot be read" in pipeline.unreadable(tmp_path / "bad.json")


def test_a_step_that_writes_an_unreadable_output_fails(tmp_path):
    out = tmp_path / "summary.json"
    steps = [Step("evaluate", [sys.executable, "-c", f"open({str(out)!r}, 'w').write('{{')"], outputs=[out])]
    with pytest.raises(StepFailed, match="summary.json cannot be read"):
        run_pipeline(steps, tmp_path / "stamps")


# -----------------------------------------------------------------------------
# a step gets only what the user set (issue 16); runs that never wedge (issue 19)


def _plan(argv: list[str], overrides: list[str] = ()) -> list:
    cfg = run_all.parse_config(vars(run_all), argv)
    return run_all.plan(cfg, split_step_overrides(list(overrides))[1])


def _commands(steps) -> dict[str, list[str]]:
    return {step.name: step.command[2:] for step in steps}


def test_steps_get_only_what_the_user_set(tiny_demo_dir, tmp_path):
    [(_, steps)] = _plan(["--data_dir", str(tiny_demo_dir), "--runs_dir", str(tmp_path)])
    for name, words in _commands(steps).items():
        assert not {"--eat_checkpoint", "--device", "--model_size", "--recipe", "--seed"} & set(words), name
    [(_, steps)] = _plan(["--data_dir", str(tiny_demo_dir), "--runs_dir", str(tmp_path), "--device", "cpu"])
    commands = _commands(steps)
    assert commands["train"][commands["train"].index("--device") + 1] == "cpu"
    assert "--device" in commands["extract_embeddings"] and "--device" not in commands["evaluate"]


def _edit_constant(path: Path, name: str, value: str) -> None:
    """Set a constant at the top of a script as a user would, whatever its layout."""
    import ast

    text = path.read_text()
    node = next(
        n
        for n in ast.parse(text).body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == name
    )
    lines = text.splitlines(keepends=True)
    lines[node.lineno - 1 : node.end_lineno] = [f"{name} = {value}\n"]
    path.write_text("".join(lines))


def test_eat_checkpoint_edited_at_the_top_of_train_py_is_what_the_run_loads(tiny_demo_dir, tmp_path):
    import shutil

    from eat_checkpoint_support import write_eat_checkpoint

    scripts = tmp_path / "project"
    shutil.copytree(PROJECT_DIR, scripts, ignore=shutil.ignore_patterns(".*", "runs", "tests", "cache"))
    checkpoint = tmp_path / "my_eat"
    write_eat_checkpoint(checkpoint)
    _edit_constant(scripts / "train.py", "EAT_CHECKPOINT", repr(str(checkpoint)))
    cfg = run_all.parse_config(vars(run_all), ["--data_dir", str(tiny_demo_dir)])
    overrides = split_step_overrides([])[1]
    steps = run_all.build_steps(cfg, [tiny_demo_dir], tmp_path / "run", False, overrides, scripts_dir=scripts)
    settings = pipeline.check_steps(steps, overrides)
    assert settings["train"].eat_checkpoint == str(checkpoint)
    assert settings["train"].sources["eat_checkpoint"] == "top of train.py"
    pipeline.add_checkpoint_input(steps, settings)
    train = next(step for step in steps if step.name == "train")
    assert checkpoint.resolve() in train.inputs and "--eat_checkpoint" not in train.command
    # given to run_all, it wins over the file's constant
    cfg = run_all.parse_config(vars(run_all), ["--data_dir", str(tiny_demo_dir), "--eat_checkpoint", "none"])
    steps = run_all.build_steps(cfg, [tiny_demo_dir], tmp_path / "run", False, overrides, scripts_dir=scripts)
    assert pipeline.check_steps(steps, overrides)["train"].eat_checkpoint is None


def test_epochs_edited_at_the_top_of_train_py_is_what_the_asdkit_recipe_trains(tiny_demo_dir, tmp_path):
    """A recipe repeats no constant of its script: under run_all.py --recipe asdkit-eat-lora (the README's
    real-data command) an EPOCHS edited at the top of train.py is what the train step gets."""
    import shutil

    scripts = tmp_path / "project"
    shutil.copytree(
        PROJECT_DIR, scripts, ignore=shutil.ignore_patterns(".*", "runs", "tests", "cache", "docs")
    )
    overrides = split_step_overrides([])[1]
    cfg = run_all.parse_config(
        vars(run_all), ["--data_dir", str(tiny_demo_dir), "--recipe", "asdkit-eat-lora"]
    )

    def train_settings():
        steps = run_all.build_steps(
            cfg, [tiny_demo_dir], tmp_path / "run", False, overrides, scripts_dir=scripts
        )
        return pipeline.check_steps(steps, overrides)["train"]

    assert train_settings().epochs == 25
    _edit_constant(scripts / "train.py", "EPOCHS", "3")
    edited = train_settings()
    assert (edited.epochs, edited.recipe, edited.sources["epochs"]) == (
        3,
        "asdkit-eat-lora",
        "top of train.py",
    )


def test_a_clip_edited_in_place_with_the_same_size_and_mtime_reruns_its_readers(tiny_demo_dir, tmp_path):
    import os
    import shutil

    data = shutil.copytree(tiny_demo_dir, tmp_path / "data")
    cfg = run_all.parse_config(vars(run_all), ["--data_dir", str(data)])
    steps = run_all.build_steps(cfg, [data], tmp_path / "run", False, split_step_overrides([])[1])
    signature = lambda name: pipeline.step_signature(next(s for s in steps if s.name == name))  # noqa: E731
    before = {name: signature(name) for name in ("train", "extract_embeddings")}
    clip = next((data / "fan" / "test").glob("*.wav"))
    stat = clip.stat()
    content = bytearray(clip.read_bytes())
    content[-1] ^= 0xFF  # one sample's byte: same size
    clip.write_bytes(bytes(content))
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    assert clip.stat().st_size == stat.st_size and clip.stat().st_mtime_ns == stat.st_mtime_ns
    assert signature("train") == before["train"]  # a test clip: training reads only its name
    assert signature("extract_embeddings") != before["extract_embeddings"]


def test_a_rejected_value_never_discards_a_finished_step(tmp_path):
    model = tmp_path / "model.txt"
    good = Step("train", _writer(model, "finished model"), outputs=[model])
    stamps = tmp_path / "stamps"
    assert run_pipeline([good], stamps) == ["train"]
    rejected = Step(
        "train",
        [sys.executable, "-c", "import sys; sys.exit('train.py: error: TARGET_FRAMES 8')"],
        outputs=[model],
    )
    with pytest.raises(StepFailed, match="TARGET_FRAMES 8"):
        run_pipeline([rejected], stamps)
    assert run_pipeline([good], stamps) == []  # the finished model is kept, not retrained
    assert model.read_text() == "finished model"


def test_a_relative_and_an_absolute_data_folder_are_one_run(tiny_demo_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_demo_dir.parent)
    relative = _plan(["--data_dir", tiny_demo_dir.name, "--runs_dir", "runs"])
    monkeypatch.chdir(tmp_path)
    absolute = _plan(["--data_dir", str(tiny_demo_dir), "--runs_dir", str(tiny_demo_dir.parent / "runs")])
    assert relative[0][0] == absolute[0][0]
    assert _commands(relative[0][1]) == _commands(absolute[0][1])


def test_a_second_run_on_the_same_run_folder_stops_naming_the_first(tiny_demo_dir, tmp_path, no_pipeline):
    import os
    import subprocess

    run_dir = run_folder(tmp_path / "runs", tiny_demo_dir)
    code = (
        "import sys, time; from pathlib import Path; from asd.base.locks import run_folder_lock\n"
        f"with run_folder_lock(Path({str(run_dir)!r})):\n    print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=f"in use by run_all.py pid {holder.pid} "):
            run_all.main(["--data_dir", str(tiny_demo_dir), "--runs_dir", str(tmp_path / "runs")])
        assert not no_pipeline
    finally:
        holder.kill()
        holder.wait()
    with locks.run_folder_lock(run_dir):  # free again once its holder is gone
        assert f"pid {os.getpid()} " in (run_dir / locks.LOCK_NAME).read_text()


def test_several_data_folders_train_one_encoder_and_are_scored_each_on_its_own(tiny_demo_dir, tmp_path):
    import shutil

    other = shutil.copytree(tiny_demo_dir, tmp_path / "eval_data")
    [(run_dir, steps)] = _plan(
        ["--data_dir", f"{tiny_demo_dir},{other}", "--runs_dir", str(tmp_path / "runs")]
    )
    assert run_dir == run_folder(tmp_path / "runs", [tiny_demo_dir, other])
    assert run_dir.name.startswith("demo_data+eval_data-")
    commands = _commands(steps)
    assert commands["train"][commands["train"].index("--data_dir") + 1] == f"{tiny_demo_dir},{other}"
    for folder in (tiny_demo_dir, other):
        words = commands[f"extract_embeddings[{folder.name}]"]
        assert words[words.index("--data_dir") + 1] == str(folder)
        assert words[words.index("--embed_dir") + 1] == str(run_dir / folder.name)
        evaluate = commands[f"evaluate[{folder.name}]"]
        assert evaluate[evaluate.index("--results_dir") + 1] == str(
            run_dir / folder.name / "results" / "ensemble"
        )


def test_channels_and_ground_truth_pass_only_when_set(tiny_demo_dir, tmp_path):
    overrides = split_step_overrides([])[1]
    argv = ["--data_dir", str(tiny_demo_dir), "--channels", "far", "--residual_weight", "0.5"]
    cfg = run_all.parse_config(vars(run_all), argv + ["--ground_truth", str(tmp_path)])
    commands = _commands(run_all.build_steps(cfg, [tiny_demo_dir], tmp_path / "run", False, overrides))
    for name in ("train", "extract_embeddings"):
        assert commands[name][-4:] == ["--channels", "far", "--residual_weight", "0.5"]
    assert commands["datashape"][-2:] == ["--channels", "far"]  # mono clips are its problem to report
    for name in ("evaluate", "evaluate_deepSVDD"):
        assert commands[name][-2:] == ["--ground_truth", str(tmp_path)]
    cfg = run_all.parse_config(vars(run_all), ["--data_dir", str(tiny_demo_dir)])
    commands = _commands(run_all.build_steps(cfg, [tiny_demo_dir], tmp_path / "run", False, overrides))
    assert not any({"--channels", "--residual_weight", "--ground_truth"} & set(w) for w in commands.values())


def test_seeds_run_in_their_own_folders_and_are_summed_up_as_mean_and_std(tiny_demo_dir, tmp_path):
    import statistics

    runs = _plan(["--data_dir", str(tiny_demo_dir), "--runs_dir", str(tmp_path), "--seeds", "0,3"])
    assert [run_dir.name.rsplit("-", 1)[1] for run_dir, _ in runs] == ["seed0", "seed3"]
    for (_, steps), seed in zip(runs, ("0", "3")):
        commands = _commands(steps)
        for name in ("train", "train_deepSVDD", "evaluate"):
            assert commands[name][commands[name].index("--seed") + 1] == seed, name
    tables = [
        [{"machine_type": "fan", "scorer": "Deep SVDD", "AUC (source)": auc, "score": score, "label": "x"}]
        for auc, score in ((0.6, 0.5), (0.8, 0.7), (0.7, 0.9))
    ]
    [row] = seeds.mean_std_rows(tables)
    assert row["AUC (source)"] == pytest.approx((0.7, statistics.stdev([0.6, 0.8, 0.7])))
    assert row["score"] == pytest.approx((0.7, statistics.stdev([0.5, 0.7, 0.9])))
    text = seeds.format_mean_std([row], "seeds 0,1,2")
    assert "mean +- standard deviation over 3 seeds" in text and "70.00 +- 10.00" in text
    # run_all's report: one CSV beside the seeds' run folders
    runs = [(tmp_path / f"demo_data-1234abcd-seed{s}", []) for s in (0, 1, 2)]
    run_all.report_seeds([0, 1, 2], runs, [{"results": table} for table in tables])
    written = (tmp_path / "demo_data-1234abcd-seeds.csv").read_text().splitlines()
    assert written[0].startswith("machine_type,scorer,seeds,AUC (source)_mean,AUC (source)_std")
    assert written[1].startswith("fan,Deep SVDD,3,0.700000,0.100000")


def test_a_step_labels_the_values_it_got_from_run_all(tmp_path, capfd, monkeypatch):
    script = tmp_path / "step.py"
    script.write_text(
        "from asd.base.cli import parse_config, print_config\n"
        "# passes\nEPOCHS = 10\n# learning rate\nLEARNING_RATE = 0.1\n"
        "print_config(parse_config(globals()))\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_DIR))
    pipeline.run_step(Step("step", [sys.executable, str(script), "--epochs", "3"]))
    out = capfd.readouterr().out
    assert "EPOCHS        = 3  [run_all.py]" in out and "LEARNING_RATE = 0.1  [top of step.py]" in out


def test_a_step_constant_that_is_not_a_literal_stops_run_all_naming_it(tiny_demo_dir, tmp_path):
    import shutil

    scripts = tmp_path / "project"
    shutil.copytree(PROJECT_DIR, scripts, ignore=shutil.ignore_patterns(".*", "runs", "tests", "cache"))
    _edit_constant(scripts / "train.py", "EPOCHS", "5 * 5")
    cfg = run_all.parse_config(vars(run_all), ["--data_dir", str(tiny_demo_dir)])
    overrides = split_step_overrides([])[1]
    steps = run_all.build_steps(cfg, [tiny_demo_dir], tmp_path / "run", False, overrides, scripts_dir=scripts)
    with pytest.raises(
        SystemExit, match=r"train\.py: constant EPOCHS \(train\.py:\d+\) is not a literal: EPOCHS = 5 \* 5"
    ):
        pipeline.check_steps(steps, overrides)


def _run_in_process(step: Step) -> None:
    """pipeline.run_step without a new interpreter: the step's script runs as __main__ in this process
    (same code and arguments; saves the seconds each subprocess spends importing torch)."""
    import os
    import runpy

    from asd.base.cli import GIVEN_TO_ENV

    saved_argv, saved_env = sys.argv, os.environ.get(GIVEN_TO_ENV)
    sys.argv, os.environ[GIVEN_TO_ENV] = step.command[1:], "run_all.py"
    try:
        runpy.run_path(step.command[1], run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise StepFailed(f"step '{step.name}' failed (exit {stop.code})") from None
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop(GIVEN_TO_ENV, None)
        else:
            os.environ[GIVEN_TO_ENV] = saved_env


def test_the_asdkit_recipe_over_two_seeds_reports_each_back_end(tmp_path, capsys, monkeypatch):
    """run_all --recipe asdkit-eat-lora --seeds 0,1 on a tiny tree: train.py shows ASDKit's settings,
    each seed's table and the seeds table list Deep SVDD, the ensemble and the four ASDKit back ends."""
    import make_demo_data
    from helpers import TINY_DEMO_ARGS

    data = (
        tmp_path / "demo_data"
    )  # ASDKit SMOTE 0.2 needs int(0.2 x source - target) > 0, also in the 5 folds of the thresholds
    counts = ["--source_train", "35", "--target_train", "5", "--machine_types", "fan", "--clip_seconds", "1"]
    make_demo_data.main(["--out_dir", str(data), *TINY_DEMO_ARGS, *counts])
    monkeypatch.setattr(pipeline, "run_step", _run_in_process)
    argv = ["--data_dir", str(data), "--runs_dir", str(tmp_path / "runs"), "--recipe", "asdkit-eat-lora"]
    argv += ["--model_size", "tiny", "--seeds", "0,1", "train.epochs=1", "train.num_workers=0"]
    argv += ["train_deepSVDD.svdd_epochs=1", "baseline.baseline_epochs=2"]
    argv += [
        f"{script}.{name}=false"
        for script in ("evaluate", "evaluate_deepSVDD", "baseline")
        for name in ("plots", "report")
    ]
    assert run_all.main(argv) == 0
    out = capsys.readouterr().out
    for setting in (
        r"LORA_ALPHA\s+= 8\.0",
        r"LORA_DROPOUT\s+= 0\.0",
        r"GRAD_CLIP\s+= 0\.0",
        r"SCALE\s+= fixed",
    ):
        assert re.search(setting + r"\s+\[top of train\.py\]", out), setting
    labels = ["Deep SVDD", "k-NN + Mahalanobis", "ASDKit k-NN", "ASDKit k-NN + SMOTE", "ASDKit k-means"]
    labels += ["ASDKit k-NN rescaled", "DCASE baseline AE"]
    # the headline, first in each seed's side-by-side table: ASDKit's k-NN + SMOTE
    tables = sorted((tmp_path / "runs").glob("*-seed*/results/comparison.csv"))
    assert len(tables) == 2
    for table in tables:
        first = next(line for line in table.read_text().splitlines()[1:] if line.startswith("all,"))
        assert first.split(",")[1] == "ASDKit k-NN + SMOTE", table
    seeds_table = out[out.index("mean +- standard deviation over 2 seeds") :]
    for label in labels:
        assert out.count(f"\n{label}: ") >= 2  # each seed's side-by-side table ends with its score
        assert re.search(rf"\n{re.escape(label)}: .*: \d+\.\d\d \+- \d+\.\d\d", seeds_table), label
    written = next((tmp_path / "runs").glob("*-seeds.csv")).read_text().splitlines()
    assert sorted(line.split(",")[1] for line in written[1:] if line.startswith("all,")) == sorted(labels)


def test_the_evaluate_step_owns_each_back_end_it_will_write(tiny_demo_dir, tmp_path):
    base = ["--data_dir", str(tiny_demo_dir), "--runs_dir", str(tmp_path)]
    [(run_dir, plain)] = _plan(base)
    assert list(pipeline.scorer_summaries(plain)[run_dir / "results"]) == [
        "k-NN + Mahalanobis",
        "Deep SVDD",
        "DCASE baseline AE",
    ]
    [(_, no_baseline)] = _plan([*base, "--baseline", "false"])
    assert list(pipeline.scorer_summaries(no_baseline)[run_dir / "results"]) == [
        "k-NN + Mahalanobis",
        "Deep SVDD",
    ]
    [(run_dir, steps)] = _plan([*base, "--recipe", "asdkit-eat-lora"])
    [evaluate, baseline] = [step for step in steps if step.script == "evaluate"]
    assert baseline.outputs == [run_dir / "results" / "baseline" / "baseline_ae" / "summary.json"]
    backends = run_dir / "results" / "backends"
    assert evaluate.outputs == [
        backends / "smote_knn" / "summary.json",
        run_dir / "results" / "ensemble" / "summary.json",
        *(backends / n / "summary.json" for n in ("knn", "kmeans", "rescale")),
    ]
    tables = pipeline.scorer_summaries(steps)[run_dir / "results"]
    assert list(tables) == [  # ASDKit's k-NN + SMOTE is the headline (the published figures' back end)
        "ASDKit k-NN + SMOTE",
        "k-NN + Mahalanobis",
        "ASDKit k-NN",
        "ASDKit k-means",
        "ASDKit k-NN rescaled",
        "Deep SVDD",
        "DCASE baseline AE",
    ]
    # a back-end folder or list set for evaluate.py is where run_all looks
    [(_, moved)] = _plan(
        base, [f"evaluate.backends_dir={tmp_path / 'elsewhere'}", "evaluate.backends=kmeans"]
    )
    [evaluate, _] = [step for step in moved if step.script == "evaluate"]
    assert evaluate.outputs == [tmp_path / "elsewhere" / "kmeans" / "summary.json"]


def test_a_folder_without_test_clips_only_trains(tiny_demo_dir, tmp_path):
    import shutil

    extra = tmp_path / "extra_train"
    for machine in (tiny_demo_dir).iterdir():
        if (machine / "train").is_dir():
            shutil.copytree(machine / "train", extra / machine.name / "train")
    assert has_test_split(tiny_demo_dir) and not has_test_split(extra)
    [(run_dir, steps)] = _plan(
        ["--data_dir", f"{tiny_demo_dir},{extra}", "--runs_dir", str(tmp_path / "runs")]
    )
    commands = _commands(steps)
    assert commands["train"][commands["train"].index("--data_dir") + 1] == f"{tiny_demo_dir},{extra}"
    shape = commands["datashape[extra_train]"]
    assert shape[shape.index("--splits") + 1 :][:1] == ["train"]
    assert "--splits" not in commands[f"datashape[{tiny_demo_dir.name}]"]
    assert not [name for name in commands if "extra_train" in name and not name.startswith("datashape")]
    assert f"evaluate[{tiny_demo_dir.name}]" in commands
    assert list(pipeline.scorer_summaries(steps)) == [run_dir / tiny_demo_dir.name / "results"]


def test_a_repeated_data_dir_is_refused_in_either_spelling():
    from asd.base.train_checks import refuse_repeated_data_dir

    with pytest.raises(SystemExit, match="train.py: error: --data_dir given 2 times: give several folders"):
        refuse_repeated_data_dir(["--data_dir=a", "--epochs", "1", "--data_dir", "b"], "train.py")
    assert refuse_repeated_data_dir(["--data_dir", "a,b", "--data_dirs_note", "x"], "train.py") is None
