"""Check a DCASE data folder before training: what it holds, and every problem in it.

    python datashape.py --data_dir dev_data

Prints per machine type and split the clip counts by section, domain and label, the durations, sample
rates and channels, the attribute values seen, the fbank shape and the model input a tuned model's clip
policy makes of it (MODEL_PATH; asd/data/clips.py: pad, crop, windows, or waveforms tiled or cut to a fixed
length; without a model, whole clips padded as train.py's CLIP_SECONDS whole does), and per machine
type and for the folder which
channel modes (CHANNELS: near, far, mix, residual, both) the clips support: the modes that use the far
microphone need two channels in every clip (DCASE 2026). Exits non-zero with a list of every problem:
file names that follow no DCASE scheme, attributes that disagree with attributes_XX.csv, empty,
truncated, corrupt or NaN clips, clips too short for one EAT patch or longer than the encoder's reach
(the loaders refuse them rather than cut them), clips with too few channels for the CHANNELS mode asked
for, and machine types without train or test clips. What the loader accepts with a warning (all-silent
clips, clips at another sample rate, which are resampled) is listed as a WARNING naming the clips;
warnings alone exit 0.

    python datashape.py --data_dir dev_data,eval_data --eval_list eval_data_list_2023.csv

For the folders together (DATA_DIR comma-separated, as train.py's) it then prints what REPORT_RECIPE will use,
through train.py's own functions: the DCASE year detected from the clip names and machine types
(asd/base/years.py), the clip seconds, the number of classes (anonymised evaluation test clips counted under
their original names with EVAL_LIST) and SCAdaCos's fixed scale; and WARNS about each machine type and
section whose labelled test clips have no normal or no anomalous clip (its AUC is undefined).
"""

from __future__ import annotations

import sys
from collections import Counter
from types import SimpleNamespace

from asd.base.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import numpy as np

from asd.base.cli import parse_config, print_config
from asd.base.errors import run_script
from asd.data.clips import ClipPolicy
from asd.data.dataset import machine_type_dirs, wav_files
from asd.data.fbank import NUM_MEL_BINS
from asd.data.names import SPLITS as DCASE_SPLITS
from asd.data.names import read_attribute_tables
from asd.data.preprocessing import CHANNEL_MODES
from asd.model.checkpoints import read_tuned
from asd.report.data_check import (
    SplitSummary,
    channel_modes,
    check_sample_rates,
    check_split,
    counts,
    report_channels,
)
from asd.report.recipe_report import recipe_report

# folder(s) with <machine_type>/{train,test}/*.wav, comma-separated (as train.py's DATA_DIR)
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
# evaluation list(s) eval_data_list_YYYY.csv, as train.py's EVAL_LIST: anonymised test clips counted and
# checked under their original names
EVAL_LIST = ""
# the recipe whose year, clip seconds, classes and fixed scale are printed (asd/base/recipes.py)
REPORT_RECIPE = "asdkit-eat-lora"
# allowed values of the constants above, checked by asd.base.cli.parse_config
_LIMITS = {"CHANNELS": ("", *CHANNEL_MODES)}


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
    """One split's counts, audio format, fbank shape with the model input ``policy`` makes, attribute values."""
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
    folders = [f.strip() for f in str(cfg.data_dir).split(",") if f.strip()]
    for folder in folders:
        if check_folder(SimpleNamespace(**{**vars(cfg), "data_dir": folder}), policy, problems, warnings):
            return 1
    if not problems:
        recipe_report(cfg, problems, warnings)
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


def check_folder(cfg, policy: ClipPolicy, problems: list[str], warnings: list[str]) -> bool:
    """Check one data folder, adding to ``problems`` and ``warnings``; True when it cannot be read at all."""
    try:
        machine_dirs = machine_type_dirs(cfg.data_dir, cfg.machine_types or None)
    except FileNotFoundError as exc:
        print(f"PROBLEM: {exc}")
        return True
    bad_splits = [s for s in cfg.splits if s not in DCASE_SPLITS]
    if bad_splits:
        print(f"PROBLEM: unknown split(s) {bad_splits}; expected {list(DCASE_SPLITS)}")
        return True
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
    return False


if __name__ == "__main__":
    sys.exit(run_script(main))
