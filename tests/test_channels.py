"""CHANNELS: which microphone of a DCASE 2026 two-channel clip is heard, and its record in model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asd.data.fbank import ENCODER_MAX_FRAMES, wav_to_fbank
from asd.data.preprocessing import (
    CHANNEL_MODES,
    AudioError,
    FeatureCache,
    channel_record,
    channel_views,
    check_channel_record,
    feature_settings,
    load_audio,
)


@pytest.fixture(scope="module")
def real_pair(samples_dir, tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """(a real mono DCASE clip, its two-channel copy, the far channel's int16 samples).

    The copy's channel 0 holds the original samples; channel 1 is another real clip of the same
    length (a different, real recording standing in for the far microphone).
    """
    clips = sorted((samples_dir / "dcase2023_dev" / "fan").rglob("*.wav"))
    near, sr = sf.read(str(clips[0]), dtype="int16")
    far, _ = sf.read(str(clips[1]), dtype="int16")
    far = far[: len(near)]
    assert len(far) == len(near) and not np.array_equal(near, far)
    copy = tmp_path_factory.mktemp("two_channel") / clips[0].name
    sf.write(str(copy), np.stack([near, far], axis=1), sr, subtype="PCM_16")
    return clips[0], copy, far


def test_near_reads_exactly_the_mono_original(real_pair, tmp_path):
    mono, stereo, _ = real_pair
    assert sf.info(str(stereo)).channels == 2 and sf.info(str(mono)).channels == 1
    assert torch.equal(load_audio(stereo), load_audio(mono))  # the default is near
    assert torch.equal(load_audio(stereo, channels="near"), load_audio(mono, channels="near"))
    a, b = FeatureCache(tmp_path / "a"), FeatureCache(tmp_path / "b")
    assert torch.equal(a.fbank(stereo), b.fbank(mono))
    assert np.array_equal(a.stats(stereo), b.stats(mono))
    assert torch.equal(a.fbanks([stereo], device="cpu")[0], b.fbanks([mono], device="cpu")[0])


def test_every_mode_reads_what_it_says(real_pair):
    mono, stereo, far_int = real_pair
    near = load_audio(mono)
    far = torch.from_numpy(far_int.astype(np.float32) / 32768)
    assert torch.equal(load_audio(stereo, channels="far"), far)
    assert torch.allclose(load_audio(stereo, channels="mix"), (near + far) / 2, atol=1e-7)
    for weight in (0.5, 0.25):
        residual = load_audio(stereo, channels="residual", residual_weight=weight)
        assert torch.allclose(residual, near - weight * far, atol=1e-7)
    both = load_audio(stereo, channels="both")
    assert both.shape == (2, near.numel()) and torch.equal(both[0], near) and torch.equal(both[1], far)
    assert [channel_views(mode) for mode in CHANNEL_MODES] == [
        ("near",),
        ("far",),
        ("mix",),
        ("residual",),
        ("near", "far"),
    ]


def test_mono_clips_work_in_one_channel_modes_and_name_the_file_otherwise(real_pair):
    mono, _, _ = real_pair
    signal = load_audio(mono)
    assert torch.equal(load_audio(mono, channels="mix"), signal)  # the old behaviour on mono
    for mode in ("far", "residual", "both"):
        with pytest.raises(AudioError, match=f"CHANNELS='{mode}' needs a second") as info:
            load_audio(mono, channels=mode)
        assert str(mono) in str(info.value)
    with pytest.raises(ValueError, match="unknown channel mode 'left'"):
        load_audio(mono, channels="left")


def test_the_cache_of_one_mode_is_never_read_for_another(real_pair, tmp_path):
    _, stereo, _ = real_pair
    near_cache = FeatureCache(tmp_path / "cache")
    near = near_cache.fbank(stereo)
    far_cache = FeatureCache(tmp_path / "cache", channels="far")
    far = far_cache.fbank(stereo)
    assert (far_cache.hits, far_cache.misses) == (0, 1) and not torch.equal(near, far)
    assert torch.equal(far, wav_to_fbank(load_audio(stereo, channels="far")))
    settings = {mode: feature_settings(mode) for mode in ("near", "far", "mix", "residual")}
    assert len({str(sorted(s.items())) for s in settings.values()}) == 4
    assert feature_settings("residual", 0.5) != feature_settings("residual", 0.25)
    again = FeatureCache(tmp_path / "cache")
    assert torch.equal(again.fbank(stereo), near) and again.hits == 1
    with pytest.raises(ValueError, match="channel_views"):
        FeatureCache(tmp_path / "cache", channels="both")


def test_channel_record_and_its_check():
    assert channel_record() == {"channels": "near"}
    assert channel_record("residual", 0.5) == {"channels": "residual", "residual_weight": 0.5}
    assert channel_record("far", 0.3) == {"channels": "far"}  # the weight only where it acts
    check_channel_record({"channels": "near"}, channel_record("near"), "model.pt")
    with pytest.raises(ValueError, match="model.pt was made with channels='far'.*channels='near'"):
        check_channel_record({"channels": "far"}, channel_record("near"), "model.pt")
    with pytest.raises(ValueError, match="residual_weight"):
        check_channel_record(channel_record("residual", 0.5), channel_record("residual", 0.4), "emb.pt")
    with pytest.raises(ValueError, match="before the CHANNELS setting"):
        check_channel_record(None, channel_record("near"), "old_model.pt")
    check_channel_record({}, channel_record("mix"), "old_model.pt")  # old files averaged the channels


def test_encoder_reach_is_the_position_table():
    from asd.model.model import EATConfig

    assert ENCODER_MAX_FRAMES == EATConfig.max_length * EATConfig.patch_size


def test_a_two_channel_copy_of_a_real_folder_gives_the_same_features(samples_dir, tmp_path):
    """Every clip of the real DCASE 2023 samples, copied as channel 0 of a two-channel file (channel 1:
    the clip reversed), gives bit-identical fbanks and statistics under the default mode."""
    from asd.data.dataset import discover_clips

    source = samples_dir / "dcase2023_dev"
    originals = discover_clips(source)
    for record in originals:
        data, sr = sf.read(record.path, dtype="int16")
        copy = tmp_path / Path(record.path).relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(copy), np.stack([data, data[::-1]], axis=1), sr, subtype="PCM_16")
    copies = discover_clips(tmp_path, channels="both")
    assert [Path(r.path).relative_to(tmp_path) for r in copies] == [
        Path(r.path).relative_to(source) for r in originals
    ]
    cache = FeatureCache(None)
    for mine, theirs in zip(
        cache.fbanks([r.path for r in copies], device="cpu"),
        cache.fbanks([r.path for r in originals], device="cpu"),
    ):
        assert torch.equal(mine, theirs)
    for mine, theirs in zip(copies[::4], originals[::4]):
        assert np.array_equal(cache.stats(mine.path), cache.stats(theirs.path))
        assert not torch.equal(load_audio(mine.path, channels="mix"), load_audio(theirs.path))
