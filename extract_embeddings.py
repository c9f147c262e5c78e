"""Embed every normal training clip (and every test clip) with the tuned encoder and compute its statistics.

    python extract_embeddings.py --data_dir dev_data --model_path best_encoder_model.pth

Writes into EMBED_DIR:
  normal_embeddings.pt, normal_stats.pt    the training normals
  test_embeddings.pt,   test_stats.pt      the test clips (a cache both evaluators reuse)
each {"matrix": Tensor[N, F], "records": [ClipRecord.to_dict()], "columns": stat names (None for
embeddings), "fingerprint": {...}, "settings": {...}}. The fingerprint names the tuned checkpoint
(its sha256), the data (paths, sizes, modification times) and the embedding settings; a file whose
fingerprint differs from the current one is rebuilt, never reused. load_split_features() is that
load-or-rebuild step, shared by train_deepSVDD.py, evaluate_deepSVDD.py and evaluate.py.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from utils import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import numpy as np
import torch
from tqdm import tqdm

from utils import atomic_torch_save, parse_config, print_config, resolve_device

DATA_DIR = "dev_data"                  # DCASE folder: <machine>/{train,test}/*.wav
MODEL_PATH = "best_encoder_model.pth"  # tuned encoder written by train.py
EMBED_DIR = "."                        # where the four .pt files go
SPLITS = ["train", "test"]             # train = normal training clips; test = the evaluators' cache
BATCH_SIZE = 16                        # clips (or windows) per forward pass
DEVICE = "auto"                        # auto | cpu | cuda
AMP = True                             # bf16 autocast on CUDA (ignored on CPU)
LONG_CLIP = "windows"                  # crop: first TARGET_FRAMES only | windows: mean over windows covering the clip
POOLING = None                         # None = as trained | cls | mean
TARGET_FRAMES = None                   # fbank frames per window; None = as trained
CACHE_DIR = "cache/features"           # on-disk fbank/statistics cache; none = off
REBUILD = False                        # rebuild even when the files are up to date
# allowed values of the constants above, checked by utils.parse_config
_LIMITS = {"BATCH_SIZE": (1, None), "TARGET_FRAMES": (16, None)}

FILE_NAMES = {"train": ("normal_embeddings.pt", "normal_stats.pt"),
              "test": ("test_embeddings.pt", "test_stats.pt")}
_FORMAT = "eat-lora-asd/features-v1"

# -----------------------------------------------------------------------------
# fingerprints


def output_paths(embed_dir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(embeddings file, statistics file) of a split."""
    if split not in FILE_NAMES:
        raise ValueError(f"split must be one of {sorted(FILE_NAMES)}, got {split!r}")
    return tuple(Path(embed_dir) / name for name in FILE_NAMES[split])


def split_records(data_dir: str | os.PathLike, split: str) -> list:
    """The clips of a split, sorted by path: training normals, or every test clip."""
    from dataset import discover_clips

    records = discover_clips(data_dir, splits=(split,))
    if split == "train":
        records = [r for r in records if r.label == "normal"]
    if not records:
        raise ValueError(f"{data_dir}: no {'normal training' if split == 'train' else 'test'} clips found")
    return records


def data_fingerprint(records: Sequence) -> str:
    """sha256 over every clip's absolute path, size, modification time and parsed metadata."""
    digest = hashlib.sha256()
    for record in records:
        stat = os.stat(record.path)
        item = [str(Path(record.path).resolve()), stat.st_size, stat.st_mtime_ns, record.to_dict()]
        digest.update(json.dumps(item, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def embedding_settings(long_clip: str = LONG_CLIP, pooling: str | None = POOLING,
                       target_frames: int | None = TARGET_FRAMES, amp: bool = AMP) -> dict:
    """The settings that change embedding values (device-independent except for precision)."""
    if long_clip not in ("crop", "windows"):
        raise ValueError(f"LONG_CLIP must be 'crop' or 'windows', got {long_clip!r}")
    if pooling not in (None, "cls", "mean"):
        raise ValueError(f"POOLING must be none, 'cls' or 'mean', got {pooling!r}")
    return {"long_clip": long_clip, "pooling": pooling, "target_frames": target_frames, "amp": bool(amp)}


def embedding_fingerprint(split: str, records: Sequence, model_path: str | os.PathLike,
                          settings: dict, device: torch.device) -> dict:
    from model import checkpoint_fingerprint

    if not Path(model_path).is_file():
        raise FileNotFoundError(f"tuned model {model_path} not found: run train.py first (it is needed to "
                                "build the embeddings and to check cached ones)")
    precision = "bf16" if settings["amp"] and device.type == "cuda" else "fp32"
    return {"format": _FORMAT, "split": split, "data": data_fingerprint(records),
            "checkpoint": checkpoint_fingerprint(model_path), "settings": settings, "precision": precision}


def stats_fingerprint(split: str, records: Sequence) -> dict:
    from preprocessing import feature_settings

    return {"format": _FORMAT, "split": split, "data": data_fingerprint(records), "features": feature_settings()}


def read_payload(path: Path) -> dict | None:
    """A saved features file, or None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        print(f"{path}: unreadable ({type(error).__name__}); rebuilding")
        return None
    return payload if isinstance(payload, dict) and "fingerprint" in payload else None


def _stale_reason(payload: dict | None, fingerprint: dict) -> str | None:
    """Why a saved file cannot be reused (None when it can)."""
    if payload is None:
        return "missing"
    saved = payload["fingerprint"]
    changed = [key for key in sorted(set(saved) | set(fingerprint)) if saved.get(key) != fingerprint.get(key)]
    if not changed:
        return None
    names = {"checkpoint": "another checkpoint", "data": "other data (files added, removed or changed)",
             "settings": "other embedding settings", "precision": "another precision",
             "features": "other feature settings", "format": "an older format"}
    return "built from " + ", ".join(names.get(key, key) for key in changed)


# -----------------------------------------------------------------------------
# building


@functools.lru_cache(maxsize=1)
def _tuned_model(model_path: str, fingerprint: str, device: str):
    """load_tuned, once per checkpoint version and device (the fingerprint keys the cache)."""
    from model import load_tuned

    return load_tuned(model_path, device=device)


def embed_records(records: Sequence, model_path: str | os.PathLike, settings: dict, device: torch.device,
                  batch_size: int, cache, checkpoint_hash: str) -> torch.Tensor:
    """Embeddings [N, D] of the clips, batched, without grad (bf16 autocast on CUDA when AMP)."""
    from model import embed_fbanks
    from preprocessing import TARGET_FRAMES as DEFAULT_FRAMES

    model, _, trained = _tuned_model(str(model_path), checkpoint_hash, str(device))
    pooling = settings["pooling"] or model.pooling
    target_frames = settings["target_frames"] or trained.get("target_frames") or DEFAULT_FRAMES
    trained_pooling, model.pooling = model.pooling, pooling
    chunks = []
    try:
        for start in tqdm(range(0, len(records), batch_size), desc="embedding", unit="batch"):
            fbanks = [cache.fbank(r.path) for r in records[start:start + batch_size]]
            chunks.append(embed_fbanks(model, fbanks, target_frames, settings["long_clip"], device,
                                       settings["amp"], batch_size))
    finally:
        model.pooling = trained_pooling
    return torch.cat(chunks)


def stats_records(records: Sequence, cache) -> torch.Tensor:
    """Statistics vectors [N, len(STAT_NAMES)] of the clips (from the feature cache when present)."""
    rows = [cache.stats(r.path) for r in tqdm(records, desc="statistics", unit="clip")]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def _payload(matrix: torch.Tensor, records: Sequence, columns: list[str] | None, fingerprint: dict,
             settings: dict) -> dict:
    return {"matrix": matrix, "records": [r.to_dict() for r in records], "columns": columns,
            "fingerprint": fingerprint, "settings": settings}


def _saved_settings(embed_dir: str | os.PathLike) -> tuple[dict | None, str | None]:
    """Embedding settings and feature-cache folder recorded in EMBED_DIR/normal_embeddings.pt (if any)."""
    payload = read_payload(output_paths(embed_dir, "train")[0])
    if payload is None or "settings" not in payload:
        return None, None
    return payload["settings"], payload.get("cache_dir")


def load_split_features(split: str, data_dir: str | os.PathLike, model_path: str | os.PathLike,
                        embed_dir: str | os.PathLike, settings: dict | None = None, device: str = "auto",
                        batch_size: int = BATCH_SIZE, cache_dir: str | None = None,
                        rebuild: bool = False) -> tuple[dict, dict]:
    """Load the embeddings and statistics of a split, (re)building whichever is missing or stale.

    ``settings`` None reuses the embedding settings recorded in the normal embeddings file (so test
    clips are embedded exactly like the normals), or the defaults when there is none; ``cache_dir``
    None likewise reuses the recorded feature-cache folder ("none" turns the cache off). Returns
    the two payloads (see the module docstring).
    """
    from preprocessing import STAT_NAMES, FeatureCache

    saved_settings, saved_cache_dir = _saved_settings(embed_dir) if settings is None or cache_dir is None else (None, None)
    settings = settings or saved_settings or embedding_settings()
    cache_dir = cache_dir or saved_cache_dir or CACHE_DIR
    device = resolve_device(device)
    emb_path, stats_path = output_paths(embed_dir, split)
    records = split_records(data_dir, split)
    cache = FeatureCache(None if cache_dir == "none" else cache_dir)

    emb_fp = embedding_fingerprint(split, records, model_path, settings, device)
    embeddings = None if rebuild else read_payload(emb_path)
    reason = "rebuild requested" if rebuild else _stale_reason(embeddings, emb_fp)
    if reason is not None:
        print(f"{emb_path}: {reason}; embedding {len(records)} {split} clips on {device}")
        matrix = embed_records(records, model_path, settings, device, batch_size, cache, emb_fp["checkpoint"])
        embeddings = _payload(matrix, records, None, emb_fp, settings) | {"cache_dir": cache_dir}
        atomic_torch_save(embeddings, emb_path)
    else:
        print(f"{emb_path}: up to date ({len(records)} clips)")

    st_fp = stats_fingerprint(split, records)
    stats = None if rebuild else read_payload(stats_path)
    reason = "rebuild requested" if rebuild else _stale_reason(stats, st_fp)
    if reason is not None:
        print(f"{stats_path}: {reason}; computing statistics of {len(records)} {split} clips")
        stats = _payload(stats_records(records, cache), records, list(STAT_NAMES), st_fp, None)
        atomic_torch_save(stats, stats_path)
    else:
        print(f"{stats_path}: up to date ({len(records)} clips)")
    return embeddings, stats


def main(argv: list[str] | None = None) -> dict[str, tuple[dict, dict]]:
    cfg = parse_config(globals(), argv, description=__doc__)
    print_config(cfg)
    settings = embedding_settings(cfg.long_clip, cfg.pooling, cfg.target_frames, cfg.amp)
    out = {}
    for split in cfg.splits:
        out[split] = load_split_features(split, cfg.data_dir, cfg.model_path, cfg.embed_dir, settings,
                                         cfg.device, cfg.batch_size, cfg.cache_dir, cfg.rebuild)
        embeddings, stats = out[split]
        print(f"{split}: embeddings {tuple(embeddings['matrix'].shape)}, statistics {tuple(stats['matrix'].shape)}")
    return out


if __name__ == "__main__":
    main()
