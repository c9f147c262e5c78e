"""train.py: tiny LoRA runs on generated and real clips, best/last checkpoints, resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import checkpoints as C
import model as M
from extract_embeddings import embed_fbanks
import train
from dataset import discover_clips


def _args(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["--data_dir", str(data_dir), "--model_size", "tiny", "--batch_size", "8", "--target_frames", "128",
            "--num_workers", "0", "--feature_cache", str(tmp_path.parent / "cache"), "--head", "linear",
            "--learning_rate", "3e-3", "--warmup_epochs", "0", "--lora_rank", "4", "--lora_alpha", "8",
            "--spec_augment", "false", "--output", str(tmp_path / "best.pth"),
            "--last_checkpoint", str(tmp_path / "last.pth"), *extra]


def _fbanks(data_dir: Path, count: int = 3) -> list[torch.Tensor]:
    from preprocessing import FeatureCache
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
    assert C.tensors_checksum(M.trainable_state(model)) == best["trainable_sha256"]
    fbanks = _fbanks(tiny_demo_dir)
    first = embed_fbanks(model, fbanks, 128, amp=False)
    again, _, _ = C.load_tuned(tmp_path / "best.pth")
    assert torch.equal(embed_fbanks(again, fbanks, 128, amp=False), first)
    untrained = M.ASDModel(C.build_encoder(None, "tiny"), M.LinearHead(192, len(labels)))
    assert not torch.allclose(embed_fbanks(untrained, fbanks, 128, amp=False), first, atol=1e-4)
    assert not list(tmp_path.glob("*.tmp")) and (tmp_path / "last.pth").is_file()


def test_resume_continues_from_the_last_epoch(tmp_path, tiny_demo_dir, monkeypatch):
    options = ("--epochs", "2", "--head", "arcface", "--spec_augment", "true", "--val_fraction", "0.3")
    full = train.main(_args(tmp_path / "full", tiny_demo_dir, *options))

    real_evaluate, calls = train.evaluate, []

    def crash_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train.main(_args(tmp_path / "split", tiny_demo_dir, *options))
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    assert torch.load(tmp_path / "split" / "last.pth", weights_only=True)["epoch"] == 1
    assert not list((tmp_path / "split").glob(".*.tmp"))

    resumed = train.main(_args(tmp_path / "split", tiny_demo_dir, *options, "--resume", "true"))
    assert resumed["epochs"] == [1, 2]
    # the resumed run repeats the uninterrupted one: same schedule, data order and augmentation
    assert resumed["lr"] == pytest.approx(full["lr"])
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-4)
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-4)
    assert resumed["best"]["trainable_sha256"] == full["best"]["trainable_sha256"] or \
        resumed["best"]["epoch"] == full["best"]["epoch"]
    with pytest.raises(ValueError, match="other settings"):
        train.main(_args(tmp_path / "split", tiny_demo_dir, *options, "--resume", "true", "--lora_rank", "2"))
    with pytest.raises(FileNotFoundError, match="no last checkpoint"):
        train.main(_args(tmp_path / "fresh", tiny_demo_dir, "--resume", "true"))


def test_real_clips_with_single_clip_classes(tmp_path, samples_dir):
    data_dir = samples_dir / "dcase2023_dev"
    history = train.main(_args(tmp_path, data_dir, "--epochs", "1", "--val_fraction", "0.5", "--mixup", "true",
                               "--head", "arcface", "--unfreeze_last_norms", "1"))
    n_train = len(discover_clips(data_dir, splits=("train",)))
    assert history["num_train"] + history["num_val"] == n_train
    # every class keeps a clip for training; single-clip classes are not validated on
    assert history["num_train"] >= history["num_classes"]
    assert (tmp_path / "best.pth").is_file()
    model, _, _ = C.load_tuned(tmp_path / "best.pth")
    trainable = {n for n, p in model.named_parameters() if "norm" in n and "lora" not in n and p.requires_grad}
    assert len(trainable) == 4  # norm1/norm2 weight and bias of the last block


def test_spec_augment_masks_bands():
    torch.manual_seed(0)
    x = torch.ones(4, 1, 64, 128)
    masked = train.spec_augment(x, time_mask=10, freq_mask=8, num_masks=2)
    assert masked.shape == x.shape and masked.min() == 0 and masked.max() == 1
    zero_rows = (masked[:, 0] == 0).all(dim=2).sum(dim=1)  # fully masked frames per clip
    assert (zero_rows <= 20).all() and zero_rows.sum() > 0
