"""The pipeline runner: skipping, rebuilding and stopping, on fake steps that only write files."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import run_all
from run_all import Step, StepFailed, run_pipeline


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
    # 'first' is rebuilt; its new mtime is a changed input for 'second', which reruns too.
    assert run_pipeline(steps, stamps) == ["first", "second"]


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
    failing = [sys.executable, "-c",
               "import sys; print('loading clips'); sys.exit('bad wav: dev_data/fan/x.wav is empty')"]
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
        "import sys\nfrom helper import VALUE\nopen(sys.argv[1], 'w').write(str(VALUE))\n")
    out = tmp_path / "out.txt"
    steps = [Step("step", [sys.executable, str(tmp_path / "step.py"), str(out)], outputs=[out])]
    assert run_pipeline(steps, tmp_path / "stamps") == ["step"]
    assert run_pipeline(steps, tmp_path / "stamps") == []
    (tmp_path / "helper.py").write_text("VALUE = 2\n")
    assert run_pipeline(steps, tmp_path / "stamps") == ["step"]
    assert out.read_text() == "2"


def test_train_step_depends_on_the_model_code():
    sources = {p.name for p in run_all.local_sources(run_all.SCRIPT_DIR / "train.py")}
    assert {"train.py", "model.py", "dataset.py", "preprocessing.py", "utils.py"} <= sources
    assert "evaluate.py" not in sources


def test_step_words_reach_the_named_script_only():
    own, overrides = run_all.split_step_overrides(
        ["--force", "true", "train.epochs=3", "evaluate.py.k=5", "train.learning_rate=1e-3"])
    assert own == ["--force", "true"]
    assert overrides["train"] == ["--epochs", "3", "--learning_rate", "1e-3"]
    assert overrides["evaluate"] == ["--k", "5"] and overrides["datashape"] == []
    with pytest.raises(SystemExit, match="unknown script 'trian'"):
        run_all.split_step_overrides(["trian.epochs=3"])
