"""Reading clips (the channel views of two-channel recordings) and the on-disk feature cache; the
settings the scripts share (FEATURE_CACHE, CHANNELS, RESIDUAL_WEIGHT, CHANNEL_COMBINE) are written here.

    wav = load_audio("dev_data/fan/train/section_00_source_train_normal_0000_m-n_W.wav")
    cache = FeatureCache()                     # fbank (asd/data/fbank.py) and statistics (asd/data/signal_stats.py)
    fbank, stats = cache.fbank(path), cache.stats(path)

FeatureCache keeps the fbank and the statistics of every clip on disk so no epoch or script computes
them twice; how a clip is padded, cropped or tiled for the encoder is asd/data/clips.py's job.

Channels (DCASE 2026 clips are two-channel: 0 near the machine, 1 far from it). ``channels`` picks
what the encoder hears: near (channel 0, the default and the official 2026 baseline's; a mono clip
is its own channel 0, so a two-channel clip gives exactly its channel-0 mono copy's numbers), far
(channel 1), mix (the mean, this project's behaviour before the setting), residual (near -
residual_weight * far on the waveform, LUDO's "Residual View"), both (the two channels; the
embedding side embeds channel_views('both') = near and far one by one and combines the two
embeddings). far/residual/both on a mono clip are an AudioError naming the file. The mode is part
of feature_settings (the cache key); channel_record() is what model and embedding files record and
check_channel_record() refuses a mismatch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from asd.base.files import atomic_path, atomic_torch_save
from asd.base.freshness import file_key
from asd.data.fbank import (
    FBANK_MEAN,
    FBANK_STD,
    FRAME_LENGTH_MS,
    FRAME_SHIFT_MS,
    NUM_MEL_BINS,
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    wav_to_fbank,
    wavs_to_fbank_batch,
)
from asd.data.signal_stats import ROLLOFF, STAT_FFT, STAT_HOP, STAT_NAMES, signal_stats

# on-disk fbank/statistics cache folder, keyed by each clip's bytes and the feature settings; "none" = off
FEATURE_CACHE = "cache/features"
FEATURE_VERSION = 1  # bump when the feature code changes, so old caches are ignored
# which microphone is heard (DCASE 2026 clips: channel 0 near the machine, channel 1 far from it):
# near = channel 0 (the official 2026 baseline's), far = channel 1, mix = mean of the channels (the
# project's behaviour before this setting), residual = near - RESIDUAL_WEIGHT * far on the waveform
# (LUDO's "Residual View"), both = the two channels, embedded one by one (see channel_views)
CHANNEL_MODES = ("near", "far", "mix", "residual", "both")
TWO_CHANNEL_MODES = ("far", "residual", "both")
CHANNELS = "near"  # default channel mode of the loaders
RESIDUAL_WEIGHT = 0.5  # weight of the far channel in 'residual' (LUDO's DCASE 2026 system: 0.5)
# how 'both' combines its two embeddings: concat = [near, far] (twice the width), residual = near
# embedding - RESIDUAL_WEIGHT * far embedding (the residual in embedding space)
CHANNEL_COMBINES = ("concat", "residual")
CHANNEL_COMBINE = "concat"  # default combination of 'both'
LEGACY_CHANNEL_RECORD = {"channels": "mix"}  # what a model/embedding file without a record was made with


class AudioError(ValueError):
    """A clip that cannot be used; the message always names the file."""


class AudioWarning(UserWarning):
    """A clip that is usable but unusual (resampled, all silent)."""


# -----------------------------------------------------------------------------
# reading audio


def check_wav_header(path: str | os.PathLike) -> None:
    """Raise AudioError when a RIFF/WAVE file declares more audio bytes than it holds (truncated copy)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not a plain RIFF wav; soundfile decides
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                available = size - offset - 8
                if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                    raise AudioError(
                        f"{path}: truncated file: header declares {chunk_size} bytes of audio, "
                        f"the file holds {available}"
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)
    raise AudioError(f"{path}: truncated or corrupt WAV file: no audio ('data') chunk found")


def _channel_error(path: Path, channels: str, count: int) -> AudioError:
    return AudioError(
        f"{path}: CHANNELS={channels!r} needs a second (far-microphone) channel, but the clip has "
        f"{count} channel; use CHANNELS 'near' or 'mix' for mono data"
    )


def check_channel_mode(channels: str, residual_weight: float = RESIDUAL_WEIGHT) -> None:
    """ValueError for an unknown channel mode or a residual weight that is not a finite number."""
    if channels not in CHANNEL_MODES:
        raise ValueError(f"unknown channel mode {channels!r}; choose one of {CHANNEL_MODES}")
    if not math.isfinite(float(residual_weight)):
        raise ValueError(f"residual_weight must be a finite number, got {residual_weight!r}")


def check_clip_channels(path: str | os.PathLike, count: int, channels: str) -> None:
    """AudioError naming the file when a clip of ``count`` channels cannot be read in mode ``channels``."""
    if count < channels_needed(channels):
        raise _channel_error(Path(path), channels, count)


def channels_needed(channels: str) -> int:
    """How many channels a clip needs for ``channels``: 2 for far/residual/both, 1 for near/mix."""
    check_channel_mode(channels)
    return 2 if channels in TWO_CHANNEL_MODES else 1


def channel_views(channels: str) -> tuple[str, ...]:
    """The single-channel readings a mode embeds: ('near', 'far') for 'both', else (channels,).

    'both' is embedded once per view (one FeatureCache per view) and the two embeddings are then
    combined (concatenated, or near minus a weight times far) by the embedding side.
    """
    check_channel_mode(channels)
    return ("near", "far") if channels == "both" else (channels,)


def select_channels(
    data: np.ndarray, channels: str, residual_weight: float, path: str | os.PathLike = "<array>"
) -> np.ndarray:
    """The samples of mode ``channels`` from soundfile's [samples, channels] array (see CHANNEL_MODES).

    Returns [samples] for one view and [2, samples] for 'both'; 'near' is channel 0 exactly.
    """
    check_channel_mode(channels, residual_weight)
    check_clip_channels(path, data.shape[1], channels)
    if channels == "near":
        return data[:, 0]
    if channels == "far":
        return data[:, 1]
    if channels == "mix":  # the project's behaviour before the CHANNELS setting
        return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if channels == "residual":
        return data[:, 0] - np.float32(residual_weight) * data[:, 1]
    return np.ascontiguousarray(data[:, :2].T)  # both


def load_audio(
    path: str | os.PathLike,
    target_sr: int = SAMPLE_RATE,
    channels: str = CHANNELS,
    residual_weight: float = RESIDUAL_WEIGHT,
) -> torch.Tensor:
    """Read a clip as a float32 tensor at ``target_sr``: [samples], or [2, samples] for ``channels='both'``.

    ``channels`` picks what is heard (CHANNEL_MODES): 'near' channel 0 (a mono clip is its own
    channel 0, so a two-channel clip gives exactly the samples of its channel-0 mono copy), 'far'
    channel 1, 'mix' the mean of all channels, 'residual' near - residual_weight * far, 'both' the two
    channels. A mode that needs a second channel raises AudioError on a mono clip. Other sample rates
    are resampled with an AudioWarning. Unreadable, truncated, empty, too short (< one 25 ms frame)
    and NaN/inf clips raise AudioError; an all-silent clip only warns, because a test clip must still
    receive a score.
    """
    path = Path(path)
    check_channel_mode(channels, residual_weight)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    check_wav_header(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for broken files
        raise AudioError(f"{path}: unreadable audio file ({exc})") from exc
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"{path}: empty audio file (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    wav = torch.from_numpy(select_channels(data, channels, residual_weight, path))
    if sr != target_sr:
        warnings.warn(
            f"{path}: sample rate {sr} Hz, resampling to {target_sr} Hz", AudioWarning, stacklevel=2
        )
        wav = torchaudio.functional.resample(wav, sr, target_sr)
    if wav.shape[-1] < WINDOW_SAMPLES:
        raise AudioError(f"{path}: too short ({wav.shape[-1]} samples; at least {WINDOW_SAMPLES} are needed)")
    if not torch.any(wav != 0):
        warnings.warn(f"{path}: clip is all silent (every sample is zero)", AudioWarning, stacklevel=2)
    return wav.contiguous()


def channel_record(
    channels: str = CHANNELS, residual_weight: float = RESIDUAL_WEIGHT, combine: str | None = None
) -> dict:
    """The channel settings to record in model and embedding files (each setting only where it acts).

    ``combine`` (how 'both' combines its two embeddings, CHANNEL_COMBINES) is recorded for 'both'
    only, when given; the weight where it acts (channels 'residual', or 'both' combined by 'residual').
    """
    check_channel_mode(channels, residual_weight)
    record: dict = {"channels": channels}
    if channels == "both" and combine is not None:
        if combine not in CHANNEL_COMBINES:
            raise ValueError(f"unknown channel combination {combine!r}; choose one of {CHANNEL_COMBINES}")
        record["combine"] = combine
    if channels == "residual" or record.get("combine") == "residual":
        record["residual_weight"] = float(residual_weight)
    return record


def _describe_channels(record: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in sorted(record.items()))


def check_channel_record(
    recorded: dict | None, expected: dict, source: str | os.PathLike, reader: str = "this run"
) -> None:
    """ValueError naming ``source`` and ``reader`` when the channel settings ``source`` recorded
    differ from the ones ``reader`` uses (``expected``).

    A file without a record predates the CHANNELS setting and was made from the channel mean
    (LEGACY_CHANNEL_RECORD). Extra keys (e.g. how 'both' combines its embeddings) must match too.
    """
    recorded = dict(recorded) if recorded else dict(LEGACY_CHANNEL_RECORD)
    if recorded == expected:
        return
    legacy = (
        " (it was written before the CHANNELS setting existed and averaged the channels, as 'mix' does;"
        " on mono data 'near' and 'mix' read the same samples)"
        if recorded == LEGACY_CHANNEL_RECORD
        else ""
    )
    raise ValueError(
        f"{source} was made with {_describe_channels(recorded)}{legacy}, but {reader} reads the clips "
        f"with {_describe_channels(expected)}: use the same --channels (and --residual_weight, "
        f"--channel_combine) for training, embedding and scoring, or rebuild {source}"
    )


# -----------------------------------------------------------------------------
# on-disk cache


def feature_settings(channels: str = CHANNELS, residual_weight: float = RESIDUAL_WEIGHT) -> dict:
    """Everything that changes the numbers a FeatureCache stores (the channel mode included)."""
    return {
        **channel_record(channels, residual_weight),
        "version": FEATURE_VERSION,
        "sample_rate": SAMPLE_RATE,
        "num_mel_bins": NUM_MEL_BINS,
        "frame_length_ms": FRAME_LENGTH_MS,
        "frame_shift_ms": FRAME_SHIFT_MS,
        "fbank_mean": FBANK_MEAN,
        "fbank_std": FBANK_STD,
        "stat_names": STAT_NAMES,
        "stat_fft": STAT_FFT,
        "stat_hop": STAT_HOP,
        "rolloff": ROLLOFF,
    }


class FeatureCache:
    """Per-clip fbank and statistics, computed once and kept under ``cache_dir`` (None: no disk cache).

    An entry is keyed by a hash of the file's bytes and by the feature settings, so a clip whose
    audio changed (even at the same size and modification time), or changed settings, are
    recomputed, and a copied or moved clip is not. ``hits`` and ``misses`` count lookups.
    ``channels`` is one single-channel view (near, far, mix, residual; for 'both' use one cache per
    channel_views('both')), part of the key, so a cache made for one mode is never read for another.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike | None = FEATURE_CACHE,
        settings: dict | None = None,
        channels: str = CHANNELS,
        residual_weight: float = RESIDUAL_WEIGHT,
    ):
        check_channel_mode(channels, residual_weight)
        if channels == "both":
            raise ValueError(
                "a FeatureCache reads one channel view; for channels='both' use one cache per "
                "channel_views('both') (near and far) and combine their embeddings"
            )
        self.channels, self.residual_weight = channels, residual_weight
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.settings = settings if settings is not None else feature_settings(channels, residual_weight)
        self._settings_json = json.dumps(self.settings, sort_keys=True)
        self.hits = 0
        self.misses = 0

    def _load(self, path: str | os.PathLike) -> torch.Tensor:
        return load_audio(path, channels=self.channels, residual_weight=self.residual_weight)

    def key(self, path: str | os.PathLike, kind: str) -> str:
        content = file_key(path)  # the same blake2b of the bytes as before: existing caches stay valid
        return hashlib.sha1(json.dumps([kind, content, self._settings_json]).encode()).hexdigest()

    def _entry(self, path: str | os.PathLike, kind: str, suffix: str) -> Path | None:
        if self.cache_dir is None:
            return None
        if not Path(path).is_file():
            raise AudioError(f"{path}: no such file")
        key = self.key(path, kind)
        return self.cache_dir / kind / key[:2] / f"{key}{suffix}"

    def _read(self, entry: Path | None, path, loader):
        """The cached value at ``entry``, or None (a broken entry warns and counts as missing)."""
        if entry is None or not entry.is_file():
            return None
        try:
            value = loader(entry)
        except Exception:
            warnings.warn(
                f"unreadable cache entry {entry} for {path}; recomputing", AudioWarning, stacklevel=3
            )
            return None
        self.hits += 1
        return value

    def fbank(self, path: str | os.PathLike) -> torch.Tensor:
        """EAT's normalised fbank [frames, 128] of the clip at ``path``."""
        entry = self._entry(path, "fbank", ".pt")
        value = self._read(entry, path, lambda e: torch.load(e, weights_only=True))
        if value is None:
            self.misses += 1
            value = wav_to_fbank(self._load(path))
            if entry is not None:
                atomic_torch_save(value, entry)
        return value

    def fbanks(
        self, paths: list[str | os.PathLike], device: str | torch.device = "auto", batch_size: int = 32
    ) -> list[torch.Tensor]:
        """fbank() of many clips; the missing ones are computed in batches of equal length on ``device``."""
        paths = list(paths)
        entries = [self._entry(path, "fbank", ".pt") for path in paths]
        values = [
            self._read(entry, path, lambda e: torch.load(e, weights_only=True))
            for entry, path in zip(entries, paths)
        ]
        missing = [i for i, v in enumerate(values) if v is None]
        by_length: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for i in missing:
            wav = self._load(paths[i])
            by_length.setdefault(wav.numel(), []).append((i, wav))
        for group in by_length.values():
            for start in range(0, len(group), batch_size):
                part = group[start : start + batch_size]
                batch = wavs_to_fbank_batch(torch.stack([w for _, w in part]), device, chunk=batch_size)
                for (i, _), fbank in zip(part, batch):
                    self.misses += 1
                    values[i] = fbank.clone()
                    if entries[i] is not None:
                        atomic_torch_save(values[i], entries[i])
        return values

    def stats(self, path: str | os.PathLike) -> np.ndarray:
        """signal_stats of the clip at ``path``."""
        entry = self._entry(path, "stats", ".npy")
        value = self._read(entry, path, np.load)
        if value is None:
            self.misses += 1
            value = signal_stats(self._load(path))
            if entry is not None:
                with atomic_path(entry) as tmp, open(tmp, "wb") as f:
                    np.save(f, value)
        return value
