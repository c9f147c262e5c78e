"""The clip policy: how a clip becomes the encoder's input, in training, in extraction and for the
windows of long recordings. One ClipPolicy is built from train.py's settings, recorded in the tuned
model (settings["clip_policy"]) and read back from it by extraction, scoring and datashape.py.

    policy = ClipPolicy.from_config(cfg, seconds)           # seconds from resolve_clip_seconds
    policy = ClipPolicy.from_settings(settings)              # a tuned model's settings (asd.model.checkpoints)
    x = policy.extraction_input(waves)                       # fixed-length clips: [B, 1, T, 128]
    pieces = policy.fbank_pieces(fbank, "windows", 12288)    # fbank clips: the inputs of one clip

Fixed-length clips (``seconds``, as ASDKit feeds EAT): every waveform tiled (whole copies) or cropped
to ``seconds`` (at a random offset in training, from the start in validation and extraction), its
fbank zero-padded to a multiple of ``pad_multiple`` frames. Fbank clips (``seconds`` None): each
clip whole, padded to a multiple of ``pad_multiple`` (``target_frames`` 0), or padded/cropped to
``target_frames`` (a random offset in training with ``random_crop``; in extraction the first
``target_frames`` or windows covering the clip, LONG_CLIP). Padded frames hold EAT's normalised zero.

CLIP_SECONDS "auto" follows ASDKit's table (parse_sec): 18 s for DCASE 2023, 12 s for DCASE 2024, the
year detected from the clips' names and machine types (asd/base/years.py), never from a folder name; for
any other data the longest training clip, rounded up to whole seconds, so no clip is cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from asd.base.years import detect_year
from asd.data.fbank import PAD_VALUE, SAMPLE_RATE, batch_log_mel, normalise_fbank, num_frames

# fbank frames of a tuned model whose file records neither clip_policy nor target_frames (the released
# EAT recipes' 10.24 s crop)
LEGACY_TARGET_FRAMES = 1024


def resolve_clip_seconds(
    setting: str, data_dirs: Sequence[str], records: Sequence
) -> tuple[float | None, str]:
    """(seconds or None for whole clips, why) for CLIP_SECONDS ``setting``: "whole", "auto" or a number.

    "auto": the clip seconds of the DCASE year the clips' names and machine types give (asd/base/years.py;
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


def padded_frames(frames: int, multiple: int) -> int:
    """``frames`` rounded up to a multiple of ``multiple``."""
    return -(-frames // multiple) * multiple


def waves_to_input(waves: torch.Tensor, pad_multiple: int = 32) -> torch.Tensor:
    """EAT's input [B, 1, T, 128] of equal-length waveforms [B, samples] (on their device): mean removed,
    kaldi fbank, zero log-mel frames appended up to a multiple of ``pad_multiple``, then normalised."""
    fbank = normalise_fbank(batch_log_mel(waves.float()))
    frames = padded_frames(fbank.shape[1], pad_multiple)
    return F.pad(fbank, (0, 0, 0, frames - fbank.shape[1]), value=PAD_VALUE)[:, None]


def pad_or_crop(fbank: torch.Tensor, target_frames: int) -> torch.Tensor:
    """Pad at the end or crop from the start to exactly ``target_frames`` frames.

    EAT's recipe zero-pads the raw log-mel and normalises afterwards, so padded frames of a
    normalised fbank hold the normalised zero, PAD_VALUE (about 0.467), not 0.
    """
    frames = fbank.shape[0]
    if frames >= target_frames:
        return fbank[:target_frames]
    return torch.nn.functional.pad(fbank, (0, 0, 0, target_frames - frames), value=PAD_VALUE)


def split_windows(fbank: torch.Tensor, target_frames: int) -> torch.Tensor:
    """Cover the whole clip with ceil(frames / target) windows [n, target_frames, 128].

    Windows start evenly from 0 to frames - target_frames (the last one ends at the clip's end, so
    long clips need no padding); a clip no longer than one window gives one padded window.
    """
    frames = fbank.shape[0]
    if frames <= target_frames:
        return pad_or_crop(fbank, target_frames)[None]
    count = math.ceil(frames / target_frames)
    starts = np.linspace(0, frames - target_frames, count).round().astype(int)
    return torch.stack([fbank[s : s + target_frames] for s in starts])


def window_spans(num_samples: int, sample_rate: int, window_s: float, hop_s: float) -> list[tuple[int, int]]:
    """(start, stop) sample indices of windows of ``window_s`` every ``hop_s`` covering a long
    recording; the last window ends at its end. A recording no longer than one window is one span."""
    if window_s <= 0 or hop_s <= 0:
        raise ValueError(f"window ({window_s} s) and hop ({hop_s} s) must be positive")
    window, hop = round(window_s * sample_rate), round(hop_s * sample_rate)
    if num_samples <= window:
        return [(0, num_samples)]
    spans = [(start, start + window) for start in range(0, num_samples - window + 1, hop)]
    if spans[-1][1] < num_samples:
        spans.append((num_samples - window, num_samples))
    return spans


@dataclass(frozen=True)
class ClipPolicy:
    """How clips are cut, tiled and padded for the encoder (see the module docstring).

    ``seconds``: fixed-length waveform clips of that length; None: fbank clips. ``target_frames``
    (fbank clips): frames per clip, 0 = each clip whole. ``pad_multiple``: fbanks of fixed-length and
    whole clips are padded to a multiple of this. ``random_crop``: training crops fbank clips longer
    than ``target_frames`` at a random offset (fixed-length clips always get one, as in ASDKit).
    """

    seconds: float | None = None
    target_frames: int = 0
    pad_multiple: int = 32
    random_crop: bool = True

    @classmethod
    def from_config(cls, cfg, seconds: float | None) -> ClipPolicy:
        """The policy of train.py's settings ``cfg`` with CLIP_SECONDS resolved to ``seconds``."""
        return cls(seconds, int(cfg.target_frames), int(cfg.pad_multiple), bool(cfg.random_crop))

    @classmethod
    def from_settings(cls, settings: dict) -> ClipPolicy:
        """The policy a tuned model's settings record; a file written before settings["clip_policy"]
        existed: its clip_seconds_resolved, target_frames (else LEGACY_TARGET_FRAMES) and pad_multiple."""
        if "clip_policy" in settings:
            return cls(**settings["clip_policy"])
        seconds = settings.get("clip_seconds_resolved")
        return cls(
            None if seconds is None else float(seconds),
            int(settings.get("target_frames", LEGACY_TARGET_FRAMES)),
            int(settings.get("pad_multiple", 32)),
            bool(settings.get("random_crop", True)),
        )

    def record(self) -> dict:
        """What the tuned model records (settings["clip_policy"]); from_settings reads it back."""
        return asdict(self)

    @property
    def samples(self) -> int | None:
        """Samples of a fixed-length clip; None for fbank clips."""
        return None if self.seconds is None else clip_samples(self.seconds)

    def crop_waves(self, waves: Sequence[torch.Tensor], device, rng=None) -> torch.Tensor:
        """Fixed-length clips [B, samples] on ``device``: each waveform tiled or cropped to ``seconds``
        (offsets from ``rng``, else from the start)."""
        batch = torch.stack([crop_or_tile(w, self.samples, rng) for w in waves])
        return batch.to(device, non_blocking=True)

    def wave_input(self, batch: torch.Tensor) -> torch.Tensor:
        """EAT's input [B, 1, T, 128] of fixed-length clips [B, samples] (waves_to_input, padded)."""
        return waves_to_input(batch, self.pad_multiple)

    def extraction_input(
        self, waves: Sequence[torch.Tensor], device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """What a model trained on fixed-length clips gets in extraction (ASDKit: shuffle off): each
        waveform from its start, tiled or cut to ``seconds``, fbank padded -> [B, 1, T, 128] on ``device``."""
        return self.wave_input(self.crop_waves(waves, device))

    def training_fbank(self, fbank: torch.Tensor, train: bool) -> torch.Tensor:
        """An fbank clip cut to ``target_frames`` (> 0): at a random offset (torch's generator) in
        training with ``random_crop`` when it is longer, else padded or cropped from the start."""
        extra = fbank.shape[0] - self.target_frames
        if train and self.random_crop and extra > 0:
            start = int(torch.randint(0, extra + 1, ()))
            return fbank[start : start + self.target_frames]
        return pad_or_crop(fbank, self.target_frames)

    def fbank_pieces(self, fbank: torch.Tensor, long_clip: str, max_frames: int) -> list[torch.Tensor]:
        """The extraction inputs of one fbank clip, as training fed it: whole (``target_frames`` 0)
        padded to a multiple of ``pad_multiple`` (at most ``max_frames``), else ``long_clip`` "windows"
        covering the clip or "crop" (the first ``target_frames``)."""
        if self.target_frames == 0:
            return [pad_or_crop(fbank, min(padded_frames(fbank.shape[0], self.pad_multiple), max_frames))]
        if long_clip == "windows":
            return list(split_windows(fbank, self.target_frames))
        return [pad_or_crop(fbank, self.target_frames)]

    def input_frames(self, frames: int) -> int:
        """Frames of the encoder's input for a clip of ``frames`` fbank frames (a window, for fbank
        clips longer than ``target_frames``)."""
        if self.seconds is not None:
            return padded_frames(num_frames(self.samples), self.pad_multiple)
        if self.target_frames == 0:
            return padded_frames(frames, self.pad_multiple)
        return self.target_frames

    def describe(self) -> str:
        """One line: what the policy does to a clip."""
        if self.seconds is not None:
            return f"waveforms tiled or cut to {self.seconds:g} s, fbank padded to a multiple of {self.pad_multiple}"
        if self.target_frames == 0:
            return f"each clip whole, fbank padded to a multiple of {self.pad_multiple} frames"
        return f"fbanks padded or cropped to {self.target_frames} frames"


def check_encoder_reach(records: Sequence, policy: ClipPolicy, reach: int) -> None:
    """Refuse, before any training, clips the encoder cannot take whole: ``reach`` frames (time patches x 16).

    Fixed-length clips and TARGET_FRAMES are checked as set; whole clips by their length read from each
    file's header (a long recording is named, not silently cut or failed on later).
    """
    seconds, target_frames = policy.seconds, policy.target_frames
    if seconds is not None or target_frames:
        frames = num_frames(policy.samples) if seconds is not None else target_frames
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
