"""Long recordings (longer than the encoder's reach, or a chosen length) scored as consecutive windows.

A plant engineer records continuously: an hour-long file cannot be one embedding (EAT reaches about
123 s; beyond it a clip would be cut). ``window_spans`` cuts the recording into windows of
WINDOW_SECONDS (by default the run's training clips' length, ``training_clip_seconds``) every
HOP_SECONDS (the last one ends at the recording's end, so the tail is heard);
``embed_windows`` reads them from disk a batch at a time (soundfile seeks; the whole recording is
never in memory, nor its whole fbank) and embeds each window exactly as a clip of those samples is
embedded (same channel views, fbank, statistics and embedding settings). A window is then scored like
a clip; the recording's score is an aggregate of its windows' scores (``aggregate``). One detail
differs from a clip cut out with an editor: a recording at another sample rate is resampled window
by window (edge samples of each window differ slightly from resampling the whole file). With a model
trained on fixed-length clips (its clip policy, asd.data.clips.ClipPolicy) each window is, like a clip,
taken from its start and tiled or cut to that length (ClipPolicy.extraction_input).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from asd.base.files import atomic_write_text
from asd.data.clips import ClipPolicy
from asd.data.fbank import ENCODER_MAX_FRAMES, FRAME_LENGTH_MS, FRAME_SHIFT_MS, SAMPLE_RATE, wav_to_fbank
from asd.data.names import ClipRecord
from asd.data.preprocessing import AudioError, select_channels
from asd.data.signal_stats import signal_stats
from asd.embed.embed import combine_views, embed_fbank_batch, model_policy, record_views
from asd.embed.embedding_files import Split
from asd.report.tables import csv_text

AGGREGATES = ("max", "mean")
ENCODER_REACH_SECONDS = ((ENCODER_MAX_FRAMES - 1) * FRAME_SHIFT_MS + FRAME_LENGTH_MS) / 1000  # about 122.9 s


def duration(path: str | os.PathLike) -> float:
    """Seconds of audio in a file, from its header."""
    info = sf.info(str(path))
    return info.frames / info.samplerate


def is_long(path: str | os.PathLike, long_seconds: float) -> bool:
    """Whether a clip is scored as windows: longer than ``long_seconds`` (0 = the encoder's reach)."""
    return duration(path) > (long_seconds or ENCODER_REACH_SECONDS)


def training_clip_seconds(paths: Sequence[str | os.PathLike], most: int = 25) -> float:
    """The median length of (up to ``most`` of) the run's training clips ``paths``: a long recording's
    default window, so that each window is heard as the model's training clips were (10 s, 12 s, ...)."""
    lengths = []
    for path in list(paths)[:most]:
        try:
            lengths.append(duration(path))
        except (RuntimeError, OSError):  # soundfile's error for a missing or unreadable file
            continue
    if not lengths:
        where = f" (e.g. {paths[0]})" if paths else ""
        raise FileNotFoundError(
            f"cannot read the run's training clips{where} to learn their length: give WINDOW_SECONDS "
            "(--window_seconds) for the long recordings"
        )
    return float(np.median(lengths))


def _read_window(handle: sf.SoundFile, path: str, span: tuple[int, int]) -> np.ndarray:
    handle.seek(span[0])
    data = handle.read(span[1] - span[0], dtype="float32", always_2d=True)
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: NaN or infinite samples at {span[0] / handle.samplerate:.1f} s")
    return data


def _view_wave(data: np.ndarray, view: str, weight: float, path: str, sample_rate: int) -> torch.Tensor:
    """One channel view of a window at 16 kHz, as preprocessing.load_audio reads a clip."""
    import torchaudio

    wav = torch.from_numpy(np.ascontiguousarray(select_channels(data, view, weight, path)))
    if sample_rate != SAMPLE_RATE:
        wav = torchaudio.functional.resample(wav, sample_rate, SAMPLE_RATE)
    return wav.contiguous()


def _embed_fixed(
    model, policy: ClipPolicy, pooling: str | None, waves: list[torch.Tensor], device: torch.device
) -> torch.Tensor:
    """Embeddings [B, D] of windows for a model trained on fixed-length clips, as asd.embed.embed.embed_fixed_clips
    embeds a clip: each window from its start, tiled or cut to the clip length, float32, no grad."""
    trained_pooling, model.pooling = model.pooling, pooling or model.pooling
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = policy.extraction_input(waves, device)
            return model.embed(x).float().cpu()
    finally:
        model.pooling = trained_pooling
        model.train(was_training)


def _embed_view_batch(
    model, trained: dict, settings: dict, waves: list[torch.Tensor], device: torch.device, batch_size: int
) -> torch.Tensor:
    """One channel view's embeddings of a batch of windows, as that view of a clip is embedded."""
    policy = model_policy(trained)
    if policy.seconds is not None:
        return _embed_fixed(model, policy, settings["pooling"], waves, device)
    return embed_fbank_batch(model, trained, settings, [wav_to_fbank(w) for w in waves], device, batch_size)


def embed_windows(
    path: str,
    record: ClipRecord,
    spans: Sequence[tuple[int, int]],
    model,
    trained: dict,
    settings: dict,
    device: torch.device,
    batch_size: int,
    stat_names: list[str],
) -> Split:
    """A Split with one row per window of ``path`` (records named ``<path>#<index>``), embedded and
    described by statistics like clips, ``batch_size`` windows in memory at a time."""
    views, weight = record_views(settings["channels"])
    embeddings, stats = [], []
    with sf.SoundFile(path) as handle:
        for start in tqdm(
            range(0, len(spans), batch_size), desc=f"windows of {Path(path).name}", unit="batch"
        ):
            waves = [
                [
                    _view_wave(_read_window(handle, path, span), v, weight, path, handle.samplerate)
                    for v in views
                ]
                for span in spans[start : start + batch_size]
            ]
            parts = [
                _embed_view_batch(model, trained, settings, [w[i] for w in waves], device, batch_size)
                for i in range(len(views))
            ]
            embeddings.append(combine_views(parts, settings["channels"]))
            stats += [np.concatenate([signal_stats(v) for v in w]) for w in waves]
    records = [
        ClipRecord(f"{path}#{i}", record.machine_type, record.section, None, "test", None)
        for i in range(len(spans))
    ]
    return Split(torch.cat(embeddings).numpy().astype(np.float32), np.stack(stats), stat_names, records)


def aggregate(scores: Sequence[float], how: str) -> float:
    """A recording's score from its windows' scores: the highest ('max') or their mean."""
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")
    return float(np.max(scores) if how == "max" else np.mean(scores))


def write_window_table(path: str | os.PathLike, rows: Sequence[tuple]) -> None:
    """CSV file,window,start_s,end_s,score,decision: one row per window of every long recording."""
    table = [(f, i, f"{a:.3f}", f"{b:.3f}", f"{s:.8g}", d) for f, i, a, b, s, d in rows]
    atomic_write_text(csv_text([("file", "window", "start_s", "end_s", "score", "decision"), *table]), path)


def timeline_path(folder: str | os.PathLike, clip: str) -> Path:
    return Path(folder) / f"{Path(clip).stem}_timeline.png"
