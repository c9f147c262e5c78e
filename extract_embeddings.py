"""Embed every normal training clip and every test clip with the tuned encoder, and compute each
clip's signal statistics. The only script after training that loads EAT.

    python extract_embeddings.py --data_dir dev_data --model_path best_encoder_model.pth

Writes into EMBED_DIR the four files that are the scorers' only input (asd/embed/embedding_files.py owns
their names and format): normal_embeddings.pt, normal_stats.pt (the training normals) and
test_embeddings.pt, test_stats.pt (the test clips). Each records content keys of the clips, of the
tuned model and the embedding settings; a file whose record differs from the current one is rebuilt,
never reused. On CUDA the fbanks are computed in batches on the GPU (preprocessing.FeatureCache.fbanks).

CHANNELS must be the mode the tuned model was trained with (its file records it; a mismatch is an
error naming both). 'both' embeds the near and the far channel one by one and combines the two
embeddings as CHANNEL_COMBINE says; its statistics are the near ones followed by the far ones.

A model trained on fixed-length clips (CLIP_SECONDS of train.py not "whole") is embedded as ASDKit
extracts: each clip from its start, tiled or cut to the trained length, its fbank padded to the
trained PAD_MULTIPLE, no windows, float32; LONG_CLIP and AMP do not apply to it. The window length
of a model trained on fbank clips is its TARGET_FRAMES (the clip policy the tuned model records,
asd/data/clips.py), or the whole clip.
"""

from __future__ import annotations

import sys

from asd.base.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import torch

from asd.base.cli import parse_config, print_config
from asd.base.errors import run_script
from asd.base.locks import hold_run_folder_lock
from asd.base.runtime import resolve_device
from asd.data import preprocessing
from asd.embed.embed import (
    embed_records,
    embedding_settings,
    feature_caches,
    forget_tuned_model,
    precision,
    stat_columns,
    stats_records,
    tuned_model,
    with_clip_settings,
)
from asd.embed.embedding_files import (
    check_model_channels,
    embedding_fingerprint,
    feature_paths,
    read_feature_file,
    saved_settings,
    split_records,
    stale_reason,
    stats_fingerprint,
    write_feature_file,
)

# DCASE folder: <machine>/{train,test}/*.wav
DATA_DIR = "dev_data"
# tuned encoder written by train.py (always needed: it defines the embeddings)
MODEL_PATH = "best_encoder_model.pth"
# where the four .pt files go
EMBED_DIR = "."
# train = normal training clips; test = every test clip
SPLITS = ["train", "test"]
# clips (or windows) per forward pass
EMBED_BATCH_SIZE = 16
# auto | cpu | cuda
DEVICE = "auto"
# bf16 autocast on CUDA (ignored on CPU)
AMP = True
# clips longer than the model's TARGET_FRAMES: crop = the first TARGET_FRAMES only | windows = mean over
# windows covering the clip
LONG_CLIP = "windows"
# None = as trained | cls | mean
POOLING = None
# microphone(s) heard, as in training: near (channel 0) | far | mix | residual | both
CHANNELS = preprocessing.CHANNELS
# weight of the far channel in residual (waveform) and in CHANNEL_COMBINE residual
RESIDUAL_WEIGHT = preprocessing.RESIDUAL_WEIGHT
# both: concat = [near, far] embeddings | residual = near - RESIDUAL_WEIGHT x far
CHANNEL_COMBINE = preprocessing.CHANNEL_COMBINE
FEATURE_CACHE = preprocessing.FEATURE_CACHE
# rebuild even when the files are up to date
REBUILD = False
# allowed values of the constants above, checked by asd.base.cli.parse_config
_LIMITS = {
    "SPLITS": ("train", "test"),
    "EMBED_BATCH_SIZE": (1, None),
    "LONG_CLIP": ("crop", "windows"),
    "POOLING": ("cls", "mean"),
    "CHANNELS": preprocessing.CHANNEL_MODES,
    "RESIDUAL_WEIGHT": (0.0, None),
    "CHANNEL_COMBINE": preprocessing.CHANNEL_COMBINES,
}


def build_split(split: str, cfg, settings: dict, device: torch.device, caches) -> tuple[dict, dict]:
    """Load the embeddings and statistics of a split, (re)building whichever is missing or stale."""
    emb_path, stats_path = feature_paths(cfg.embed_dir, split)
    records = split_records(cfg.data_dir, split, settings["channels"]["channels"])
    emb_fingerprint = embedding_fingerprint(
        split, records, cfg.data_dir, cfg.model_path, settings, precision(settings, device), cfg.embed_dir
    )
    outputs = []
    for path, fingerprint, columns in (
        (emb_path, emb_fingerprint, None),
        (
            stats_path,
            stats_fingerprint(split, records, cfg.data_dir, settings["channels"]),
            stat_columns(settings["channels"]),
        ),
    ):
        payload = None if cfg.rebuild else read_feature_file(path)
        reason = "rebuild requested" if cfg.rebuild else stale_reason(payload, fingerprint)
        if reason is None:
            print(f"{path}: up to date ({len(records)} clips)")
        else:
            print(f"{path}: {reason}; computing {len(records)} {split} clips on {device}")
            if columns is None:
                model, _, trained = tuned_model(cfg.model_path, device)
                matrix = embed_records(
                    records, model, trained, settings, device, cfg.embed_batch_size, caches
                )
            else:
                matrix = stats_records(records, caches)
            payload = write_feature_file(path, matrix, records, columns, fingerprint)
        outputs.append(payload)
    return outputs[0], outputs[1]


def main(argv: list[str] | None = None) -> dict[str, tuple[dict, dict]]:
    from asd.data.preprocessing import channel_record

    cfg = parse_config(globals(), argv, description=__doc__)
    print_config(cfg)
    hold_run_folder_lock([cfg.embed_dir], "extract_embeddings.py")
    channels = channel_record(cfg.channels, cfg.residual_weight, cfg.channel_combine)
    explicit = embedding_settings(cfg.long_clip, cfg.pooling, cfg.amp, channels)
    default = channel_record(CHANNELS, RESIDUAL_WEIGHT, CHANNEL_COMBINE)
    # test clips alone are embedded like the normals already on disk, unless settings were given
    settings = (
        explicit
        if "train" in cfg.splits or explicit != embedding_settings(LONG_CLIP, POOLING, AMP, default)
        else (saved_settings(cfg.embed_dir) or explicit)
    )
    settings = with_clip_settings(settings, cfg.model_path)
    if settings.get("clip_seconds") is not None:
        print(
            f"{cfg.model_path} was trained on {settings['clip_seconds']:g} s clips: each clip is embedded from "
            f"its start, tiled or cut to that length, padded to a multiple of {settings['pad_multiple']} "
            "frames, in float32 (LONG_CLIP and AMP do not apply)"
        )
    check_model_channels(cfg.model_path, settings["channels"], f"extraction into {cfg.embed_dir}")
    device = resolve_device(cfg.device)
    caches = feature_caches(cfg.feature_cache, settings["channels"])  # asd.base.cli reads "none" as None
    out = {}
    try:
        for split in cfg.splits:
            out[split] = build_split(split, cfg, settings, device, caches)
            embeddings, stats = out[split]
            print(
                f"{split}: embeddings {tuple(embeddings['matrix'].shape)}, statistics {tuple(stats['matrix'].shape)}"
            )
    finally:
        forget_tuned_model()
    return out


if __name__ == "__main__":
    sys.exit(run_script(main))
