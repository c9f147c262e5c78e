"""Tune an EAT encoder with LoRA on an auxiliary task: classify each normal training clip's machine
type, section, attribute values (and domain, LABEL). Writes the model of the last epoch or of the best
validation epoch (KEEP_EPOCH; validation on held-out training normals, never test clips) to
best_encoder_model.pth, a resumable last_encoder_model.pth, and the per-epoch history beside the model
(<OUTPUT stem>_history.csv).

The defaults are the recipe asdkit-eat-lora (asd/base/recipes.py; a published result stands behind it). When
the clips form a single class that task teaches nothing: SINGLE_CLASS picks a pretext task (which
augmentation each clip got) or no training at all.

    python train.py --data_dir dev_data --eat_checkpoint /models/EAT-base_epoch10_pretrain
    python train.py --data_dir dev_data,eval_data ...   # one model over several folders' training clips
    python train.py --recipe arcface-v1 ...          # another named recipe (asd/base/recipes.py); explicit flags win
    torchrun --nproc_per_node 4 train.py ...        # DistributedDataParallel on several GPUs
    python train.py --resume false                  # start fresh even if an unfinished last_encoder_model.pth is there
    python train.py --channels both ...             # DCASE 2026: learn from the near and the far microphone

CHANNELS (DCASE 2026 two-channel clips; asd/data/preprocessing.py describes the modes) picks what the
encoder hears and is recorded in OUTPUT; extraction and scoring refuse another mode. With 'both'
each training clip's near and far channel are two training examples of the clip's class (the
validation split is drawn over clips first, so a clip's two views never straddle it). Why both
views rather than near only: extraction embeds the far channel through the same encoder, and
CHANNEL_COMBINE residual subtracts a share of the far embedding from the near one, which is only
meaningful when the two embeddings live in one space that the tuning shaped for both microphones;
trained on near alone, the far embeddings would be off the tuned manifold. The cost is twice the
training steps per epoch. CHANNEL_COMBINE is recorded too but does not change training.
"""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

from asd.base.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import torch
import torch.distributed as dist
import torch.nn as nn

from asd.base import recipes
from asd.base.cli import config_to_dict, parse_config, print_config
from asd.base.errors import run_script
from asd.base.locks import hold_run_folder_lock
from asd.base.runtime import seed_everything, setup_processes, tune_cpu_allocator
from asd.base.train_checks import check_settings, refuse_repeated_data_dir
from asd.data import preprocessing
from asd.data.clips import ClipPolicy, check_encoder_reach, resolve_clip_seconds
from asd.data.dataset import LabelIndex
from asd.data.labels import class_name
from asd.model.checkpoints import save_tuned
from asd.model.model import base_encoder
from asd.train import training
from asd.train.augment import PRETEXT_TASKS, pretext_label_index
from asd.train.epochs import Loop, train_epochs
from asd.train.history import new_history

# named settings (asd/base/recipes.py) applied over the constants below; "" = none
# (the constants as written); flags and values given to run_all.py still win
RECIPE = ""
# DCASE folder(s), comma-separated: <machine>/train/*.wav (test clips: names only, CLASSES_FROM)
DATA_DIR = "dev_data"
# machine types to train on, comma-separated; empty = all
MACHINE_TYPES = []
# HF folder (config.json + weights), fairseq .pt or hub id; None = random init (demo)
EAT_CHECKPOINT = None
# random encoder size when EAT_CHECKPOINT is None: tiny | base | large
MODEL_SIZE = "base"
# utterance embedding: "cls" token or "mean" of the patch tokens
POOLING = "cls"
# linear layer after pooling; its output is the embedding used downstream (0 = none)
PROJECTION_DIM = 256
# passes over the training clips
EPOCHS = 25
# clips per step and process
BATCH_SIZE = 8
# steps whose gradients add up before one optimizer update
GRAD_ACCUM = 1
# peak AdamW learning rate (LoRA, projection and head)
LEARNING_RATE = 1e-4
# linear warm-up over this many optimizer steps plus WARMUP_EPOCHS' worth
WARMUP_STEPS = 5000
# further warm-up in epochs (may be fractional), added to WARMUP_STEPS
WARMUP_EPOCHS = 0.0
# after the warm-up: "constant" or "cosine" (down to LEARNING_RATE * MIN_LR_RATIO)
LR_SCHEDULE = "constant"
# the cosine decays to LEARNING_RATE * MIN_LR_RATIO
MIN_LR_RATIO = 0.01
# warm-up factor at optimizer step k: k / warm-up ("timm", first step at 0) or (k + 1) / warm-up ("project")
WARMUP_RULE = "timm"
# AdamW decoupled weight decay
WEIGHT_DECAY = 0.01
# which trainable parameters decay: "all" or "matrices" (not norms and biases)
DECAY = "all"
# max gradient norm; 0 disables clipping
GRAD_CLIP = 0.0
# LoRA rank on the LORA_TARGETS layers of every block
LORA_RANK = 64
# LoRA scaling numerator (scale = alpha / rank)
LORA_ALPHA = 8.0
# dropout on the LoRA branch
LORA_DROPOUT = 0.0
# stochastic depth of the last block, rising linearly from 0 at the first (0 = none)
DROP_PATH = 0.1
# layers of every block that get LoRA: qkv, proj (attention), fc1, fc2 (MLP)
LORA_TARGETS = ["qkv"]
# also train norm1/norm2 of the last K blocks
UNFREEZE_LAST_NORMS = 0
# auxiliary classifier: "scadacos" (sub-cluster AdaCos), "arcface" (angular margin), "linear" (softmax)
HEAD = "scadacos"
# SCAdaCos centres per class
SUB_CLUSTERS = 16
# SCAdaCos centres are trained (False: fixed at their seeded random start)
TRAIN_CENTRES = True
# SCAdaCos scale: "fixed" at sqrt(2) ln(N - 1), N = classes x SUB_CLUSTERS, or "adaptive" (AdaCos rule every
# batch)
SCALE = "fixed"
# SCAdaCos centres start as a seeded "xavier" uniform or "normal" draw
CENTRE_INIT = "xavier"
# classes: machine, section, attributes and domain ("attributes_domain") or without domain ("attributes")
LABEL = "attributes_domain"
# classes counted over training clips ("train") or also labelled test clip names ("train_test")
CLASSES_FROM = "train_test"
# evaluation list(s) eval_data_list_YYYY.csv, comma-separated ("anonymised,original" rows): anonymised test
# clips count under their original names (CLASSES_FROM train_test), as ASDKit does; "" = they add no class
EVAL_LIST = ""
# ArcFace logit scale s
ARCFACE_SCALE = 30.0
# ArcFace additive angular margin m (radians)
ARCFACE_MARGIN = 0.5
# clips of one class only: "pretext" (learn which augmentation was applied) or "frozen" (no training)
SINGLE_CLASS = "pretext"
# share of each class held out for validation (stratified)
VAL_FRACTION = 0.0
# OUTPUT holds the "last" epoch or the "best" validation epoch
KEEP_EPOCH = "last"
# split, initialisation and augmentation seed
SEED = 0
# DataLoader worker processes per training process
NUM_WORKERS = 2
# "auto" (CUDA when present), "cpu", "cuda"
DEVICE = "auto"
# bf16 autocast on CUDA (no effect on CPU); ASDKit trains in float32
AMP = False
# waveforms tiled/cropped to this many seconds ("auto": 18 for DCASE 2023, 12 for 2024, else the longest clip)
# or "whole"
CLIP_SECONDS = "auto"
# CLIP_SECONDS whole: fbank frames per clip (padded / cropped); 0 = each clip whole, padded to PAD_MULTIPLE
# and the batch's longest
TARGET_FRAMES = 0
# fixed-length or whole clips: fbanks are zero-padded to a multiple of this many frames
PAD_MULTIPLE = 32
# TARGET_FRAMES > 0: crop longer training clips at a random offset
RANDOM_CROP = True
# random time and frequency masks on training fbanks
SPEC_AUGMENT = False
# widest time mask (frames)
TIME_MASK = 80
# widest frequency mask (mel bins)
FREQ_MASK = 16
# masks of each kind per clip
NUM_MASKS = 2
# "sample_wave": each clip's waveform and target mixed with MIXUP_PROB, lam ~ U(0, 1); "batch_fbank": whole
# batches' fbanks
MIXUP = "sample_wave"
# share of training clips (sample_wave) or batches (batch_fbank) that are mixed (0 = never)
MIXUP_PROB = 0.5
# batch_fbank: Beta(alpha, alpha) mixing weights
MIXUP_ALPHA = 0.2
# microphone(s) heard: near (channel 0, the 2026 baseline's) | far | mix | residual | both
CHANNELS = preprocessing.CHANNELS
# far channel's weight in residual (near - w x far) and CHANNEL_COMBINE residual
RESIDUAL_WEIGHT = preprocessing.RESIDUAL_WEIGHT
# both: how extraction combines the embeddings (concat | residual); recorded only
CHANNEL_COMBINE = preprocessing.CHANNEL_COMBINE
FEATURE_CACHE = preprocessing.FEATURE_CACHE
# tuned model of KEEP_EPOCH's epoch (LoRA, head, classes, settings)
OUTPUT = "best_encoder_model.pth"
# last epoch with optimizer/scheduler state, for RESUME
LAST_CHECKPOINT = "last_encoder_model.pth"
# auto: continue an unfinished LAST_CHECKPOINT of the same settings, else start fresh saying why | true: must
# continue it | false: start fresh
RESUME = "auto"
# allowed values of the constants above, checked by asd.base.cli.parse_config
_LIMITS = {
    "RECIPE": ("", *recipes.RECIPES),
    "EPOCHS": (1, None),
    "BATCH_SIZE": (1, None),
    "GRAD_ACCUM": (1, None),
    "LEARNING_RATE": (">0", None),
    "WARMUP_STEPS": (0, None),
    "WARMUP_EPOCHS": (0.0, None),
    "LR_SCHEDULE": ("constant", "cosine"),
    "WARMUP_RULE": ("timm", "project"),
    "DECAY": ("all", "matrices"),
    "DROP_PATH": (0.0, "<1"),
    "SCALE": ("fixed", "adaptive"),
    "CENTRE_INIT": ("xavier", "normal"),
    "LABEL": ("attributes_domain", "attributes"),
    "CLASSES_FROM": ("train_test", "train"),
    "KEEP_EPOCH": ("last", "best"),
    "MIXUP": ("sample_wave", "batch_fbank"),
    "MIN_LR_RATIO": (0.0, 1.0),
    "WEIGHT_DECAY": (0.0, None),
    "GRAD_CLIP": (0.0, None),
    "LORA_RANK": (1, None),
    "LORA_ALPHA": (">0", None),
    "LORA_DROPOUT": (0.0, "<1"),
    "LORA_TARGETS": ("qkv", "proj", "fc1", "fc2"),
    "UNFREEZE_LAST_NORMS": (0, None),
    "HEAD": ("scadacos", "arcface", "linear"),
    "SUB_CLUSTERS": (1, None),
    "PROJECTION_DIM": (0, None),
    "POOLING": ("cls", "mean"),
    "ARCFACE_SCALE": (">0", None),
    "ARCFACE_MARGIN": (0.0, None),
    "SINGLE_CLASS": ("pretext", "frozen"),
    "VAL_FRACTION": (0.0, "<1"),
    "SEED": (0, None),
    "NUM_WORKERS": (0, None),
    "TARGET_FRAMES": (0, None),
    "PAD_MULTIPLE": (1, None),
    "TIME_MASK": (0, None),
    "FREQ_MASK": (0, None),
    "NUM_MASKS": (0, None),
    "MIXUP_PROB": (0.0, 1.0),
    "MIXUP_ALPHA": (">0", None),
    "RESUME": ("auto", "true", "false"),
    "MODEL_SIZE": ("tiny", "base", "large"),
    "CHANNELS": preprocessing.CHANNEL_MODES,
    "RESIDUAL_WEIGHT": (0.0, None),
    "CHANNEL_COMBINE": preprocessing.CHANNEL_COMBINES,
}


def main(argv: list[str] | None = None) -> dict:
    refuse_repeated_data_dir(sys.argv[1:] if argv is None else argv, "train.py")
    cfg = parse_config(globals(), argv, description=__doc__)
    check_settings(cfg)
    hold_run_folder_lock([cfg.output, cfg.last_checkpoint], "train.py")
    rank, world, device = setup_processes(cfg.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    try:
        return run(cfg, rank, world, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def announce_single_class(cfg, records: list) -> None:
    print(
        f"WARNING: all {len(records)} training clips form one class ({class_name(records[0], cfg.label)}): classifying "
        "them teaches the encoder nothing (loss 0 from the first step). "
        + (
            "Training on a pretext task instead: which of " + ", ".join(PRETEXT_TASKS) + " each clip got."
            if cfg.single_class == "pretext"
            else "SINGLE_CLASS frozen: no training."
        )
    )


def save_frozen(cfg, label_index: LabelIndex, show: bool) -> dict:
    """SINGLE_CLASS "frozen": no training. The encoder as loaded (LoRA at zero, no projection, a
    linear head) is written to OUTPUT, so the embeddings are the pretrained encoder's."""
    frozen = SimpleNamespace(**{**vars(cfg), "projection_dim": 0, "head": "linear"})
    model = training.build_model(frozen, len(label_index), show)
    if show:
        settings = {**config_to_dict(frozen), "best_epoch": 0, "task": "frozen"}
        save_tuned(cfg.output, model, label_index, settings, cfg.eat_checkpoint)
        print(f"no training (SINGLE_CLASS frozen): the encoder as loaded -> {cfg.output}")
    return {"epochs": [], "num_classes": len(label_index), "task": "frozen", "best": {}}


def run(cfg, rank: int, world: int, device: torch.device) -> dict:
    show = rank == 0
    if show:
        print_config(cfg, "train.py settings")
    seed_everything(cfg.seed)
    records = training.training_records(cfg)
    label_index = training.class_index(cfg, records, show)
    pretext = len({class_name(r, cfg.label) for r in records}) == 1
    if pretext and show:
        announce_single_class(cfg, records)
    if pretext and cfg.single_class == "frozen":
        return save_frozen(cfg, label_index, show)
    train_records, val_records = training.split_clips(cfg, records, label_index, show)
    seconds, why = resolve_clip_seconds(cfg.clip_seconds, training.data_dirs(cfg), records)
    policy = ClipPolicy.from_config(cfg, seconds)
    task_index = pretext_label_index() if pretext else label_index
    model = training.build_model(cfg, len(task_index), show).to(device)
    encoder = base_encoder(model.encoder).config
    reach = encoder.max_length * encoder.patch_size
    check_encoder_reach(records, policy, reach)  # before any fbank is computed
    train_loader, val_loader, caches = training.make_loaders(
        cfg, label_index, train_records, val_records, policy, show
    )
    if show and seconds is not None:
        print(
            f"fixed-length clips: {seconds:g} s ({why}); tiled or cropped at a random offset in "
            "training, from the start in validation and extraction"
        )
    steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
    optimizer, scheduler = training.make_optimizer(model, cfg, steps_per_epoch)
    warmup = training.warmup_length(cfg, steps_per_epoch)
    if show and warmup > cfg.epochs * steps_per_epoch:
        print(
            f"note: the warm-up ({warmup} steps) outlasts training ({cfg.epochs * steps_per_epoch} steps): "
            "the learning rate never reaches LEARNING_RATE"
        )
    step_module: nn.Module = training.TrainStep(model)
    if dist.is_initialized():
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    loop = Loop(
        cfg=cfg, model=model, step_module=step_module, optimizer=optimizer, scheduler=scheduler,
        train_loader=train_loader, val_loader=val_loader, label_index=task_index, device=device, rank=rank,
        world=world, pretext=pretext, policy=policy,
    )  # fmt: skip
    history = new_history(len(task_index), len(train_records), len(val_records), pretext)
    history = train_epochs(loop, history)
    history["feature_cache"] = {
        "hits": sum(getattr(c, "hits", 0) for c in caches) if cfg.feature_cache else None,
        "misses": sum(getattr(c, "misses", 0) for c in caches) if cfg.feature_cache else None,
    }
    return history


if __name__ == "__main__":
    sys.exit(run_script(main))
