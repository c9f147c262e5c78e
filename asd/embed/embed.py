"""Clip embedding with a tuned encoder: windows, same-length batches, the embeddings and statistics of
clips, and the tuned model loaded once per process. Used by extract_embeddings.py and score_clips.py.

Channels: ``settings["channels"]`` is the channel record (preprocessing.channel_record). One view
(near, far, mix, residual) is embedded as it is read; 'both' embeds the near and the far channel
one by one (one FeatureCache each, ``feature_caches``) and combines the two embeddings: 'concat'
[near, far] (twice the width) or 'residual' near - RESIDUAL_WEIGHT x far (embedding space). The
statistics of 'both' are the near statistics followed by the far ones (``stat_columns``).

Clips are cut as the tuned model's clip policy says (asd.data.clips.ClipPolicy, read from its settings):
a model trained on fixed-length clips is embedded as ASDKit extracts: each clip from its start, tiled
or cut to that length, the fbank padded to a multiple of its pad_multiple frames, one input per clip
(no windows), in float32 (``with_clip_settings`` records this in the embedding settings); a model
trained on fbank clips gets each clip whole, or LONG_CLIP windows / crops of its target_frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from asd.base.runtime import autocast

LONG_CLIPS = ("crop", "windows")
POOLINGS = (None, "cls", "mean")


def embedding_settings(long_clip: str, pooling: str | None, amp: bool, channels: dict | None = None) -> dict:
    """The settings that change embedding values (device-independent except for precision);
    ``channels`` is the channel record (preprocessing.channel_record; None = the default 'near')."""
    from asd.data.preprocessing import channel_record

    if long_clip not in LONG_CLIPS:
        raise ValueError(f"LONG_CLIP must be 'crop' or 'windows', got {long_clip!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"POOLING must be none, 'cls' or 'mean', got {pooling!r}")
    return {
        "long_clip": long_clip,
        "pooling": pooling,
        "amp": bool(amp),
        "channels": dict(channels) if channels is not None else channel_record(),
    }


def record_views(record: dict) -> tuple[tuple[str, ...], float]:
    """(the channel views a channel record embeds, the residual weight)."""
    from asd.data.preprocessing import RESIDUAL_WEIGHT, channel_views

    return channel_views(record["channels"]), float(record.get("residual_weight", RESIDUAL_WEIGHT))


def feature_caches(cache_dir, record: dict) -> list:
    """One preprocessing.FeatureCache per channel view of ``record`` (two for 'both')."""
    from asd.data.preprocessing import FeatureCache

    views, weight = record_views(record)
    return [FeatureCache(cache_dir, channels=view, residual_weight=weight) for view in views]


def combine_views(parts: Sequence[torch.Tensor], record: dict) -> torch.Tensor:
    """One row per clip from the per-view rows: the single view, or 'both' combined as recorded."""
    if len(parts) == 1:
        return parts[0]
    near, far = parts
    if record.get("combine", "concat") == "concat":
        return torch.cat([near, far], dim=1)
    return near - float(record["residual_weight"]) * far


def stat_columns(record: dict) -> list[str]:
    """Names of the statistics columns: STAT_NAMES, or for 'both' near_* then far_*."""
    from asd.data.signal_stats import STAT_NAMES

    views, _ = record_views(record)
    return list(STAT_NAMES) if len(views) == 1 else [f"{v}_{name}" for v in views for name in STAT_NAMES]


def model_policy(trained: dict):
    """The clip policy a tuned model's settings record (asd.data.clips.ClipPolicy.from_settings)."""
    from asd.data.clips import ClipPolicy

    return ClipPolicy.from_settings(trained)


def with_clip_settings(settings: dict, model_path) -> dict:
    """``settings`` for the tuned model at ``model_path`` (only its settings are read): unchanged for a
    model trained on fbank clips; for one trained on fixed-length clips, its clip_seconds and
    pad_multiple added, amp off (ASDKit extracts in float32) and long_clip None (no windows)."""
    from asd.model.checkpoints import read_tuned

    policy = model_policy(read_tuned(model_path).get("settings", {}))
    if policy.seconds is None:
        return settings
    return {
        **settings, "long_clip": None, "amp": False, "clip_seconds": policy.seconds,
        "pad_multiple": policy.pad_multiple,
    }  # fmt: skip


def precision(settings: dict, device: torch.device) -> str:
    """The precision the embeddings are computed in: bf16 under AMP on CUDA, else fp32."""
    return "bf16" if settings["amp"] and device.type == "cuda" else "fp32"


def _same_length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``batch_size`` pieces of equal length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if not batches or len(batches[-1]) == batch_size or lengths[batches[-1][0]] != lengths[i]:
            batches.append([])
        batches[-1].append(i)
    return batches


def embed_fbanks(
    model: torch.nn.Module,
    fbanks: Sequence[torch.Tensor],
    target_frames: int | None,
    long_clip: str = "crop",
    device: str | torch.device = "cpu",
    amp: bool = True,
    batch_size: int = 16,
    pad_multiple: int = 32,
) -> torch.Tensor:
    """Utterance embeddings [B, D] (float32, CPU) of full-length fbanks [frames, 128], without grad.

    Each clip is padded (EAT-style) / cropped to ``target_frames`` ("crop"), or ("windows") split into
    ``target_frames`` windows covering the whole clip whose embeddings are averaged. With
    ``target_frames`` 0 each clip is embedded whole, padded to a multiple of ``pad_multiple`` frames
    (the asdkit recipe's input); with None at its own length (up to the encoder's maximum). The pieces
    are cut by asd.data.clips.ClipPolicy.fbank_pieces.
    """
    from asd.data.clips import ClipPolicy
    from asd.model.model import base_encoder

    if long_clip not in ("crop", "windows"):
        raise ValueError(f"long_clip must be 'crop' or 'windows', got {long_clip!r}")
    device = torch.device(device)
    cfg = base_encoder(model.encoder).config
    max_frames = cfg.max_length * cfg.patch_size
    if target_frames is not None and target_frames > max_frames:
        raise ValueError(f"target_frames {target_frames} exceeds the encoder's {max_frames} frames")
    policy = ClipPolicy(target_frames=target_frames or 0, pad_multiple=pad_multiple)
    pieces, owners = [], []
    for clip_index, fbank in enumerate(fbanks):
        windows = (
            [fbank[:max_frames]]
            if target_frames is None
            else policy.fbank_pieces(fbank, long_clip, max_frames)
        )
        pieces += windows
        owners += [clip_index] * len(windows)
    was_training = model.training
    model.eval()
    embeddings: torch.Tensor | None = None
    try:
        with torch.inference_mode(), autocast(device, amp):
            for batch in _same_length_batches([p.shape[0] for p in pieces], batch_size):
                x = torch.stack([pieces[i] for i in batch]).unsqueeze(1).to(device, torch.float32)
                out = model.embed(x).float().cpu()
                if embeddings is None:
                    embeddings = torch.zeros(len(pieces), out.shape[1])
                embeddings[batch] = out
    finally:
        model.train(was_training)
    owner = torch.tensor(owners, dtype=torch.long)
    sums = torch.zeros(len(fbanks), embeddings.shape[1]).index_add_(0, owner, embeddings)
    return sums / torch.bincount(owner, minlength=len(fbanks)).clamp_min(1)[:, None].float()


def embed_records(
    records: Sequence, model, trained: dict, settings: dict, device: torch.device, batch_size: int, caches
) -> torch.Tensor:
    """Embeddings [N, D] of the clips, batched, without grad (bf16 autocast on CUDA when AMP); one
    pass per channel view (``caches``: feature_caches, or one FeatureCache), combined as recorded."""
    caches = caches if isinstance(caches, (list, tuple)) else [caches]
    parts = [_embed_view(records, model, trained, settings, device, batch_size, cache) for cache in caches]
    return combine_views(parts, settings.get("channels", {}))


def embed_fbank_batch(model, trained: dict, settings: dict, fbanks, device: torch.device, batch_size: int):
    """Embeddings [B, D] of already computed fbanks of one view, cut as the tuned model's clip policy
    (``trained``: its settings) and the embedding ``settings`` (LONG_CLIP) say."""
    policy = model_policy(trained)
    trained_pooling, model.pooling = model.pooling, settings["pooling"] or model.pooling
    try:
        return embed_fbanks(
            model, fbanks, policy.target_frames, settings["long_clip"], device, settings["amp"], batch_size,
            policy.pad_multiple,
        )  # fmt: skip
    finally:
        model.pooling = trained_pooling


def _embed_view(
    records: Sequence, model, trained: dict, settings: dict, device: torch.device, batch_size: int, cache
) -> torch.Tensor:
    """One channel view's embeddings [N, D]: fixed-length clips when the tuned model's clip policy says
    so, else the clips' fbanks as it and the embedding settings say."""
    policy = model_policy(trained)
    if policy.seconds is not None:
        return embed_fixed_clips(records, model, policy, settings["pooling"], device, batch_size, cache)
    chunks = []
    for start in tqdm(range(0, len(records), batch_size), desc="embedding", unit="batch"):
        paths = [r.path for r in records[start : start + batch_size]]
        # on CUDA the missing fbanks are computed in batches on the GPU
        fbanks = (
            cache.fbanks(paths, device, batch_size)
            if device.type == "cuda"
            else [cache.fbank(p) for p in paths]
        )
        chunks.append(embed_fbank_batch(model, trained, settings, fbanks, device, batch_size))
    return torch.cat(chunks)


def embed_fixed_clips(
    records: Sequence, model, policy, pooling: str | None, device: torch.device, batch_size: int, cache
) -> torch.Tensor:
    """Embeddings [N, D] (float32, CPU) of a model trained on fixed-length clips, as ASDKit extracts:
    each waveform (read as ``cache`` reads its channel view) cut by ``policy.extraction_input``
    (from its start, tiled or cut to the clip length, fbank padded), float32, no grad."""
    from asd.data.preprocessing import load_audio

    trained_pooling, model.pooling = model.pooling, pooling or model.pooling
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(records), batch_size), desc="embedding", unit="batch"):
                waves = [
                    load_audio(r.path, channels=cache.channels, residual_weight=cache.residual_weight)
                    for r in records[start : start + batch_size]
                ]
                x = policy.extraction_input(waves, device)
                chunks.append(model.embed(x).float().cpu())
    finally:
        model.pooling = trained_pooling
        model.train(was_training)
    return torch.cat(chunks)


def stats_records(records: Sequence, caches) -> torch.Tensor:
    """Statistics vectors [N, len(stat_columns)] of the clips (from the feature caches when present):
    one view's, or for 'both' (two caches) the near statistics followed by the far ones."""
    caches = caches if isinstance(caches, (list, tuple)) else [caches]
    rows = [
        np.concatenate([cache.stats(r.path) for cache in caches])
        for r in tqdm(records, desc="statistics", unit="clip")
    ]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


_TUNED: dict = {}


def tuned_model(model_path, device: torch.device):
    """load_tuned, once per process (both splits share it)."""
    from asd.model.checkpoints import load_tuned

    key = (str(Path(model_path).resolve()), str(device))
    if key not in _TUNED:
        _TUNED.clear()
        _TUNED[key] = load_tuned(model_path, device=device)
    return _TUNED[key]


def forget_tuned_model() -> None:
    """Free the model tuned_model keeps."""
    _TUNED.clear()
