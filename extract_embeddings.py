"""Embed every normal training clip and every test clip with the tuned encoder, and compute each
clip's signal statistics. The only script after training that loads EAT.

    python extract_embeddings.py --data_dir dev_data --model_path best_encoder_model.pth

Writes into EMBED_DIR the four files that are the scorers' only input (scoring.py reads and checks
them): normal_embeddings.pt, normal_stats.pt (the training normals) and test_embeddings.pt,
test_stats.pt (the test clips), each {"matrix": Tensor[N, F], "records": [ClipRecord dicts],
"columns": stat names (None for embeddings), "fingerprint": {...}}. The fingerprint names the data
folder and its clips (paths, sizes, modification times), the tuned model (path and sha256) and the
embedding settings; a file whose fingerprint differs from the current one is rebuilt, never reused.
On CUDA the fbanks are computed in batches on the GPU (preprocessing.FeatureCache.fbanks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from asd.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import numpy as np
import torch
from tqdm import tqdm

from asd.cli import parse_config, print_config
from asd.files import atomic_torch_save
from asd.runtime import autocast, resolve_device
from asd.scoring import (
    FEATURES_FORMAT,
    data_fingerprint,
    feature_paths,
    file_sha256,
    read_feature_file,
    split_records,
)

DATA_DIR = "dev_data"  # DCASE folder: <machine>/{train,test}/*.wav
MODEL_PATH = (
    "best_encoder_model.pth"  # tuned encoder written by train.py (always needed: it defines the embeddings)
)
EMBED_DIR = "."  # where the four .pt files go
SPLITS = ["train", "test"]  # train = normal training clips; test = every test clip
EMBED_BATCH_SIZE = 16  # clips (or windows) per forward pass
DEVICE = "auto"  # auto | cpu | cuda
AMP = True  # bf16 autocast on CUDA (ignored on CPU)
LONG_CLIP = "windows"  # crop: first TARGET_FRAMES only | windows: mean over windows covering the clip
POOLING = None  # None = as trained | cls | mean
TARGET_FRAMES = None  # fbank frames per window; None = as trained
FEATURE_CACHE = "cache/features"  # on-disk fbank/statistics cache folder; none = off
REBUILD = False  # rebuild even when the files are up to date
# allowed values of the constants above, checked by asd.cli.parse_config
_LIMITS = {
    "SPLITS": ("train", "test"),
    "EMBED_BATCH_SIZE": (1, None),
    "LONG_CLIP": ("crop", "windows"),
    "POOLING": ("cls", "mean"),
    "TARGET_FRAMES": (0, None),
}


# -----------------------------------------------------------------------------
# fingerprints


def embedding_settings(
    long_clip: str = LONG_CLIP,
    pooling: str | None = POOLING,
    target_frames: int | None = TARGET_FRAMES,
    amp: bool = AMP,
) -> dict:
    """The settings that change embedding values (device-independent except for precision)."""
    if long_clip not in ("crop", "windows"):
        raise ValueError(f"LONG_CLIP must be 'crop' or 'windows', got {long_clip!r}")
    if pooling not in (None, "cls", "mean"):
        raise ValueError(f"POOLING must be none, 'cls' or 'mean', got {pooling!r}")
    return {"long_clip": long_clip, "pooling": pooling, "target_frames": target_frames, "amp": bool(amp)}


def _data_part(split: str, records: Sequence, data_dir) -> dict:
    return {
        "format": FEATURES_FORMAT,
        "split": split,
        "data": data_fingerprint(records),
        "data_dir": str(Path(data_dir).resolve()),
    }


def embedding_fingerprint(
    split: str, records: Sequence, data_dir, model_path, settings: dict, device: torch.device
) -> dict:
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"tuned model {model_path} not found: run train.py first")
    precision = "bf16" if settings["amp"] and device.type == "cuda" else "fp32"
    return {
        **_data_part(split, records, data_dir),
        "model_path": str(Path(model_path).resolve()),
        "model_sha256": file_sha256(model_path),
        "settings": settings,
        "precision": precision,
    }


def stats_fingerprint(split: str, records: Sequence, data_dir) -> dict:
    from preprocessing import feature_settings

    return {**_data_part(split, records, data_dir), "features": feature_settings()}


def _stale_reason(payload: dict | None, fingerprint: dict) -> str | None:
    """Why a saved file cannot be reused (None when it can)."""
    if payload is None:
        return "missing"
    saved = payload["fingerprint"]
    changed = [key for key in sorted(set(saved) | set(fingerprint)) if saved.get(key) != fingerprint.get(key)]
    if not changed:
        return None
    names = {
        "model_sha256": "another tuned model",
        "model_path": "another tuned model path",
        "data": "other data (files added, removed or changed)",
        "data_dir": "another data folder",
        "settings": "other embedding settings",
        "precision": "another precision",
        "features": "other feature settings",
    }
    return "built from " + ", ".join(dict.fromkeys(names.get(key, key) for key in changed))


# -----------------------------------------------------------------------------
# embedding clips


def _windows(
    fbank: torch.Tensor, target_frames: int | None, long_clip: str, max_frames: int, pad_multiple: int
) -> list[torch.Tensor]:
    """The model inputs of one clip: its windows, the padded/cropped clip, or (target_frames 0) the whole
    clip padded to a multiple of ``pad_multiple`` frames, as training fed it."""
    from preprocessing import pad_or_crop, split_windows

    if target_frames is None:
        return [fbank[:max_frames]]
    if target_frames == 0:
        frames = min(-(-fbank.shape[0] // pad_multiple) * pad_multiple, max_frames)
        return [pad_or_crop(fbank, frames)]
    if long_clip == "windows":
        return list(split_windows(fbank, target_frames))
    return [pad_or_crop(fbank, target_frames)]


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
    (the asdkit recipe's input); with None at its own length (up to the encoder's maximum).
    """
    from model import base_encoder

    if long_clip not in ("crop", "windows"):
        raise ValueError(f"long_clip must be 'crop' or 'windows', got {long_clip!r}")
    device = torch.device(device)
    cfg = base_encoder(model.encoder).config
    max_frames = cfg.max_length * cfg.patch_size
    if target_frames is not None and target_frames > max_frames:
        raise ValueError(f"target_frames {target_frames} exceeds the encoder's {max_frames} frames")
    pieces, owners = [], []
    for clip_index, fbank in enumerate(fbanks):
        windows = _windows(fbank, target_frames, long_clip, max_frames, pad_multiple)
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
    records: Sequence, model, trained: dict, settings: dict, device: torch.device, batch_size: int, cache
) -> torch.Tensor:
    """Embeddings [N, D] of the clips, batched, without grad (bf16 autocast on CUDA when AMP)."""
    from preprocessing import TARGET_FRAMES as DEFAULT_FRAMES

    pooling = settings["pooling"] or model.pooling
    target_frames = settings["target_frames"]
    if target_frames is None:
        target_frames = trained.get("target_frames", DEFAULT_FRAMES)
    trained_pooling, model.pooling = model.pooling, pooling
    chunks = []
    try:
        for start in tqdm(range(0, len(records), batch_size), desc="embedding", unit="batch"):
            paths = [r.path for r in records[start : start + batch_size]]
            # on CUDA the missing fbanks are computed in batches on the GPU
            fbanks = (
                cache.fbanks(paths, device, batch_size)
                if device.type == "cuda"
                else [cache.fbank(p) for p in paths]
            )
            chunks.append(
                embed_fbanks(
                    model,
                    fbanks,
                    target_frames,
                    settings["long_clip"],
                    device,
                    settings["amp"],
                    batch_size,
                    trained.get("pad_multiple", 32),
                )
            )
    finally:
        model.pooling = trained_pooling
    return torch.cat(chunks)


def stats_records(records: Sequence, cache) -> torch.Tensor:
    """Statistics vectors [N, len(STAT_NAMES)] of the clips (from the feature cache when present)."""
    rows = [cache.stats(r.path) for r in tqdm(records, desc="statistics", unit="clip")]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def saved_settings(embed_dir: str | os.PathLike) -> dict | None:
    """The embedding settings recorded in EMBED_DIR/normal_embeddings.pt, if any (test clips are
    embedded exactly like the normals)."""
    payload = read_feature_file(feature_paths(embed_dir, "train")[0])
    return None if payload is None else payload["fingerprint"]["settings"]


def build_split(split: str, cfg, settings: dict, device: torch.device, cache) -> tuple[dict, dict]:
    """Load the embeddings and statistics of a split, (re)building whichever is missing or stale."""
    from preprocessing import STAT_NAMES

    emb_path, stats_path = feature_paths(cfg.embed_dir, split)
    records = split_records(cfg.data_dir, split)
    outputs = []
    for path, fingerprint, columns in (
        (
            emb_path,
            embedding_fingerprint(split, records, cfg.data_dir, cfg.model_path, settings, device),
            None,
        ),
        (stats_path, stats_fingerprint(split, records, cfg.data_dir), list(STAT_NAMES)),
    ):
        payload = None if cfg.rebuild else read_feature_file(path)
        reason = "rebuild requested" if cfg.rebuild else _stale_reason(payload, fingerprint)
        if reason is None:
            print(f"{path}: up to date ({len(records)} clips)")
        else:
            print(f"{path}: {reason}; computing {len(records)} {split} clips on {device}")
            if columns is None:
                model, _, trained = tuned_model(cfg.model_path, device)
                matrix = embed_records(records, model, trained, settings, device, cfg.embed_batch_size, cache)
            else:
                matrix = stats_records(records, cache)
            payload = {
                "matrix": matrix,
                "records": [r.to_dict() for r in records],
                "columns": columns,
                "fingerprint": fingerprint,
            }
            atomic_torch_save(payload, path)
        outputs.append(payload)
    return outputs[0], outputs[1]


_TUNED: dict = {}


def tuned_model(model_path, device: torch.device):
    """load_tuned, once per process (both splits share it)."""
    from asd.checkpoints import load_tuned

    key = (str(Path(model_path).resolve()), str(device))
    if key not in _TUNED:
        _TUNED.clear()
        _TUNED[key] = load_tuned(model_path, device=device)
    return _TUNED[key]


def main(argv: list[str] | None = None) -> dict[str, tuple[dict, dict]]:
    from preprocessing import FeatureCache

    cfg = parse_config(globals(), argv, description=__doc__)
    print_config(cfg)
    explicit = embedding_settings(cfg.long_clip, cfg.pooling, cfg.target_frames, cfg.amp)
    # test clips alone are embedded like the normals already on disk, unless settings were given
    settings = (
        explicit
        if "train" in cfg.splits or explicit != embedding_settings()
        else (saved_settings(cfg.embed_dir) or explicit)
    )
    device = resolve_device(cfg.device)
    cache = FeatureCache(None if str(cfg.feature_cache).lower() == "none" else cfg.feature_cache)
    out = {}
    try:
        for split in cfg.splits:
            out[split] = build_split(split, cfg, settings, device, cache)
            embeddings, stats = out[split]
            print(
                f"{split}: embeddings {tuple(embeddings['matrix'].shape)}, statistics {tuple(stats['matrix'].shape)}"
            )
    finally:
        _TUNED.clear()
    return out


if __name__ == "__main__":
    main()
