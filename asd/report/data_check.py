"""Inspecting a DCASE data folder's clips (datashape.py): what each machine type's split holds, and every
problem in it that the loaders would refuse or only warn about.

    summary = check_split(machine_dir, "train", rows, cfg, problems, warnings)

Problems: names that follow no DCASE scheme, attributes that disagree with attributes_XX.csv, empty,
truncated, corrupt or NaN clips, clips too short for one EAT patch or longer than the encoder's reach, too
few channels for a channel mode. Warnings: all-silent clips, clips at another or a mixed sample rate.
"""

from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile as sf
from tqdm import tqdm

from asd.data.dataset import too_long_message, wav_files
from asd.data.fbank import ENCODER_MAX_FRAMES, SAMPLE_RATE, num_frames
from asd.data.names import ClipNameError, apply_attribute_row, attribute_row_for, parse_clip_name
from asd.data.preprocessing import CHANNEL_MODES, AudioError, channels_needed, check_wav_header
from asd.model.model import EATConfig


@dataclass
class SplitSummary:
    """What one machine type's split holds."""

    clips: int = 0
    sections: Counter = field(default_factory=Counter)
    domains: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    durations: list = field(default_factory=list)
    sample_rates: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)
    subtypes: Counter = field(default_factory=Counter)
    attributes: dict = field(default_factory=lambda: defaultdict(set))
    frames: Counter = field(default_factory=Counter)  # fbank frames -> clips
    rate_clips: dict = field(default_factory=lambda: defaultdict(list))  # sample rate -> clip paths


_PATCH_FRAMES = EATConfig.patch_size  # the shortest fbank EAT can embed: one patch of frames


def inspect_audio(path: Path, decode: bool) -> tuple[sf._SoundFileInfo | None, str | None, str | None]:
    """(soundfile info or None, what is wrong or None, what the loader only warns about or None)."""
    if path.stat().st_size == 0:
        return None, f"{path}: empty (0 bytes)", None
    try:
        check_wav_header(path)
        info = sf.info(str(path))
    except AudioError as exc:
        return None, str(exc), None
    except Exception as exc:
        return None, f"{path}: unreadable audio file ({exc})", None
    if info.frames == 0:
        return info, f"{path}: empty audio file (0 samples)", None
    frames = fbank_frames(info.frames, info.samplerate)
    if frames < _PATCH_FRAMES:
        return (
            info,
            (
                f"{path}: too short ({info.frames / info.samplerate:.3f} s = {frames} fbank frames; "
                f"EAT needs at least {_PATCH_FRAMES})"
            ),
            None,
        )
    if frames > ENCODER_MAX_FRAMES:
        return info, too_long_message(path, frames), None
    if not decode:
        return info, None, None
    try:
        dtype = "int16" if info.subtype == "PCM_16" else "float32"
        data, _ = sf.read(str(path), dtype=dtype)
    except Exception as exc:
        return info, f"{path}: corrupt audio data ({exc})", None
    if dtype == "float32" and not np.isfinite(data).all():
        return info, f"{path}: audio contains NaN or infinite samples", None
    if not np.any(data):
        return info, None, f"{path}: clip is all silent (every sample is zero)"
    return info, None, None


def fbank_frames(samples: int, sample_rate: int) -> int:
    """Frames of EAT's fbank for a clip of ``samples`` at ``sample_rate`` (after resampling to 16 kHz)."""
    return num_frames(math.ceil(samples * SAMPLE_RATE / sample_rate))


def check_split(
    machine_dir: Path, split: str, rows: dict, cfg: SimpleNamespace, problems: list[str], warnings: list[str]
) -> SplitSummary:
    """Parse and inspect every clip of one machine type's split, adding what is wrong to ``problems``
    and what the loader only warns about to ``warnings`` (``cfg``: PROGRESS and DECODE)."""
    summary = SplitSummary()
    files = wav_files(machine_dir / split)
    for path in tqdm(
        files, desc=f"{machine_dir.name}/{split}", disable=not cfg.progress, leave=False, file=sys.stdout
    ):
        try:
            record = apply_attribute_row(
                parse_clip_name(path, machine_dir.name, split), attribute_row_for(rows, path)
            )
        except (ClipNameError, ValueError) as exc:
            problems.append(str(exc))
            record = None
        info, problem, warning = inspect_audio(path, cfg.decode)
        problems += [problem] if problem else []
        warnings += [warning] if warning else []
        if info is not None:
            summary.sample_rates[info.samplerate] += 1
            summary.rate_clips[info.samplerate].append(path)
            summary.channels[info.channels] += 1
            summary.subtypes[info.subtype] += 1
            summary.durations.append(info.frames / info.samplerate)
        if record is None:
            continue
        summary.clips += 1
        summary.sections[record.section] += 1
        summary.domains[record.domain or "-"] += 1
        summary.labels[record.label or "unlabelled"] += 1
        for key, value in record.attributes:
            summary.attributes[key].add(value)
        if problem is None and info is not None:
            summary.frames[fbank_frames(info.frames, info.samplerate)] += 1
    return summary


def counts(counter: Counter) -> str:
    """``key:n`` pairs of ``counter``, sorted by key."""
    return " ".join(f"{key}:{n}" for key, n in sorted(counter.items(), key=lambda kv: str(kv[0])))


def check_sample_rates(summaries: dict, warnings: list[str], shown: int = 10) -> None:
    """Warn about clips whose rate differs from most clips' (named, up to ``shown`` per rate) and
    about a rate other than SAMPLE_RATE: the loader resamples them, which may change their sound."""
    rate_clips: dict[int, list[Path]] = defaultdict(list)
    for s in summaries.values():
        for rate, paths in s.rate_clips.items():
            rate_clips[rate] += paths
    if not rate_clips:
        return
    usual = max(rate_clips, key=lambda rate: len(rate_clips[rate]))
    for rate, paths in sorted(rate_clips.items()):
        if rate != usual:
            names = ", ".join(map(str, paths[:shown])) + (
                f" and {len(paths) - shown} more" if len(paths) > shown else ""
            )
            warnings.append(
                f"mixed sample rates: {len(paths)} clip(s) at {rate} Hz while {len(rate_clips[usual])} "
                f"are at {usual} Hz: {names}"
            )
    if usual != SAMPLE_RATE:
        warnings.append(f"most clips are {usual} Hz; they will be resampled to {SAMPLE_RATE} Hz")


def channel_modes(channels: Counter) -> list[str]:
    """The channel modes every clip counted in ``channels`` (channel count -> clips) can be read in."""
    fewest = min(channels) if channels else 0
    return [mode for mode in CHANNEL_MODES if fewest >= channels_needed(mode)]


def report_channels(machine: str, channels: Counter, wanted: str, problems: list[str]) -> None:
    """Print which channel modes a machine type's clips support; a problem when ``wanted`` is not one."""
    if not channels:
        return
    modes = channel_modes(channels)
    print(f"  channels {counts(channels)} -> modes {', '.join(modes)}")
    if wanted and wanted not in modes:
        problems.append(
            f"{machine}: CHANNELS={wanted!r} needs two channels, but {channels[1]} clip(s) are mono "
            "(use near or mix, which read a mono clip as it is)"
        )
