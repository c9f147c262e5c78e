"""The pipeline runner: skipping, rebuilding and stopping, on fake steps that only write files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import run_all
from asd import pipeline
from asd.pipeline import Step, StepFailed, run_pipeline


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
    sources = {p.name for p in pipeline.local_sources(pipeline.PROJECT_DIR / "train.py")}
    assert {"train.py", "model.py", "dataset.py", "preprocessing.py", "cli.py"} <= sources
    assert "evaluate.py" not in sources


def test_step_words_reach_the_named_script_only():
    own, overrides = pipeline.split_step_overrides(
        ["--force", "true", "train.epochs=3", "evaluate.py.k=5", "train.learning_rate=1e-3"]
    )
    assert own == ["--force", "true"]
    assert overrides["train"] == ["--epochs", "3", "--learning_rate", "1e-3"]
    assert overrides["evaluate"] == ["--k", "5"] and overrides["datashape"] == []
    with pytest.raises(SystemExit, match="unknown script 'trian'"):
        pipeline.split_step_overrides(["trian.epochs=3"])


def test_split_accepts_script_names():
    _, overrides = pipeline.split_step_overrides(
        ["make_demo_data.seed=1", "make_demo_data.py.clip_seconds=2"]
    )
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
    ],
)
def test_bad_options_stop_the_run_before_any_stamp_is_touched(
    tiny_demo_dir, tmp_path, no_pipeline, capsys, words, message
):
    run_dir = pipeline.run_folder(tmp_path / "runs", tiny_demo_dir)
    stamp = run_dir / ".stamps" / "train.json"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        run_all.main(["--data_dir", str(tiny_demo_dir), "--runs_dir", str(tmp_path / "runs"), *words])
    assert message in str(exit_info.value.code) + capsys.readouterr().err
    assert not no_pipeline and stamp.read_text() == "{}"


def test_run_folders_are_keyed_by_the_full_path(tmp_path, monkeypatch):
    one, other = tmp_path / "a" / "dev_data", tmp_path / "b" / "dev_data"
    folder = pipeline.run_folder("runs", one)
    assert folder.parent == Path("runs") and folder.name.startswith("dev_data-") and len(folder.name) == 17
    assert pipeline.run_folder("runs", other) != folder
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert pipeline.run_folder("runs", Path("dev_data")) == folder


def test_no_stale_table_or_temp_file_survives_a_new_run(tiny_demo_dir, tmp_path, monkeypatch):
    run_dir = pipeline.run_folder(tmp_path / "runs", tiny_demo_dir)
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


def test_only_training_clips_and_attributes_retrain_the_encoder(tiny_demo_dir, tmp_path):
    import shutil

    data = shutil.copytree(tiny_demo_dir, tmp_path / "data")
    cfg = run_all.parse_config(vars(run_all), ["--data_dir", str(data)])
    steps = {
        s.name: s
        for s in pipeline.build_steps(
            cfg, [data], tmp_path / "run", False, {n: [] for n in pipeline.STEP_NAMES}
        )
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
    assert after_test_clip["train"] == before["train"]
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
