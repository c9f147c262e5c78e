"""EAT's front end: a 16 kHz waveform to the kaldi log-mel fbank EAT was pre-trained on.

    fbank = wav_to_fbank(wav)                        # [frames, 128], EAT-normalised, not padded
    batch = wavs_to_fbank_batch(waves, "cuda")       # [B, frames, 128], equal-length clips at once

Mean removed, kaldi fbank (128 mel bins, 25 ms Hann window, 10 ms shift, no dither, no energy), then
(fbank - FBANK_MEAN) / (2 * FBANK_STD). ``batch_log_mel`` is the same fbank with plain torch ops (a
batch on the GPU); padding and cropping the frames is asd/data/clips.py's job.
"""

from __future__ import annotations

import torch
from torchaudio.compliance import kaldi

from asd.base.runtime import resolve_device

SAMPLE_RATE = 16000  # EAT was pre-trained on 16 kHz audio
NUM_MEL_BINS = 128  # mel bins of the kaldi fbank
FBANK_MEAN = -4.268  # EAT's dataset mean of the log-mel fbank
FBANK_STD = 4.569  # EAT's dataset std; the normalisation divides by 2 * FBANK_STD
FRAME_LENGTH_MS = 25.0  # kaldi window length
FRAME_SHIFT_MS = 10.0  # kaldi hop
PREEMPHASIS = 0.97  # kaldi default pre-emphasis
LOW_FREQ = 20.0  # kaldi default lowest mel edge (Hz)
ENCODER_MAX_FRAMES = 12288  # EAT's position table: 768 time patches x 16 frames, about 123 s
WINDOW_SAMPLES = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)  # 400 samples: one frame, the shortest clip

_EPS = torch.finfo(torch.float32).eps
_WINDOW_SHIFT = int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)  # 160 samples
_PADDED_WINDOW = 1 << (WINDOW_SAMPLES - 1).bit_length()  # 512: kaldi rounds to a power of two


def num_frames(num_samples: int) -> int:
    """Frames kaldi's fbank gives for a 16 kHz clip of ``num_samples`` (snip_edges=True)."""
    return 0 if num_samples < WINDOW_SAMPLES else 1 + (num_samples - WINDOW_SAMPLES) // _WINDOW_SHIFT


def normalise_fbank(log_mel: torch.Tensor) -> torch.Tensor:
    return (log_mel - FBANK_MEAN) / (2 * FBANK_STD)


PAD_VALUE = -FBANK_MEAN / (2 * FBANK_STD)  # a zero log-mel frame after normalisation


def _check_wave(wav: torch.Tensor) -> torch.Tensor:
    wav = torch.as_tensor(wav, dtype=torch.float32)
    if wav.shape[-1] < WINDOW_SAMPLES:
        raise ValueError(
            f"waveform of {wav.shape[-1]} samples is shorter than one {WINDOW_SAMPLES}-sample frame"
        )
    return wav


def kaldi_log_mel(wav: torch.Tensor) -> torch.Tensor:
    """Un-normalised kaldi log-mel fbank [frames, 128] of a 16 kHz 1-D waveform (mean removed first)."""
    wav = _check_wave(wav)
    wav = wav - wav.mean()
    return kaldi.fbank(
        wav[None],
        htk_compat=True,
        sample_frequency=SAMPLE_RATE,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=NUM_MEL_BINS,
        dither=0.0,
        frame_shift=FRAME_SHIFT_MS,
        frame_length=FRAME_LENGTH_MS,
    )


def wav_to_fbank(wav: torch.Tensor) -> torch.Tensor:
    """EAT's input for one 16 kHz waveform: normalised kaldi fbank [frames, 128], not padded."""
    return normalise_fbank(kaldi_log_mel(wav))


_MEL_BANKS: dict[tuple, torch.Tensor] = {}


def _mel_banks(device: torch.device) -> torch.Tensor:
    """kaldi's triangular mel filters [257, 128] (zero column for the Nyquist bin, as kaldi pads)."""
    key = (str(device),)
    if key not in _MEL_BANKS:
        banks, _ = kaldi.get_mel_banks(
            NUM_MEL_BINS, _PADDED_WINDOW, float(SAMPLE_RATE), LOW_FREQ, 0.0, 100.0, -500.0, 1.0
        )
        banks = torch.nn.functional.pad(banks.float(), (0, 1))
        _MEL_BANKS[key] = banks.T.contiguous().to(device)
    return _MEL_BANKS[key]


def batch_log_mel(wavs: torch.Tensor) -> torch.Tensor:
    """kaldi_log_mel for a batch [B, samples] of equal-length waveforms, with plain torch ops."""
    wavs = _check_wave(wavs)
    wavs = wavs - wavs.mean(dim=-1, keepdim=True)
    frames = wavs.unfold(-1, WINDOW_SAMPLES, _WINDOW_SHIFT)  # [B, F, 400]
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC per frame
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # x[j-1], x[-1] := x[0]
    frames = frames - PREEMPHASIS * previous
    window = torch.hann_window(WINDOW_SAMPLES, periodic=False, device=wavs.device, dtype=wavs.dtype)
    frames = torch.nn.functional.pad(frames * window, (0, _PADDED_WINDOW - WINDOW_SAMPLES))
    power = torch.fft.rfft(frames).abs().pow(2)  # [B, F, 257]
    mel = power @ _mel_banks(wavs.device)  # [B, F, 128]
    return mel.clamp_min(_EPS).log()


def wavs_to_fbank_batch(
    wavs: torch.Tensor, device: str | torch.device = "auto", chunk: int = 32
) -> torch.Tensor:
    """wav_to_fbank for a batch [B, samples] of equal-length clips, on ``device`` ("auto": GPU when present).

    Returns a float32 CPU tensor [B, frames, 128] with the same numbers as the per-clip call (~1e-5).
    """
    device = resolve_device(str(device))
    outputs = [
        normalise_fbank(batch_log_mel(part.to(device, torch.float32))).cpu()
        for part in torch.as_tensor(wavs).split(chunk)
    ]
    return torch.cat(outputs)
