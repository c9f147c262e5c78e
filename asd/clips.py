"""Fixed-length clips, as ASDKit feeds EAT: every waveform tiled or cropped to a fixed number of
seconds (at a random offset in training, from the start in extraction), then EAT's fbank zero-padded
to a multiple of 32 frames.

    seconds, why = resolve_clip_seconds("auto", ["dev_data"], records)           # 18.0 for DCASE 2023
    wave = crop_or_tile(load_audio(path), clip_samples(seconds), rng)            # rng None: from the start
    x = waves_to_input(torch.stack(waves), pad_multiple=32)                      # [B, 1, T, 128]

CLIP_SECONDS "auto" follows ASDKit's table (parse_sec): 18 s for DCASE 2023, 12 s for DCASE 2024, the
year detected from the clips' names and machine types (asd/years.py), never from a folder name; for
any other data the longest training clip, rounded up to whole seconds, so no clip is cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import soundfile as sf
import torch
import torch.nn.functional as F

from asd.checkpoints import read_tuned
from asd.years import detect_year
from preprocessing import PAD_VALUE, SAMPLE_RATE, batch_log_mel, normalise_fbank, num_frames


def resolve_clip_seconds(
    setting: str, data_dirs: Sequence[str], records: Sequence
) -> tuple[float | None, str]:
    """(seconds or None for whole clips, why) for CLIP_SECONDS ``setting``: "whole", "auto" or a number.

    "auto": the clip seconds of the DCASE year the clips' names and machine types give (asd/years.py;
    ``data_dirs`` only say whether attributes CSVs exist), else the longest clip, rounded up."""
    if setting == "whole":
        return None, "whole clips (CLIP_SECONDS whole)"
    if setting != "auto":
        return float(setting), "CLIP_SECONDS"
    found = detect_year(records, data_dirs)
    if found.clip_seconds is not None:
        return found.clip_seconds, f"ASDKit's length for DCASE {'/'.join(found.candidates)} ({found.why})"
    longest = max(sf.info(r.path).duration for r in records)
    return float(math.ceil(longest)), "not a DCASE 2023/2024 set: the longest training clip, rounded up"


def clip_samples(seconds: float) -> int:
    """Samples of a fixed-length clip, int(16000 * seconds) as ASDKit computes them."""
    return int(SAMPLE_RATE * seconds)


def crop_or_tile(wave: torch.Tensor, length: int, rng=None) -> torch.Tensor:
    """``wave`` [samples] tiled (whole copies) until it is at least ``length`` long, then ``length``
    samples from offset rng.integers(0, tiled - length + 1), or from the start when ``rng`` is None.

    ``rng`` is a numpy Generator (or anything with the same ``integers(low, high)``, so a test can
    replay stored draws); in training it is drawn even when only offset 0 is possible, as ASDKit does.
    """
    if wave.shape[-1] < length:
        wave = wave.repeat(math.ceil(length / wave.shape[-1]))
    start = 0 if rng is None else int(rng.integers(0, wave.shape[-1] - length + 1))
    return wave[start : start + length]


def waves_to_input(waves: torch.Tensor, pad_multiple: int = 32) -> torch.Tensor:
    """EAT's input [B, 1, T, 128] of equal-length waveforms [B, samples] (on their device): mean removed,
    kaldi fbank, zero log-mel frames appended up to a multiple of ``pad_multiple``, then normalised."""
    fbank = normalise_fbank(batch_log_mel(waves.float()))
    frames = -(-fbank.shape[1] // pad_multiple) * pad_multiple
    return F.pad(fbank, (0, 0, 0, frames - fbank.shape[1]), value=PAD_VALUE)[:, None]


def extraction_input(
    waves: Sequence[torch.Tensor], seconds: float, pad_multiple: int = 32, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """What a model trained on fixed-length clips gets in extraction (ASDKit: shuffle off): each waveform
    from its start, tiled or cut to ``seconds``, then EAT's fbank padded to ``pad_multiple`` frames
    -> [B, 1, T, 128] on ``device``. ``seconds`` is the tuned model's settings["clip_seconds_resolved"]."""
    length = clip_samples(seconds)
    return waves_to_input(torch.stack([crop_or_tile(w, length) for w in waves]).to(device), pad_multiple)


def model_clip_settings(model_path: str | Path) -> dict:
    """How a tuned model must be embedded when it was trained on fixed-length clips:
    {"clip_seconds": its settings' clip_seconds_resolved, "pad_multiple": its PAD_MULTIPLE}, or {} for
    a whole-clip model (clip_seconds_resolved None or absent). Reads only the file's settings."""
    settings = read_tuned(model_path).get("settings", {})
    seconds = settings.get("clip_seconds_resolved")
    if seconds is None:
        return {}
    return {"clip_seconds": float(seconds), "pad_multiple": int(settings.get("pad_multiple", 32))}


def check_encoder_reach(records: Sequence, seconds: float | None, target_frames: int, reach: int) -> None:
    """Refuse, before any training, clips the encoder cannot take whole: ``reach`` frames (time patches x 16).

    Fixed-length clips (``seconds``) and TARGET_FRAMES are checked as set; whole clips by their length
    read from each file's header (a long recording is named, not silently cut or failed on later).
    """
    if seconds is not None or target_frames:
        frames = num_frames(clip_samples(seconds)) if seconds is not None else target_frames
        if frames > reach:
            setting = f"CLIP_SECONDS {seconds:g}" if seconds is not None else f"TARGET_FRAMES {target_frames}"
            raise ValueError(f"{setting} gives {frames} frames; the encoder takes at most {reach}")
        return
    too_long = []
    for record in records:
        info = sf.info(record.path)
        if num_frames(math.ceil(info.frames * SAMPLE_RATE / info.samplerate)) > reach:
            too_long.append(f"{record.path} ({info.duration:.1f} s)")
    if too_long:
        raise ValueError(
            f"{len(too_long)} training clip(s) are longer than the encoder's reach ({reach} frames, "
            f"{reach / 100:.1f} s) and cannot be used whole: {', '.join(too_long[:5])}"
            + (" ..." if len(too_long) > 5 else "")
            + "; set CLIP_SECONDS (tile/crop every clip to that length) or split the recordings"
        )
