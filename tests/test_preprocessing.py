"""EAT's fbank, audio loading and its failures, signal statistics, and the feature cache."""

from __future__ import annotations

import math
import os
import struct

import numpy as np
import pytest
import soundfile as sf
import torch
from torchaudio.compliance import kaldi

from asd.data import preprocessing
from asd.data.clips import pad_or_crop, split_windows
from asd.data.fbank import (
    NUM_MEL_BINS,
    PAD_VALUE,
    SAMPLE_RATE,
    normalise_fbank,
    num_frames,
    wav_to_fbank,
    wavs_to_fbank_batch,
)
from asd.data.preprocessing import AudioError, AudioWarning, FeatureCache, feature_settings, load_audio
from asd.data.signal_stats import STAT_MEL_BANDS, STAT_NAMES, signal_stats

SR = SAMPLE_RATE


def tone(freq: float, seconds: float = 1.0, sr: int = SR, amp: float = 1.0) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)


def write(path, data, sr=SR, subtype="PCM_16"):
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def eat_reference(wav: torch.Tensor) -> torch.Tensor:
    """EAT's front end written out directly, as in its released recipe."""
    wav = wav - wav.mean()
    fbank = kaldi.fbank(
        wav.unsqueeze(0),
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    return (fbank - (-4.268)) / (4.569 * 2)


# -----------------------------------------------------------------------------
# fbank


def test_wav_to_fbank_equals_direct_torchaudio_call():
    gen = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(2 * SR, generator=gen) + 0.3 + 0.2 * torch.from_numpy(tone(440, 2)).float()
    fbank = wav_to_fbank(wav)
    assert fbank.shape == (1 + (2 * SR - 400) // 160, NUM_MEL_BINS) == (198, 128)
    assert torch.equal(fbank, eat_reference(wav))
    # the mean is removed first: a DC offset does not change the features
    assert torch.allclose(wav_to_fbank(wav + 0.5), fbank, atol=1e-4)


def test_batched_fbank_reproduces_kaldi(samples_dir):
    gen = torch.Generator().manual_seed(1)
    synthetic = torch.stack(
        [
            0.05 * torch.randn(SR, generator=gen) + 0.2,
            torch.from_numpy(tone(1000, 1, amp=0.5)).float(),
            torch.zeros(SR),  # silence hits the log floor in both
        ]
    )
    real = [
        load_audio(p)[: SR * 3]
        for p in sorted((samples_dir / "dcase2023_dev" / "fan" / "train").glob("*.wav"))
    ]
    for batch in (synthetic, torch.stack(real)):
        expected = torch.stack([wav_to_fbank(w) for w in batch])
        got = wavs_to_fbank_batch(batch, device="cpu", chunk=2)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() < 1e-4


def test_pad_or_crop_and_windows():
    fbank = torch.arange(10 * 128, dtype=torch.float32).view(10, 128)
    padded = pad_or_crop(fbank, 16)
    assert padded.shape == (16, 128) and torch.equal(padded[:10], fbank)
    # EAT pads the raw log-mel with zeros and normalises afterwards
    assert torch.allclose(padded[10:], normalise_fbank(torch.zeros(6, 128)))
    assert abs(PAD_VALUE - 4.268 / (2 * 4.569)) < 1e-9
    assert torch.equal(pad_or_crop(fbank, 4), fbank[:4])
    assert split_windows(fbank, 16).shape == (1, 16, 128)
    windows = split_windows(fbank, 4)  # 10 frames -> 3 windows starting 0, 3, 6
    assert windows.shape == (3, 4, 128)
    assert torch.equal(windows[0], fbank[:4]) and torch.equal(windows[-1], fbank[-4:])
    covered = {int(v) // 128 for w in windows for v in w[:, 0]}
    assert covered == set(range(10))


# -----------------------------------------------------------------------------
# loading audio


def test_stereo_reads_the_near_channel_by_default_and_mixes_on_request(tmp_path):
    left, right = tone(300, 1, amp=0.5), 0.25 * np.ones(SR)
    path = write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), subtype="FLOAT")
    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.ndim == 1
    assert np.allclose(wav.numpy(), left, atol=1e-7)
    assert np.allclose(load_audio(path, channels="mix").numpy(), (left + right) / 2, atol=1e-6)


def test_other_sample_rate_is_resampled_with_warning(tmp_path):
    path = write(tmp_path / "cd.wav", tone(1000, 1.0, sr=44100, amp=0.5), sr=44100)
    with pytest.warns(AudioWarning, match="44100 Hz"):
        wav = load_audio(path)
    assert wav.numel() == SR
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    assert abs(np.argmax(spectrum) - 1000) <= 1  # 1 Hz bins: still a 1 kHz tone


@pytest.mark.parametrize("kind", ["empty", "short_header", "truncated_data", "not_audio", "nan", "too_short"])
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"bad_{kind}.wav"
    if kind == "empty":
        write(path, np.zeros(0))
        message = "empty"
    elif kind == "short_header":
        write(path, tone(200, 1))
        path.write_bytes(path.read_bytes()[:30])
        message = "truncated|corrupt|unreadable"
    elif kind == "truncated_data":
        write(path, tone(200, 1))
        path.write_bytes(path.read_bytes()[: 44 + 1000])
        message = "truncated"
    elif kind == "not_audio":
        path.write_text("this is not audio")
        message = "unreadable"
    elif kind == "nan":
        data = tone(200, 1)
        data[100] = np.nan
        write(path, data, subtype="FLOAT")
        message = "NaN"
    else:
        write(path, tone(200, 0.01))
        message = "too short"
    with pytest.raises(AudioError, match=message) as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_header_check_reads_the_declared_size(tmp_path):
    path = write(tmp_path / "ok.wav", tone(200, 0.5))
    raw = path.read_bytes()
    data_at = raw.index(b"data")
    declared = struct.unpack("<I", raw[data_at + 4 : data_at + 8])[0]
    assert declared == len(raw) - data_at - 8  # a complete file passes
    load_audio(path)


def test_silent_clip_warns_but_loads(tmp_path):
    path = write(tmp_path / "silent.wav", np.zeros(SR))
    with pytest.warns(AudioWarning, match="silent") as record:
        wav = load_audio(path)
    assert str(path) in str(record[0].message)
    fbank = wav_to_fbank(wav)
    assert torch.isfinite(fbank).all()


# -----------------------------------------------------------------------------
# statistics


def stats_of(signal) -> dict[str, float]:
    values = signal_stats(signal)
    assert values.dtype == np.float32 and values.shape == (len(STAT_NAMES),)
    assert np.isfinite(values).all()
    return dict(zip(STAT_NAMES, values.tolist()))


def test_stat_names_are_unique_and_cover_the_requested_statistics():
    assert len(set(STAT_NAMES)) == len(STAT_NAMES)
    for name in [
        "rms",
        "crest_factor",
        "kurtosis",
        "skewness",
        "zero_crossing_rate",
        "spectral_centroid",
        "spectral_bandwidth",
        "spectral_flatness",
        "spectral_rolloff",
        "logmel_mean_00",
        "logmel_std_00",
    ]:
        assert name in STAT_NAMES


def test_stats_of_a_sine():
    s = stats_of(tone(1000, 2, amp=0.5))
    assert s["rms"] == pytest.approx(0.5 / math.sqrt(2), rel=1e-4)
    assert s["crest_factor"] == pytest.approx(math.sqrt(2), rel=1e-3)
    assert s["kurtosis"] == pytest.approx(-1.5, abs=1e-3)
    assert s["skewness"] == pytest.approx(0.0, abs=1e-3)
    assert s["zero_crossing_rate"] == pytest.approx(2 * 1000 / SR, rel=1e-2)
    assert s["spectral_centroid"] == pytest.approx(1000, abs=20)
    assert s["spectral_rolloff"] == pytest.approx(1000, abs=40)
    assert s["spectral_bandwidth"] < 100
    assert s["spectral_flatness"] < 1e-3


def test_stats_of_white_noise_and_impulses():
    noise = np.random.default_rng(0).standard_normal(2 * SR)
    s = stats_of(noise)
    assert s["kurtosis"] == pytest.approx(0.0, abs=0.1)
    assert s["skewness"] == pytest.approx(0.0, abs=0.05)
    assert s["zero_crossing_rate"] == pytest.approx(0.5, abs=0.02)
    assert s["spectral_centroid"] == pytest.approx(SR / 4, rel=0.05)
    assert s["spectral_flatness"] > 0.4  # exp(-euler gamma) = 0.56 for white noise
    clicks = np.zeros(2 * SR)
    clicks[::1600] = 1.0
    assert stats_of(clicks)["kurtosis"] > 50 > s["kurtosis"]


def test_band_statistics_follow_the_spectrum():
    low, high = stats_of(tone(200, 1, amp=0.5)), stats_of(tone(6000, 1, amp=0.5))
    last = f"logmel_mean_{STAT_MEL_BANDS - 1:02d}"
    assert low["logmel_mean_01"] > high["logmel_mean_01"]
    assert high[last] > low[last]


def test_stats_of_silence_are_finite():
    s = stats_of(np.zeros(SR))
    assert s["rms"] == 0.0 and s["crest_factor"] == 0.0


# -----------------------------------------------------------------------------
# cache


@pytest.fixture
def counted(monkeypatch):
    """Count the real feature computations behind FeatureCache."""
    calls = {"fbank": 0, "stats": 0}
    real_fbank, real_stats = preprocessing.wav_to_fbank, preprocessing.signal_stats

    def fbank(wav):
        calls["fbank"] += 1
        return real_fbank(wav)

    def stats(wav, *args, **kwargs):
        calls["stats"] += 1
        return real_stats(wav, *args, **kwargs)

    monkeypatch.setattr(preprocessing, "wav_to_fbank", fbank)
    monkeypatch.setattr(preprocessing, "signal_stats", stats)
    return calls


def test_cache_hit_computes_nothing(tmp_path, counted):
    clip = write(tmp_path / "clip.wav", tone(500, 1, amp=0.3))
    cache = FeatureCache(tmp_path / "cache")
    first = cache.fbank(clip)
    assert counted["fbank"] == 1 and cache.misses == 1
    second = cache.fbank(clip)
    again = FeatureCache(tmp_path / "cache").fbank(clip)  # a second script, same folder
    assert counted["fbank"] == 1 and cache.hits == 1
    assert torch.equal(first, second) and torch.equal(first, again)
    assert torch.equal(first, wav_to_fbank(load_audio(clip)))
    stats = cache.stats(clip)
    assert np.array_equal(stats, cache.stats(clip)) and counted["stats"] == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_cache_follows_the_audio_not_the_file_dates_and_the_settings(tmp_path, counted):
    clip = write(tmp_path / "clip.wav", tone(500, 1, amp=0.3))
    cache = FeatureCache(tmp_path / "cache")
    original = cache.fbank(clip)
    stat = clip.stat()
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touch: same audio
    assert torch.equal(cache.fbank(clip), original) and counted["fbank"] == 1
    write(clip, tone(2000, 1, amp=0.3))  # new audio, same size and modification time
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert clip.stat().st_size == stat.st_size
    rewritten = cache.fbank(clip)
    assert counted["fbank"] == 2 and not torch.equal(rewritten, original)
    assert torch.equal(rewritten, wav_to_fbank(load_audio(clip)))
    other = FeatureCache(tmp_path / "cache", settings={**feature_settings(), "version": -1})
    other.fbank(clip)
    assert counted["fbank"] == 3
    cache.fbank(clip)
    assert counted["fbank"] == 3  # both entries live on


def test_cache_recovers_from_a_broken_entry_and_can_be_disabled(tmp_path, counted):
    clip = write(tmp_path / "clip.wav", tone(500, 1, amp=0.3))
    cache = FeatureCache(tmp_path / "cache")
    expected = cache.fbank(clip)
    (entry,) = (tmp_path / "cache").rglob("*.pt")
    entry.write_bytes(b"garbage")
    with pytest.warns(AudioWarning, match="recomputing"):
        assert torch.equal(cache.fbank(clip), expected)
    no_disk = FeatureCache(None)
    no_disk.fbank(clip)
    no_disk.fbank(clip)
    assert counted["fbank"] == 4
    with pytest.raises(AudioError, match="missing.wav"):
        cache.fbank(tmp_path / "missing.wav")


@pytest.mark.parametrize("samples", [400, 401, 559, 560, 16000, 16159])
def test_num_frames_matches_the_fbank(samples):
    assert wav_to_fbank(torch.randn(samples)).shape[0] == num_frames(samples)


def test_cache_fbanks_batches_the_missing_clips(tmp_path, counted):
    clips = [
        write(tmp_path / f"clip{i}.wav", tone(300 + 100 * i, 1 + (i % 2) * 0.5, amp=0.3)) for i in range(5)
    ]
    cache = FeatureCache(tmp_path / "cache")
    first = cache.fbank(clips[2])  # one already cached
    batch = cache.fbanks(clips, device="cpu", batch_size=2)
    assert counted["fbank"] == 1 and cache.misses == 5 and cache.hits == 1  # the other 4: batched path
    assert torch.equal(batch[2], first)
    for clip, fbank in zip(clips, batch):
        assert fbank.shape == wav_to_fbank(load_audio(clip)).shape
        assert (fbank - wav_to_fbank(load_audio(clip))).abs().max() < 1e-4
    again = cache.fbanks(clips)
    assert cache.hits == 6 and all(torch.equal(a, b) for a, b in zip(again, batch))
    sizes = sorted(p.stat().st_size for p in (tmp_path / "cache").rglob("*.pt"))
    assert sizes[-1] < 2 * sizes[0]  # entries hold one clip, not a whole batch
