"""Extraction of a model trained on fixed-length clips: each clip from its start, tiled or cut to the
trained length, float32, no windows (as ASDKit extracts); whole-clip models keep their settings. The
clip policy (asd.data.clips.ClipPolicy) the tuned model records is what extraction and datashape.py read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import datashape
import extract_embeddings
import train
from asd.data.clips import LEGACY_TARGET_FRAMES, ClipPolicy
from asd.data.fbank import SAMPLE_RATE
from asd.embed.embed import with_clip_settings
from asd.embed.embedding_files import read_feature_file
from asd.model.checkpoints import read_tuned
from helpers import tiny_train_args

_NO_CACHE = ("--batch_size", "16", "--feature_cache", "none")


@pytest.fixture(scope="module")
def one_second_model(tmp_path_factory, tiny_demo_dir) -> Path:
    out = tmp_path_factory.mktemp("one_second")
    train.main(tiny_train_args(out, tiny_demo_dir, "--clip_seconds", "1", *_NO_CACHE))
    return out / "best.pth"


def _clips_folder(tmp_path: Path, tiny_demo_dir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """fan's training normals and four test clips: a 2 s clip, its first second, a 0.5 s clip, that
    clip tiled to 1 s (as separate files)."""
    data = tmp_path / "data" / "fan"
    shutil.copytree(tiny_demo_dir / "fan" / "train", data / "train")
    (data / "test").mkdir()
    rng = np.random.default_rng(0)
    long = (0.1 * rng.standard_normal(2 * SAMPLE_RATE)).astype(np.float32)
    short = (0.1 * rng.standard_normal(SAMPLE_RATE // 2)).astype(np.float32)
    waves = {
        "long": long,
        "long_first_second": long[:SAMPLE_RATE],
        "short": short,
        "short_tiled": np.concatenate([short, short]),
    }
    for i, (name, wave) in enumerate(waves.items()):
        sf.write(data / "test" / f"section_00_source_test_normal_{i:04d}_{name}.wav", wave, SAMPLE_RATE)
    return tmp_path / "data", waves


def test_a_one_second_model_embeds_each_clip_from_its_start_tiled_or_cut(
    tmp_path, tiny_demo_dir, one_second_model
):
    data_dir, waves = _clips_folder(tmp_path, tiny_demo_dir)
    argv = ["--data_dir", str(data_dir), "--model_path", str(one_second_model), "--embed_dir", str(tmp_path)]
    argv += ["--device", "cpu", "--feature_cache", "none", "--embed_batch_size", "1", "--splits", "test"]
    test, _ = extract_embeddings.main(argv)["test"]
    rows = {Path(r["path"]).stem.split("_", 6)[-1]: row for r, row in zip(test["records"], test["matrix"])}
    assert set(rows) == set(waves)
    assert torch.equal(rows["long"], rows["long_first_second"])
    assert torch.equal(rows["short"], rows["short_tiled"])
    assert not torch.equal(rows["long"], rows["short"])
    fingerprint = read_feature_file(tmp_path / "test_embeddings.pt")["fingerprint"]
    settings = fingerprint["settings"]
    assert (settings["clip_seconds"], settings["pad_multiple"], settings["amp"]) == (1.0, 32, False)
    assert settings["long_clip"] is None and "target_frames" not in settings
    assert fingerprint["precision"] == "fp32"


def test_the_fixed_clip_path_differs_from_embedding_the_whole_clip(tmp_path, tiny_demo_dir, one_second_model):
    """The 2 s clip's first second is not what whole-clip extraction of the same model gives."""
    from asd.data.names import ClipRecord
    from asd.data.preprocessing import FeatureCache
    from asd.embed.embed import embed_fbanks, embed_records, embedding_settings, tuned_model

    data_dir, _ = _clips_folder(tmp_path, tiny_demo_dir)
    path = str(next((data_dir / "fan" / "test").glob("*_long.wav")))
    record = ClipRecord(path, "fan", "00", None, "test", "unknown")
    model, _, trained = tuned_model(one_second_model, torch.device("cpu"))
    base = embedding_settings("windows", None, True)
    fixed = with_clip_settings(base, one_second_model)
    cache = FeatureCache(None)
    cropped = embed_records([record], model, trained, fixed, torch.device("cpu"), 1, cache)
    whole = embed_fbanks(model, [cache.fbank(path)], 0, "crop", "cpu", False, 1, 32)
    assert cropped.shape == whole.shape and not torch.allclose(cropped, whole)


def test_a_whole_clip_model_keeps_its_embedding_settings(tmp_path, tiny_demo_dir):
    from asd.embed.embed import embedding_settings

    args = tiny_train_args(
        tmp_path, tiny_demo_dir, "--clip_seconds", "whole", "--mixup", "batch_fbank", *_NO_CACHE
    )
    train.main(args)
    settings = embedding_settings("windows", None, True)
    assert with_clip_settings(settings, tmp_path / "best.pth") is settings


def test_the_tuned_model_records_its_clip_policy_and_datashape_reads_it(
    one_second_model, tiny_demo_dir, capsys
):
    """train.py records the resolved policy; datashape.py shows the model input that policy makes (1 s:
    98 frames padded to 128), not a constant of its own."""
    settings = read_tuned(one_second_model)["settings"]
    assert settings["clip_policy"] == {
        "seconds": 1.0,
        "target_frames": 0,
        "pad_multiple": 32,
        "random_crop": True,
    }
    assert ClipPolicy.from_settings(settings) == ClipPolicy(1.0)
    assert datashape.main(["--data_dir", str(tiny_demo_dir), "--model_path", str(one_second_model)]) == 0
    out = capsys.readouterr().out
    assert "fbank [198, 128] -> model input [1, 128, 128] (waveform tiled or cut to 1 s)" in out


def test_a_model_file_without_a_recorded_policy_reads_as_it_was_trained():
    """Files written before settings["clip_policy"]: the resolved seconds, else the fbank settings, else
    the EAT recipe's 1024 frames."""
    assert ClipPolicy.from_settings({"clip_seconds_resolved": 18, "pad_multiple": 16}) == ClipPolicy(
        18.0, 1024, 16
    )
    old = ClipPolicy.from_settings({"clip_seconds_resolved": None, "target_frames": 0, "random_crop": False})
    assert old == ClipPolicy(None, 0, 32, False)
    assert ClipPolicy.from_settings({}).target_frames == LEGACY_TARGET_FRAMES
    policy = ClipPolicy(None, 256, 16, False)
    assert ClipPolicy.from_settings({"clip_policy": policy.record(), "target_frames": 0}) == policy


def test_the_policy_cuts_fbank_clips_for_training_and_extraction():
    """Training crops at a random offset only with random_crop; validation and extraction from the start;
    whole clips are padded to pad_multiple (at most the encoder's reach); windows cover the clip."""
    from asd.data.dataset import FixedLengthCollate, VariableLengthCollate, fbank_collate
    from asd.data.fbank import PAD_VALUE

    fbank = torch.arange(300 * 128, dtype=torch.float32).view(300, 128)
    crop = ClipPolicy(None, 100, 32, True)
    torch.manual_seed(0)
    starts = {int(crop.training_fbank(fbank, True)[0, 0]) // 128 for _ in range(20)}
    assert len(starts) > 1 and all(0 <= s <= 200 for s in starts)
    assert torch.equal(crop.training_fbank(fbank, False), fbank[:100])
    assert torch.equal(ClipPolicy(None, 100, 32, False).training_fbank(fbank, True), fbank[:100])
    windows = crop.fbank_pieces(fbank, "windows", 12288)
    assert [int(w[0, 0]) // 128 for w in windows] == [0, 100, 200]
    assert len(crop.fbank_pieces(fbank, "crop", 12288)) == 1
    whole = ClipPolicy(None, 0, 32).fbank_pieces(fbank, "windows", 12288)[0]
    assert (
        whole.shape[0] == 320 and torch.equal(whole[:300], fbank) and bool((whole[300:] == PAD_VALUE).all())
    )
    assert ClipPolicy(None, 0, 32).fbank_pieces(fbank, "windows", 256)[0].shape[0] == 256
    assert isinstance(fbank_collate(ClipPolicy(None, 0, 32), True), VariableLengthCollate)
    assert isinstance(fbank_collate(crop, True), FixedLengthCollate)
    assert fbank_collate(crop, False)([(fbank, 0, "r")])[0].shape == (1, 1, 100, 128)
