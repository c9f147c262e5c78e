"""Extraction of a model trained on fixed-length clips: each clip from its start, tiled or cut to the
trained length, float32, no windows (as ASDKit extracts); whole-clip models keep their settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import extract_embeddings
import train
from asd.embed import with_clip_settings
from asd.embedding_files import read_feature_file
from helpers import tiny_train_args
from preprocessing import SAMPLE_RATE

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
    assert settings["long_clip"] is None and settings["target_frames"] is None
    assert fingerprint["precision"] == "fp32"


def test_the_fixed_clip_path_differs_from_embedding_the_whole_clip(tmp_path, tiny_demo_dir, one_second_model):
    """The 2 s clip's first second is not what whole-clip extraction of the same model gives."""
    from asd.embed import embed_fbanks, embed_records, embedding_settings, tuned_model
    from dataset import ClipRecord
    from preprocessing import FeatureCache

    data_dir, _ = _clips_folder(tmp_path, tiny_demo_dir)
    path = str(next((data_dir / "fan" / "test").glob("*_long.wav")))
    record = ClipRecord(path, "fan", "00", None, "test", "unknown")
    model, _, trained = tuned_model(one_second_model, torch.device("cpu"))
    base = embedding_settings("windows", None, 0, True)
    fixed = with_clip_settings(base, one_second_model)
    cache = FeatureCache(None)
    cropped = embed_records([record], model, trained, fixed, torch.device("cpu"), 1, cache)
    whole = embed_fbanks(model, [cache.fbank(path)], 0, "crop", "cpu", False, 1, 32)
    assert cropped.shape == whole.shape and not torch.allclose(cropped, whole)


def test_a_whole_clip_model_keeps_its_embedding_settings(tmp_path, tiny_demo_dir):
    from asd.embed import embedding_settings

    args = tiny_train_args(
        tmp_path, tiny_demo_dir, "--clip_seconds", "whole", "--mixup", "batch_fbank", *_NO_CACHE
    )
    train.main(args)
    settings = embedding_settings("windows", None, None, True)
    assert with_clip_settings(settings, tmp_path / "best.pth") is settings
