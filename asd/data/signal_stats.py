"""Per-clip signal statistics for the Mahalanobis branch: time, spectral and log-mel band figures.

    stats = signal_stats(wav)        # float32 [len(STAT_NAMES)]

Time: RMS, peak, crest factor, kurtosis, skewness, zero-crossing rate, spread of the frame RMS.
Spectral (magnitude STFT of STAT_FFT every STAT_HOP samples, loud frames weighted more): centroid,
bandwidth, flatness, roll-off (ROLLOFF of the energy), flux. Log-mel: the mean and std over time of
EAT's log-mel energy pooled into STAT_MEL_BANDS bands.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from asd.data.fbank import SAMPLE_RATE, WINDOW_SAMPLES, kaldi_log_mel

STAT_MEL_BANDS = 16  # the 128 log-mel bins are pooled into this many bands for signal_stats
STAT_FFT = 1024  # FFT size of the spectral statistics
STAT_HOP = 512  # hop of the spectral statistics
ROLLOFF = 0.85  # spectral roll-off: frequency below which this share of the energy lies

_TIME_STATS = ["rms", "peak", "crest_factor", "kurtosis", "skewness", "zero_crossing_rate", "frame_rms_std"]
_SPECTRAL_STATS = [
    "spectral_centroid",
    "spectral_bandwidth",
    "spectral_flatness",
    "spectral_rolloff",
    "spectral_flux",
]
STAT_NAMES: list[str] = (
    _TIME_STATS
    + _SPECTRAL_STATS
    + [f"logmel_mean_{b:02d}" for b in range(STAT_MEL_BANDS)]
    + [f"logmel_std_{b:02d}" for b in range(STAT_MEL_BANDS)]
)


def _time_stats(x: torch.Tensor) -> list[float]:
    """Moments and shape of a mean-removed float64 waveform."""
    peak = x.abs().max()
    m2 = x.pow(2).mean()
    rms = m2.sqrt()
    if m2 <= 0:
        return [0.0] * len(_TIME_STATS)
    kurtosis = x.pow(4).mean() / m2.pow(2) - 3.0
    skewness = x.pow(3).mean() / m2.pow(1.5)
    signs = torch.signbit(x)
    zcr = (signs[1:] != signs[:-1]).double().mean()
    usable = x.numel() // STAT_HOP * STAT_HOP
    frame_rms = x[:usable].view(-1, STAT_HOP).pow(2).mean(dim=1).sqrt()
    frame_rms_std = frame_rms.std() / rms if frame_rms.numel() > 1 else torch.zeros((), dtype=x.dtype)
    return [float(v) for v in (rms, peak, peak / rms, kurtosis, skewness, zcr, frame_rms_std)]


def _spectral_stats(x: torch.Tensor, sample_rate: int) -> list[float]:
    """Magnitude-weighted centroid/bandwidth/roll-off, power flatness and flux, averaged over frames."""
    n_fft = min(STAT_FFT, 1 << (x.numel().bit_length() - 1))
    window = torch.hann_window(n_fft, dtype=x.dtype)
    spec = (
        torch.stft(
            x, n_fft, hop_length=min(STAT_HOP, n_fft), window=window, center=False, return_complex=True
        )
        .abs()
        .T
    )  # [frames, bins]
    freqs = torch.fft.rfftfreq(n_fft, 1.0 / sample_rate, dtype=x.dtype)
    total = spec.sum(dim=1)
    weights = total / total.sum().clamp_min(1e-20)  # loud frames count more; silent ones not at all
    share = spec / total.clamp_min(1e-20)[:, None]
    centroid = share @ freqs
    bandwidth = (share * (freqs[None] - centroid[:, None]).pow(2)).sum(dim=1).sqrt()
    cumulative = share.cumsum(dim=1)
    rolloff = freqs[
        torch.searchsorted(cumulative, torch.full_like(total[:, None], ROLLOFF)).clamp_max(len(freqs) - 1)
    ][:, 0]
    power = spec.pow(2) + 1e-20
    flatness = power.log().mean(dim=1).exp() / power.mean(dim=1)
    unit = spec / spec.norm(dim=1, keepdim=True).clamp_min(1e-20)
    flux = (unit[1:] - unit[:-1]).norm(dim=1)
    flux_mean = (
        (flux * weights[1:]).sum() / weights[1:].sum().clamp_min(1e-20) if flux.numel() else flux.sum()
    )
    return [float((v * weights).sum()) for v in (centroid, bandwidth, flatness, rolloff)] + [float(flux_mean)]


def _band_stats(wav: torch.Tensor) -> list[float]:
    """Mean and std over time of the log-mel energy pooled into STAT_MEL_BANDS bands."""
    log_mel = kaldi_log_mel(wav)  # [frames, 128]
    bands = log_mel.view(log_mel.shape[0], STAT_MEL_BANDS, -1).mean(dim=2)
    std = bands.std(dim=0) if bands.shape[0] > 1 else torch.zeros(STAT_MEL_BANDS)
    return bands.mean(dim=0).tolist() + std.tolist()


def signal_stats(wav: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One float32 vector [len(STAT_NAMES)] of time, spectral and log-mel band statistics of a clip."""
    wav = torch.as_tensor(np.asarray(wav, dtype=np.float32)).flatten()
    if wav.numel() < WINDOW_SAMPLES:
        raise ValueError(f"waveform of {wav.numel()} samples is too short for statistics")
    x = wav.double() - wav.double().mean()
    values = _time_stats(x) + _spectral_stats(x, sample_rate)
    mel_input = (
        wav if sample_rate == SAMPLE_RATE else torchaudio.functional.resample(wav, sample_rate, SAMPLE_RATE)
    )
    values += _band_stats(mel_input)
    return np.asarray(values, dtype=np.float32)
