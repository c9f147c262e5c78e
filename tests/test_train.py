"""train.py: tiny LoRA runs on generated and real clips, best/last checkpoints, resume."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import asd.model.checkpoints as C
import asd.model.pretrained as P
import train
from asd.base.train_checks import check_settings
from asd.data.dataset import discover_clips
from asd.embed.embed import embed_fbanks
from asd.model import heads
from asd.model import model as M
from asd.train import augment, training
from helpers import tiny_train_args


def _args(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--recipe",
        "arcface-v1",
        "--data_dir",
        str(data_dir),
        "--model_size",
        "tiny",
        "--batch_size",
        "8",
        "--target_frames",
        "128",
        "--num_workers",
        "0",
        "--feature_cache",
        str(tmp_path.parent / "cache"),
        "--head",
        "linear",
        "--learning_rate",
        "3e-3",
        "--warmup_epochs",
        "0",
        "--lora_rank",
        "4",
        "--lora_alpha",
        "8",
        "--spec_augment",
        "false",
        "--output",
        str(tmp_path / "best.pth"),
        "--last_checkpoint",
        str(tmp_path / "last.pth"),
        *extra,
    ]


def _fbanks(data_dir: Path, count: int = 3) -> list[torch.Tensor]:
    from asd.data.preprocessing import FeatureCache

    cache = FeatureCache(None)
    return [cache.fbank(r.path) for r in discover_clips(data_dir, splits=("train",))[:count]]


def test_two_epochs_lower_the_loss_and_write_a_reloadable_model(tmp_path, tiny_demo_dir):
    history = train.main(_args(tmp_path, tiny_demo_dir, "--epochs", "2", "--val_fraction", "0.2"))
    assert history["epochs"] == [1, 2]
    assert history["train_loss"][1] < history["train_loss"][0]
    n_train = len([r for r in discover_clips(tiny_demo_dir, splits=("train",))])
    assert history["num_train"] + history["num_val"] == n_train and history["num_val"] > 0
    # fbanks computed once, for training clips only (never test clips); epoch 2 read the cache
    assert history["feature_cache"]["misses"] == n_train
    assert history["feature_cache"]["hits"] >= history["num_train"]
    best = history["best"]
    assert best["val_acc"] == max(history["val_acc"])

    model, labels, settings = C.load_tuned(tmp_path / "best.pth")
    assert len(labels) == history["num_classes"] and settings["best_epoch"] == best["epoch"]
    assert P.tensors_checksum(M.trainable_state(model)) == best["trainable_sha256"]
    fbanks = _fbanks(tiny_demo_dir)
    first = embed_fbanks(model, fbanks, 128, amp=False)
    again, _, _ = C.load_tuned(tmp_path / "best.pth")
    assert torch.equal(embed_fbanks(again, fbanks, 128, amp=False), first)
    untrained = M.ASDModel(P.build_encoder(None, "tiny"), heads.LinearHead(192, len(labels)))
    assert not torch.allclose(embed_fbanks(untrained, fbanks, 128, amp=False), first, atol=1e-4)
    assert not list(tmp_path.glob("*.tmp")) and (tmp_path / "last.pth").is_file()


def test_real_clips_with_single_clip_classes(tmp_path, samples_dir):
    data_dir = samples_dir / "dcase2023_dev"
    history = train.main(
        _args(
            tmp_path,
            data_dir,
            "--epochs",
            "1",
            "--val_fraction",
            "0.5",
            "--mixup_prob",
            "1",
            "--head",
            "arcface",
            "--unfreeze_last_norms",
            "1",
        )
    )
    n_train = len(discover_clips(data_dir, splits=("train",)))
    assert history["num_train"] + history["num_val"] == n_train
    # every class keeps a clip for training; single-clip classes are not validated on
    assert history["num_train"] >= history["num_classes"]
    assert (tmp_path / "best.pth").is_file()
    model, _, _ = C.load_tuned(tmp_path / "best.pth")
    trainable = {
        n for n, p in model.named_parameters() if "norm" in n and "lora" not in n and p.requires_grad
    }
    assert len(trainable) == 4  # norm1/norm2 weight and bias of the last block


def test_spec_augment_masks_bands():
    torch.manual_seed(0)
    x = torch.ones(4, 1, 64, 128)
    masked = augment.spec_augment(x, time_mask=10, freq_mask=8, num_masks=2)
    assert masked.shape == x.shape and masked.min() == 0 and masked.max() == 1
    zero_rows = (masked[:, 0] == 0).all(dim=2).sum(dim=1)  # fully masked frames per clip
    assert (zero_rows <= 20).all() and zero_rows.sum() > 0


# ----------------------------------------------------------------------------- the asdkit-eat-lora recipe


def test_variable_length_collate_pads_to_multiples_and_the_longest():
    from asd.data.dataset import VariableLengthCollate
    from asd.data.fbank import PAD_VALUE

    fbanks = [torch.randn(998, 128), torch.randn(1198, 128), torch.randn(64, 128)]
    x, labels, records = VariableLengthCollate(32)([(f, i, f"r{i}") for i, f in enumerate(fbanks)])
    assert x.shape == (3, 1, 1216, 128) and labels.tolist() == [0, 1, 2] and records == ["r0", "r1", "r2"]
    for clip, fbank in zip(x[:, 0], fbanks):
        assert torch.equal(clip[: len(fbank)], fbank) and (clip[len(fbank) :] == PAD_VALUE).all()
    alone, _, _ = VariableLengthCollate(32)([(fbanks[0], 0, "r0")])
    assert alone.shape[2] == 1024  # a 10 s clip on its own: the next multiple of 32


def test_mixup_happens_with_its_probability():
    x, labels = torch.randn(4, 1, 32, 128), torch.arange(4)

    def share(prob: float) -> float:
        torch.manual_seed(0)
        return sum(augment.mixup_batch(x, labels, prob, 0.2)[1] is not None for _ in range(2000)) / 2000

    assert share(0.0) == 0.0 and share(1.0) == 1.0 and abs(share(0.5) - 0.5) < 0.04
    assert share(0.5) == share(0.5)  # seeded: the same batches are mixed
    torch.manual_seed(1)
    mixed, other, lam = augment.mixup_batch(x, labels, 1.0, 0.2)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[other], atol=1e-6)


def test_pretext_batch_applies_the_labelled_augmentation():
    from asd.data.fbank import PAD_VALUE

    x = torch.randn(16, 1, 64, 128)
    out, labels = augment.pretext_batch(x, torch.Generator().manual_seed(3))
    again, same = augment.pretext_batch(x, torch.Generator().manual_seed(3))
    assert torch.equal(out, again) and torch.equal(labels, same)
    assert set(labels.tolist()) == set(range(len(augment.PRETEXT_TASKS)))
    for clip, original, label in zip(out[:, 0], x[:, 0], labels.tolist()):
        task = augment.PRETEXT_TASKS[label]
        if task == "none":
            assert torch.equal(clip, original)
        elif task == "pitch_shift":
            assert torch.equal(clip[:, 8:], original[:, :-8]) and (clip[:, :8] == PAD_VALUE).all()
        elif task == "overlay":
            assert torch.allclose(clip, 0.5 * (original + original.roll(32, dims=0)))
        else:  # time_stretch: slower, so the start matches and later frames lag behind
            assert torch.allclose(clip[0], original[0], atol=0.5) and not torch.allclose(
                clip, original, atol=0.1
            )
    names = augment.pretext_label_index().names
    assert [name.split("_", 1)[1] for name in names] == list(augment.PRETEXT_TASKS)


def test_warmup_in_steps_then_constant_or_cosine():
    from types import SimpleNamespace

    layer = torch.nn.Linear(2, 2)
    cfg = SimpleNamespace(
        learning_rate=1.0,
        weight_decay=0.0,
        epochs=2,
        warmup_steps=3,
        warmup_epochs=0.5,
        lr_schedule="constant",
        min_lr_ratio=0.1,
        decay="matrices",
        warmup_rule="project",
    )
    optimizer, scheduler = training.make_optimizer(layer, cfg, steps_per_epoch=4)  # warm-up 3 + 2 = 5 steps
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0])
    optimizer, scheduler = training.make_optimizer(
        layer, SimpleNamespace(**{**vars(cfg), "lr_schedule": "cosine"}), 4
    )
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    assert 0.1 <= optimizer.param_groups[0]["lr"] < 0.5


def test_asdkit_recipe_trains_on_fixed_length_real_clips(tmp_path, samples_dir, monkeypatch, capsys):
    """The recipe on real DCASE 2023 clips: 18 s waveforms (1824 frames), classes with the domain counted
    over train and test names, the last epoch written with its history (no validation clips: training
    figures only, named as such)."""
    data_dir = samples_dir / "dcase2023_dev"
    lengths, mixed = [], []
    real_input, real_mixup = training.fixed_length_input, training.mixup_samples

    def recording_input(waves, policy, *args, **kwargs):
        x, targets = real_input(waves, policy, *args, **kwargs)
        lengths.append((policy.samples, x.shape[2]))
        return x, targets

    def recording_mixup(x, targets, prob, *args, **kwargs):
        out = real_mixup(x, targets, prob, *args, **kwargs)
        mixed.append((prob, (out[1] != targets).any(dim=1)))
        return out

    monkeypatch.setattr(training, "fixed_length_input", recording_input)
    monkeypatch.setattr(training, "mixup_samples", recording_mixup)
    history = train.main(tiny_train_args(tmp_path, data_dir, "--recipe", "asdkit-eat-lora"))
    assert history["epochs"] == [1] and history["task"] == "classes" and history["num_val"] == 0
    assert set(lengths) == {(18 * 16000, 1824)}
    assert {prob for prob, _ in mixed} == {0.5} and torch.cat([m for _, m in mixed]).any()
    records = discover_clips(data_dir)
    names = {
        f"{r.machine_type}---{int(r.section)}---{r.attribute_string}---{int(r.domain == 'target')}"
        for r in records
    }
    assert history["num_classes"] == len(names) > len({r.class_name for r in records if r.split == "train"})
    model, labels, settings = C.load_tuned(tmp_path / "best.pth")
    assert (
        set(labels.names) == names and settings["epoch"] == 1 and settings["clip_policy"]["seconds"] == 18.0
    )
    head = model.head
    assert isinstance(head, heads.SCAdaCosHead) and head.sub_clusters == 16 and model.embed_dim == 256
    assert not head.dynamic and float(head.scale) == pytest.approx(
        math.sqrt(2) * math.log(16 * len(names) - 1)
    )
    lora = model.encoder.asd_lora_settings
    assert (lora["targets"], lora["alpha"], lora["dropout"]) == (["qkv"], 8.0, 0.0)
    rows = (tmp_path / "best_history.csv").read_text().splitlines()
    assert (
        rows[0] == "epoch,loss,accuracy,val_loss,val_accuracy,learning_rate,scale,seconds" and len(rows) == 2
    )
    assert rows[1].split(",")[0] == "1" and float(rows[1].split(",")[6]) == pytest.approx(float(head.scale))
    cells = rows[1].split(",")
    assert float(cells[1]) == pytest.approx(history["train_loss"][0]) and cells[3:5] == ["", ""]
    assert history["val_loss"] == history["val_acc"] == [None] and settings["val_loss"] is None
    printed = capsys.readouterr().out
    assert "epoch 1/1  train loss" in printed and "val loss" not in printed


def test_two_data_folders_train_one_model(tmp_path, samples_dir, tiny_demo_dir):
    """DATA_DIR a,b: the training clips of both folders, one class index over both."""
    real = samples_dir / "dcase2023_dev"
    history = train.main(
        tiny_train_args(tmp_path, f"{real},{tiny_demo_dir}", "--clip_seconds", "1", "--batch_size", "16")
    )
    both = discover_clips(real, splits=("train",)) + discover_clips(tiny_demo_dir, splits=("train",))
    assert history["num_train"] == len(both)
    _, labels, _ = C.load_tuned(tmp_path / "best.pth")
    assert {name.split("---")[0] for name in labels.names} == {r.machine_type for r in both}


def _single_class_dir(tmp_path: Path, samples_dir: Path) -> Path:
    """The real 2020 fan clips as training clips of one machine and ID: a single class."""
    import shutil

    train_dir = tmp_path / "one_class" / "fan" / "train"
    train_dir.mkdir(parents=True)
    for i, clip in enumerate(sorted((samples_dir / "dcase2020_dev" / "fan" / "test").glob("*.wav"))):
        shutil.copy(clip, train_dir / f"normal_id_00_{i:08d}.wav")
    return tmp_path / "one_class"


def test_single_class_trains_a_pretext_task(tmp_path, samples_dir, capsys):
    data_dir = _single_class_dir(tmp_path, samples_dir)
    history = train.main(
        tiny_train_args(
            tmp_path,
            data_dir,
            "--epochs",
            "2",
            "--val_fraction",
            "0.3",
            "--clip_seconds",
            "2.56",
            "--learning_rate",
            "1e-3",
        )
    )
    assert "one class" in capsys.readouterr().out
    assert history["task"] == "pretext" and history["num_classes"] == len(augment.PRETEXT_TASKS) > 1
    assert min(history["train_loss"] + history["val_loss"]) > 0.1  # a task that still has something to learn
    model, labels, _ = C.load_tuned(tmp_path / "best.pth")
    assert labels == augment.pretext_label_index() and model.head.num_classes == len(augment.PRETEXT_TASKS)


def test_single_class_frozen_writes_the_untouched_encoder(tmp_path, samples_dir):
    data_dir = _single_class_dir(tmp_path, samples_dir)
    history = train.main(tiny_train_args(tmp_path, data_dir, "--single_class", "frozen"))
    assert history["task"] == "frozen" and history["epochs"] == []
    model, labels, settings = C.load_tuned(tmp_path / "best.pth")
    assert len(labels) == 1 and settings["task"] == "frozen" and model.embed_dim == 192
    fbanks = _fbanks(data_dir, 2)
    plain = P.build_encoder(None, "tiny")  # the same seeded random encoder, never tuned
    tuned = embed_fbanks(model, fbanks, 256, amp=False)
    untouched = embed_fbanks(M.ASDModel(plain, heads.LinearHead(192, 1)), fbanks, 256, amp=False)
    assert torch.allclose(tuned, untouched, atol=1e-5)


def test_a_clip_beyond_the_encoders_reach_is_refused_before_training(tmp_path, monkeypatch):
    import numpy as np
    import soundfile as sf

    folder = tmp_path / "long" / "fan" / "train"
    folder.mkdir(parents=True)
    long_clip = folder / "section_00_source_train_normal_0000_a_1.wav"
    sf.write(long_clip, np.zeros(16000 * 124, dtype=np.float32), 16000)  # 124 s > 12,288 frames
    sf.write(folder / "section_00_source_train_normal_0001_a_2.wav", np.zeros(16000, dtype=np.float32), 16000)

    def no_fbanks(*args, **kwargs):
        raise AssertionError("fbanks computed before the check")

    monkeypatch.setattr(training, "feature_sources", no_fbanks)
    whole = ("--clip_seconds", "whole", "--mixup", "batch_fbank")
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(long_clip))}: 124.0 s .* longer than the encoder's reach"
    ):
        train.main(tiny_train_args(tmp_path, tmp_path / "long", *whole))
    short = tmp_path / "short" / "fan" / "train"  # only clips within reach: CLIP_SECONDS itself is refused
    short.mkdir(parents=True)
    sf.write(short / "section_00_source_train_normal_0001_a_2.wav", np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(
        ValueError, match=r"CLIP_SECONDS 130 gives 12998 frames; the encoder takes at most 12288"
    ):
        train.main(tiny_train_args(tmp_path, short.parents[1], "--clip_seconds", "130"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--target_frames", "128"], "TARGET_FRAMES 128 cuts fbanks and CLIP_SECONDS auto cuts waveforms"),
        (["--clip_seconds", "whole"], "MIXUP sample_wave mixes equal-length waveforms"),
        (["--head", "arcface"], "the ArcFace margin is not defined"),
        (["--clip_seconds", "soon"], "CLIP_SECONDS 'soon': must be whole, auto or at least 0.025 seconds"),
    ],
)
def test_settings_that_do_not_go_together_stop_before_anything_runs(argv, message):
    from asd.base.cli import parse_config
    from asd.base.recipes import RECIPES

    cfg = parse_config(vars(train), ["--data_dir", "/nonexistent", *argv])
    with pytest.raises(ValueError, match=message):
        check_settings(cfg)
    with pytest.raises(ValueError, match=message):  # train.py checks before it looks at the data
        train.main(["--data_dir", "/nonexistent", *argv])
    for recipe in RECIPES:  # every recipe's settings go together
        assert check_settings(parse_config(vars(train), ["--recipe", recipe])) is None


def test_history_csv_of_a_run_resumed_from_an_older_checkpoint(tmp_path):
    """An older checkpoint's history has no scale or seconds: those cells stay empty for its epochs."""
    from asd.train.history import history_path, read_history, record_epoch, write_history

    history = {"train_loss": [2.0], "train_acc": [0.1], "val_loss": [2.1], "val_acc": [0.2], "lr": [1e-5]}
    history["epochs"] = [1]
    record_epoch(
        history,
        train_loss=1.5,
        train_acc=0.3,
        val_loss=1.6,
        val_acc=0.4,
        lr=2e-5,
        scale=7.4,
        seconds=3.0,
        epochs=2,
    )
    path = history_path(tmp_path / "best_encoder_model.pth")
    assert path == tmp_path / "best_encoder_model_history.csv"
    write_history(path, history)
    rows = read_history(path)
    assert [row["epoch"] for row in rows] == ["1", "2"] and rows[0]["scale"] == rows[0]["seconds"] == ""
    assert (rows[1]["loss"], rows[1]["val_accuracy"], rows[1]["learning_rate"], rows[1]["scale"]) == (
        "1.5",
        "0.4",
        "2e-05",
        "7.4",
    )
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_repeated_data_dir_is_refused_by_train_py(tmp_path):
    with pytest.raises(SystemExit, match="--data_dir given 2 times: give several folders comma-separated"):
        train.main(["--data_dir", str(tmp_path / "a"), f"--data_dir={tmp_path / 'b'}"])
