"""train.py's RESUME: an interrupted run continues by itself; other settings or a broken checkpoint
start afresh and say why; --resume true insists and names what to do."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from asd.train import resume, training

OPTIONS = [
    "--model_size",
    "tiny",
    "--batch_size",
    "8",
    "--clip_seconds",
    "0.64",
    "--num_workers",
    "0",
    "--head",
    "linear",
    "--learning_rate",
    "3e-3",
    "--warmup_epochs",
    "0",
    "--lora_rank",
    "2",
    "--lora_alpha",
    "4",
    "--spec_augment",
    "false",
    "--epochs",
    "2",
    "--val_fraction",
    "0.3",
    "--machine_types",
    "fan",
]


def _args(folder: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--data_dir",
        str(data_dir),
        *OPTIONS,
        "--feature_cache",
        str(folder.parent / "cache"),
        "--output",
        str(folder / "best.pth"),
        "--last_checkpoint",
        str(folder / "last.pth"),
        *extra,
    ]


@pytest.fixture
def interrupted(tmp_path, tiny_demo_dir, monkeypatch) -> Path:
    """A run folder whose training was killed during epoch 2 (last.pth holds epoch 1)."""
    real_evaluate, calls = training.evaluate, []

    def crash_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train.main(_args(tmp_path / "run", tiny_demo_dir))
    monkeypatch.setattr(training, "evaluate", real_evaluate)
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["epoch"] == 1
    return tmp_path / "run"


def _why_not(folder: Path, data_dir: Path, *extra: str) -> str:
    """read_last_checkpoint's reason not to continue, for a run with these options."""
    cfg = train.parse_config(vars(train), _args(folder, data_dir, *extra))
    state, why_not = resume.read_last_checkpoint(
        cfg, training.class_index(cfg, training.training_records(cfg))
    )
    assert (state is None) == bool(why_not)
    return why_not


def test_an_interrupted_run_continues_by_itself(interrupted, tiny_demo_dir, tmp_path, capsys):
    assert _why_not(interrupted, tiny_demo_dir, "--device", "cpu", "--num_workers", "1") == ""
    history = train.main(_args(interrupted, tiny_demo_dir))
    assert history["epochs"] == [1, 2] and len(history["train_loss"]) == 2
    printed = capsys.readouterr().out
    assert (
        f"resumed from {interrupted / 'last.pth'} after epoch 1" in printed and "will differ" not in printed
    )
    assert not list(interrupted.glob(".*.tmp"))
    # the resumed run repeats the uninterrupted one: same schedule, data order and augmentation
    full = train.main(_args(tmp_path / "full", tiny_demo_dir))
    for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc"):
        assert history[key] == full[key], key
    # a finished run is not "continued": the same command trains afresh
    assert _why_not(interrupted, tiny_demo_dir) == f"{interrupted / 'last.pth'} has finished its 2 epochs"


def test_what_stops_a_resume(interrupted, tiny_demo_dir, capsys, monkeypatch):
    last = interrupted / "last.pth"
    with monkeypatch.context() as inside:  # the same data folder spelt relative to the working folder
        inside.chdir(tiny_demo_dir.parent)
        assert _why_not(interrupted, Path(tiny_demo_dir.name)) == ""
    assert "LEARNING_RATE 0.003 then, 0.001 now" in _why_not(
        interrupted, tiny_demo_dir, "--learning_rate", "1e-3"
    )
    assert "EPOCHS 2 then, 3 now" in _why_not(interrupted, tiny_demo_dir, "--epochs", "3")
    # --resume true only needs the model-defining settings to match: a new learning rate is allowed
    assert _why_not(interrupted, tiny_demo_dir, "--learning_rate", "1e-3", "--resume", "true") == ""
    assert "LORA_RANK" in _why_not(interrupted, tiny_demo_dir, "--lora_rank", "4", "--resume", "true")
    # what keeps a resumed run from being the uninterrupted one is said, file locations are not
    state, here = torch.load(last, weights_only=True), {"device": "cpu", "world_size": 1}
    moved = ["--output", str(interrupted / "elsewhere.pth"), "--feature_cache", "none", "--resume", "true"]
    assert (
        resume.inexact_resume(
            state, train.parse_config(vars(train), _args(interrupted, tiny_demo_dir, *moved)), here
        )
        == []
    )
    cfg = train.parse_config(
        vars(train), _args(interrupted, tiny_demo_dir, "--learning_rate", "1e-3", "--num_workers", "1")
    )
    assert resume.inexact_resume(state, cfg, here) == [
        "LEARNING_RATE 0.003 then, 0.001 now",
        "NUM_WORKERS 0 then, 1 now",
    ]
    cfg = train.parse_config(vars(train), _args(interrupted, tiny_demo_dir))
    assert resume.inexact_resume(state, cfg, {"device": "cuda", "world_size": 2}) == [
        "device cpu then, cuda now",
        "world_size 1 then, 2 now",
    ]
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ValueError) as error:
        train.main(_args(interrupted, tiny_demo_dir, "--resume", "true"))
    assert str(last) in str(error.value) and "delete it or pass --resume false" in str(error.value)
    history = train.main(_args(interrupted, tiny_demo_dir))  # auto: fresh, says why
    assert history["epochs"] == [1, 2]
    assert f"not resuming, starting fresh: {last} cannot be read" in capsys.readouterr().out
    assert torch.load(last, weights_only=True)["epoch"] == 2


# every random stream of training at work: shuffled order through a DataLoader worker, random crops
# in the worker, SpecAugment, batch mixup, drop path and LoRA dropout in the main process
KILLED_OPTIONS = [
    "--model_size", "tiny", "--head", "scadacos", "--sub_clusters", "2", "--lora_rank", "2",
    "--lora_alpha", "4", "--lora_dropout", "0.2", "--drop_path", "0.2", "--learning_rate", "3e-3",
    "--warmup_epochs", "1", "--warmup_steps", "0", "--lr_schedule", "cosine", "--batch_size", "4",
    "--clip_seconds", "whole", "--target_frames", "128", "--random_crop", "true", "--spec_augment", "true",
    "--mixup", "batch_fbank", "--mixup_prob", "0.5", "--num_workers", "1", "--device", "cpu",
    "--epochs", "3", "--feature_cache", "none",
]  # fmt: skip
# SIGKILL the training process at its Nth optimizer step (patched in before train.py runs)
KILL_AT_STEP = """
import os, signal, sys, torch, train
real_step, steps = torch.optim.AdamW.step, []
def step_then_die(self, *args, **kwargs):
    steps.append(1)
    if len(steps) == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(self, *args, **kwargs)
torch.optim.AdamW.step = step_then_die
train.main(sys.argv[1:])
"""


def _train_in_a_process(folder: Path, data_dir: Path, kill_at_step: int = 0) -> int:
    """Run train.py with KILLED_OPTIONS in a fresh process (killed at that optimizer step); its exit code."""
    argv = ["--data_dir", str(data_dir), *KILLED_OPTIONS, "--output", str(folder / "best.pth")]
    argv += ["--last_checkpoint", str(folder / "last.pth")]
    env = {**os.environ, "KILL_AT_STEP": str(kill_at_step), "OMP_NUM_THREADS": "1"}
    code = KILL_AT_STEP if kill_at_step else "import sys, train; train.main(sys.argv[1:])"
    repo = Path(train.__file__).resolve().parent
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=repo, env=env, capture_output=True, text=True
    )
    assert done.returncode in (0, -signal.SIGKILL), done.stderr[-3000:]
    return done.returncode


def _scores(folder: Path, data_dir: Path) -> dict[str, bytes]:
    """The score CSVs of the model in ``folder``: its embeddings, then evaluate.py's k-NN scorer."""
    import evaluate
    import extract_embeddings

    embed = [
        "--data_dir",
        str(data_dir),
        "--model_path",
        str(folder / "best.pth"),
        "--embed_dir",
        str(folder),
    ]
    extract_embeddings.main([*embed, "--device", "cpu", "--feature_cache", "none", "--amp", "false"])
    results = folder / "results"
    evaluate.main(
        ["--embed_dir", str(folder), "--results_dir", str(results), "--plots", "false", "--report", "false"]
    )
    return {p.name: p.read_bytes() for p in sorted(results.glob("*.csv"))}


def test_a_killed_run_resumed_is_the_uninterrupted_run(tmp_path, tiny_demo_dir):
    """SIGKILLed in the middle of epoch 2, the rerun continues after epoch 1 and ends with the very
    weights, history and score files of a run that was never interrupted."""
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_demo_dir / "fan", data_dir / "fan")  # 8 training clips: 2 steps per epoch
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _train_in_a_process(whole, data_dir) == 0
    assert _train_in_a_process(killed, data_dir, kill_at_step=3) == -signal.SIGKILL
    assert torch.load(killed / "last.pth", weights_only=True)["epoch"] == 1
    assert _train_in_a_process(killed, data_dir) == 0
    for name in ("best.pth", "last.pth"):
        first, second = (torch.load(f / name, weights_only=True) for f in (whole, killed))
        weights = first["trainable_state"], second["trainable_state"]
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    rows = [(f / "best_history.csv").read_text().splitlines() for f in (whole, killed)]
    assert [r.rsplit(",", 1)[0] for r in rows[0]] == [r.rsplit(",", 1)[0] for r in rows[1]]  # not seconds
    scores = _scores(whole, data_dir)
    assert scores and scores == _scores(killed, data_dir)
