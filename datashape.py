"""Check a DCASE data folder before training: what it holds, and every problem in it.

    python datashape.py --data_dir dev_data

Prints per machine type and split the clip counts by section, domain and label, the durations, sample
rates and channels, the attribute values seen, the fbank shape and the model input a tuned model's clip
policy makes of it (MODEL_PATH; asd/clips.py: pad, crop, windows, or waveforms tiled or cut to a fixed
length; without a model, whole clips padded as train.py's CLIP_SECONDS whole does), and per machine type and for the folder which
channel modes (CHANNELS: near, far, mix, residual, both) the clips support: the modes that use the far
microphone need two channels in every clip (DCASE 2026). Exits non-zero with a list of every problem:
file names that follow no DCASE scheme, attributes that disagree with attributes_XX.csv, empty,
truncated, corrupt or NaN clips, clips too short for one EAT patch or longer than the encoder's reach
(the loaders refuse them rather than cut them), clips with too few channels for the CHANNELS mode asked
for, and machine types without train or test clips. What the loader accepts with a warning (all-silent
clips, clips at another sample rate, which are resampled) is listed as a WARNING naming the clips;
warnings alone exit 0.
"""

from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from asd.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import numpy as np
import soundfile as sf
from tqdm import tqdm

from asd.checkpoints import read_tuned
from asd.cli import parse_config, print_config
from asd.clips import ClipPolicy
from asd.fbank import ENCODER_MAX_FRAMES, NUM_MEL_BINS, SAMPLE_RATE, num_frames
from dataset import (
    SPLITS as DCASE_SPLITS,
)
from dataset import (
    ClipNameError,
    apply_attribute_row,
    attribute_row_for,
    machine_type_dirs,
    parse_clip_name,
    read_attribute_tables,
    too_long_message,
    wav_files,
)
from model import EATConfig
from preprocessing import CHANNEL_MODES, AudioError, channels_needed, check_wav_header

# folder with <machine_type>/{train,test}/*.wav
DATA_DIR = "dev_data"
# machine types to check (empty: all)
MACHINE_TYPES = []
# splits every machine type must have
SPLITS = ["train", "test"]
# read every clip's samples to find silent or NaN clips (False: headers only)
DECODE = True
# tuned model whose clip policy the summary applies to each split's clips ("": whole clips, padded to a
# multiple of 32 frames)
MODEL_PATH = ""
# progress bar while reading clips
PROGRESS = True
# also require clips fit for this channel mode (near, far, mix, residual, both)
CHANNELS = ""
# allowed values of the constants above, checked by asd.cli.parse_config
_LIMITS = {"CHANNELS": ("", "near", "far", "mix", "residual", "both")}


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
    machine_dir: Path, split: str, rows: dict, cfg, problems: list[str], warnings: list[str]
) -> SplitSummary:
    """Parse and inspect every clip of one machine type's split, adding what is wrong to ``problems``
    and what the loader only warns about to ``warnings``."""
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
    return " ".join(f"{key}:{n}" for key, n in sorted(counter.items(), key=lambda kv: str(kv[0])))


def model_input(frames: int, policy: ClipPolicy) -> str:
    """The model input ``policy`` makes of a clip of ``frames`` fbank frames, and how."""
    target = policy.input_frames(frames)
    shape = f"model input [1, {target}, {NUM_MEL_BINS}]"
    if policy.seconds is not None:
        return f"{shape} (waveform tiled or cut to {policy.seconds:g} s)"
    fit = "pad" if frames < target else ("crop" if frames > target else "exact")
    windows = -(-frames // target)
    return f"{shape} ({fit}; {windows} window{'s' if windows > 1 else ''} to cover the clip)"


def print_summary(machine: str, split: str, s: SplitSummary, policy: ClipPolicy) -> None:
    if s.clips == 0 and not s.durations:
        print(f"  {split:<5} no clips")
        return
    print(
        f"  {split:<5} {s.clips} clips | sections {counts(s.sections)} | domains {counts(s.domains)} | labels {counts(s.labels)}"
    )
    if s.durations:
        d = np.asarray(s.durations)
        print(
            f"        duration {d.mean():.2f} s (min {d.min():.2f}, max {d.max():.2f}) | "
            f"rate {counts(s.sample_rates)} Hz | channels {counts(s.channels)} | {counts(s.subtypes)}"
        )
    if s.frames:
        frames = s.frames.most_common(1)[0][0]
        spread = f" (clips span {min(s.frames)}..{max(s.frames)} frames)" if len(s.frames) > 1 else ""
        print(f"        fbank [{frames}, {NUM_MEL_BINS}]{spread} -> {model_input(frames, policy)}")
    if s.attributes:
        print(
            "        attributes "
            + " | ".join(f"{k} = {', '.join(sorted(v))}" for k, v in s.attributes.items())
        )


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


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(globals(), argv, description=__doc__)
    print_config(cfg)
    problems: list[str] = []
    warnings: list[str] = []
    policy = (
        ClipPolicy.from_settings(read_tuned(cfg.model_path)["settings"]) if cfg.model_path else ClipPolicy()
    )
    print(
        f"clip policy: {policy.describe()}"
        + (f" (as {cfg.model_path} was trained)" if cfg.model_path else "")
    )
    try:
        machine_dirs = machine_type_dirs(cfg.data_dir, cfg.machine_types or None)
    except FileNotFoundError as exc:
        print(f"PROBLEM: {exc}")
        return 1
    bad_splits = [s for s in cfg.splits if s not in DCASE_SPLITS]
    if bad_splits:
        print(f"PROBLEM: unknown split(s) {bad_splits}; expected {list(DCASE_SPLITS)}")
        return 1
    summaries = {}
    folder_channels: Counter = Counter()
    print(f"data folder {cfg.data_dir}: {len(machine_dirs)} machine types")
    for machine_dir in machine_dirs:
        machine = machine_dir.name
        try:
            rows = read_attribute_tables(machine_dir)
        except (ValueError, KeyError, OSError) as exc:
            problems.append(f"{machine_dir}: unreadable attributes CSV ({exc})")
            rows = {}
        print(f"\n== {machine} ==" + (f" (attributes CSV: {len(rows)} rows)" if rows else ""))
        for split in cfg.splits:
            summary = check_split(machine_dir, split, rows, cfg, problems, warnings)
            summaries[machine, split] = summary
            if summary.clips == 0 and not wav_files(machine_dir / split):
                problems.append(f"{machine}: no {split} clips in {machine_dir / split}")
            print_summary(machine, split, summary, policy)
        machine_channels = sum((summaries[machine, split].channels for split in cfg.splits), Counter())
        report_channels(machine, machine_channels, cfg.channels, problems)
        folder_channels += machine_channels
    if folder_channels:
        print(f"\nchannel modes every clip supports: {', '.join(channel_modes(folder_channels))}")
    check_sample_rates(summaries, warnings)
    if warnings:
        print(f"\n{len(warnings)} warning(s) (usable, but check them):")
        for warning in warnings:
            print(f"  - WARNING: {warning}")
    if problems:
        print(f"\n{len(problems)} problem(s) found:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("\nno problems found" + (" (see the warnings above)" if warnings else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
