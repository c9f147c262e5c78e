"""Known errors (missing files, bad input, a full disk) end a script with one line naming the file; the
traceback only with ASD_DEBUG=1; a bug keeps its traceback; run_all shows a failed step's one line."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asd.base import errors
from asd.run import pipeline
from asd.run.pipeline import Step, StepFailed

ROOT = Path(__file__).resolve().parents[1]


def _script(args: list[str], debug: bool, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != errors.DEBUG_ENV}
    env.update({errors.DEBUG_ENV: "1"} if debug else {})
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("debug", [False, True])
def test_a_missing_folder_is_one_line_naming_it_and_a_traceback_only_in_debug(tmp_path, debug):
    missing = tmp_path / "no_such_run"
    done = _script(
        ["train_deepSVDD.py", "--embed_dir", str(missing), "--svdd_dir", str(tmp_path / "s")], debug, tmp_path
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    if debug:
        assert "Traceback" in done.stderr and str(missing) in lines[-1]
    else:
        assert "Traceback" not in done.stderr
        assert (
            len(lines) == 1 and lines[0].startswith("train_deepSVDD.py: error: ") and str(missing) in lines[0]
        )


def test_known_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)

    def full_disk():
        raise OSError(errno.ENOSPC, "no space left on device while writing runs/x/model.pth")

    assert errors.run_script(full_disk, "train.py") == 1
    assert (
        capsys.readouterr().err
        == "train.py: error: [Errno 28] no space left on device while writing runs/x/model.pth\n"
    )
    assert errors.run_script(lambda: 3, "datashape.py") == 3 and errors.run_script(lambda: {}, "x.py") == 0
    with pytest.raises(KeyError):  # a bug, not the user's input
        errors.run_script(lambda: {}["missing"], "train.py")
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(OSError):
        errors.run_script(full_disk, "train.py")


def test_run_all_shows_a_failed_step_s_one_line_error_alone(tmp_path):
    code = (
        "import sys; from asd.base.errors import run_script\n"
        "def main():\n    print('settings ...'); print('loading clips')\n"
        "    raise ValueError('dev_data/fan/train/x.wav: not a WAV file; replace or remove it')\n"
        "sys.argv[0] = 'train.py'; sys.exit(run_script(main))"
    )
    with pytest.raises(StepFailed) as info:
        pipeline.run_step(Step("train", [sys.executable, "-c", code]))
    message = str(info.value).split("its last output:")[1]
    assert (
        message.strip() == "train.py: error: dev_data/fan/train/x.wav: not a WAV file; replace or remove it"
    )
