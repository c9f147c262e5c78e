"""Which of train.py's settings go together, checked by train.py and, before anything runs, by run_all;
and the lists a run is made of: data folders (none empty, none twice) and seeds (none twice) (light: no
torch import)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def data_folders(text: object) -> list[Path]:
    """The folders a comma-separated DATA_DIR names, as given. ValueError for an empty entry or a
    folder named twice in any spelling (``a,a/``, a link to ``a``: their resolved paths are compared)."""
    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts) or "" in parts:
        raise ValueError(
            f"DATA_DIR {text!r} has an empty folder name: give folders separated by single commas (a,b)"
        )
    seen: dict[Path, str] = {}
    for part in parts:
        resolved = Path(part).expanduser().resolve()
        if resolved in seen:
            raise ValueError(
                f"DATA_DIR {text!r} names the folder {resolved} twice ({seen[resolved]} and {part}): "
                "give each folder once"
            )
        seen[resolved] = part
    return [Path(part).expanduser() for part in parts]


def refuse_repeated_seeds(seeds: Sequence[int]) -> None:
    """ValueError when a seed is named twice (its run would count twice in the mean and std)."""
    repeated = sorted({seed for seed in seeds if list(seeds).count(seed) > 1})
    if repeated:
        raise ValueError(
            f"SEEDS {','.join(map(str, seeds))} names seed {','.join(map(str, repeated))} twice: give each seed once"
        )


def check_settings(cfg) -> None:
    """What train.py's _LIMITS cannot say: clip lengths, and which settings go together (ValueError
    naming them). run_all can call it on train.py's parsed settings before touching any stamp."""
    data_folders(cfg.data_dir)
    if 0 < cfg.target_frames < 16:
        raise ValueError(f"TARGET_FRAMES {cfg.target_frames}: must be 0 (whole clips) or at least 16 frames")
    fixed = cfg.clip_seconds != "whole"
    if fixed and cfg.clip_seconds != "auto":
        try:
            seconds = float(cfg.clip_seconds)
        except ValueError:
            seconds = 0.0
        if not seconds >= 0.025:
            raise ValueError(
                f"CLIP_SECONDS {cfg.clip_seconds!r}: must be whole, auto or at least 0.025 seconds"
            )
    if fixed and cfg.target_frames:
        raise ValueError(
            f"TARGET_FRAMES {cfg.target_frames} cuts fbanks and CLIP_SECONDS {cfg.clip_seconds} cuts waveforms: "
            "set TARGET_FRAMES 0 or CLIP_SECONDS whole"
        )
    if cfg.mixup == "sample_wave" and cfg.mixup_prob > 0:
        if not fixed:
            raise ValueError(
                "MIXUP sample_wave mixes equal-length waveforms: set CLIP_SECONDS (auto or seconds), "
                "MIXUP batch_fbank or MIXUP_PROB 0"
            )
        if cfg.head == "arcface":
            raise ValueError(
                "MIXUP sample_wave trains on mixed class targets, for which the ArcFace margin is not "
                "defined: use HEAD scadacos or linear, MIXUP batch_fbank or MIXUP_PROB 0"
            )


def refuse_repeated_data_dir(argv: Sequence[str], program: str) -> None:
    """Stop with a clear message when --data_dir is given twice (argparse would keep the last)."""
    given = [word for word in argv if word == "--data_dir" or word.startswith("--data_dir=")]
    if len(given) > 1:
        raise SystemExit(
            f"{program}: error: --data_dir given {len(given)} times: give several folders comma-separated "
            "(--data_dir a,b)"
        )
