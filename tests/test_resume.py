"""train.py's RESUME: an interrupted run continues by itself; other settings or a broken checkpoint
start afresh and say why; --resume true insists and names what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from asd import resume, training

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
    assert f"resumed from {interrupted / 'last.pth'} after epoch 1" in capsys.readouterr().out
    assert not list(interrupted.glob(".*.tmp"))
    # the resumed run repeats the uninterrupted one: same schedule, data order and augmentation
    full = train.main(_args(tmp_path / "full", tiny_demo_dir))
    assert history["lr"] == pytest.approx(full["lr"])
    assert history["train_loss"] == pytest.approx(full["train_loss"], rel=1e-4)
    assert history["val_loss"] == pytest.approx(full["val_loss"], rel=1e-4)
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
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ValueError) as error:
        train.main(_args(interrupted, tiny_demo_dir, "--resume", "true"))
    assert str(last) in str(error.value) and "delete it or pass --resume false" in str(error.value)
    history = train.main(_args(interrupted, tiny_demo_dir))  # auto: fresh, says why
    assert history["epochs"] == [1, 2]
    assert f"not resuming, starting fresh: {last} cannot be read" in capsys.readouterr().out
    assert torch.load(last, weights_only=True)["epoch"] == 2
