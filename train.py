"""Tune an EAT encoder with LoRA on an auxiliary task: classify each normal training clip's machine
type, section and attribute values. Writes the best model by validation accuracy (held-out training
normals, never test clips) to best_encoder_model.pth, and a resumable last_encoder_model.pth.

The defaults are the recipe asdkit-eat-lora (recipes.py; a published result stands behind it). When
the clips form a single class that task teaches nothing: SINGLE_CLASS picks a pretext task (which
augmentation each clip got) or no training at all.

    python train.py --data_dir dev_data --eat_checkpoint /models/EAT-base_epoch10_pretrain
    python train.py --recipe arcface-v1 ...          # another named recipe (recipes.py); explicit flags win
    torchrun --nproc_per_node 4 train.py ...        # DistributedDataParallel on several GPUs
    python train.py --resume false                  # start fresh even if an unfinished last_encoder_model.pth is there
    python train.py --channels both ...             # DCASE 2026: learn from the near and the far microphone

CHANNELS (DCASE 2026 two-channel clips; preprocessing.py describes the modes) picks what the
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

from asd.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import torch
import torch.distributed as dist
import torch.nn as nn

from asd import training
from asd.augment import PRETEXT_TASKS, pretext_label_index
from asd.checkpoints import save_tuned, tensors_checksum
from asd.cli import config_to_dict, parse_config, print_config
from asd.recipes import expand_recipe, recipe_summary
from asd.resume import resume_state, save_last
from asd.runtime import seed_everything, tune_cpu_allocator
from dataset import LabelIndex, stratified_split
from model import trainable_state

RECIPE = "asdkit-eat-lora"  # named settings (recipes.py) the defaults below equal; --recipe NAME applies another's (explicit flags still win)
DATA_DIR = "dev_data"  # DCASE folder: <machine>/train/*.wav (test clips are never read)
MACHINE_TYPES = []  # machine types to train on, comma-separated; empty = all
EAT_CHECKPOINT = (
    None  # HF folder (config.json + model.safetensors) or fairseq .pt; None = random init (demo only)
)
MODEL_SIZE = "base"  # random encoder size when EAT_CHECKPOINT is None: tiny | base | large
POOLING = "cls"  # utterance embedding: "cls" token or "mean" of the patch tokens
PROJECTION_DIM = 256  # linear layer after pooling; its output is the embedding used downstream (0 = none)
EPOCHS = 25  # passes over the training clips
BATCH_SIZE = 8  # clips per step and process
GRAD_ACCUM = 1  # steps whose gradients add up before one optimizer update
LEARNING_RATE = 1e-4  # peak AdamW learning rate (LoRA, projection and head)
WARMUP_STEPS = 5000  # linear warm-up over this many optimizer steps plus WARMUP_EPOCHS' worth
WARMUP_EPOCHS = 0.0  # further warm-up in epochs (may be fractional), added to WARMUP_STEPS
LR_SCHEDULE = "constant"  # after the warm-up: "constant" or "cosine" (down to LEARNING_RATE * MIN_LR_RATIO)
MIN_LR_RATIO = 0.01  # the cosine decays to LEARNING_RATE * MIN_LR_RATIO
WEIGHT_DECAY = 0.01  # AdamW decay on matrices (not on norms and biases)
GRAD_CLIP = 1.0  # max gradient norm; 0 disables clipping
LORA_RANK = 64  # LoRA rank on the LORA_TARGETS layers of every block
LORA_ALPHA = 128.0  # LoRA scaling numerator (scale = alpha / rank)
LORA_DROPOUT = 0.1  # dropout on the LoRA branch
LORA_TARGETS = ["qkv"]  # layers of every block that get LoRA: qkv, proj (attention), fc1, fc2 (MLP)
UNFREEZE_LAST_NORMS = 0  # also train norm1/norm2 of the last K blocks
HEAD = "scadacos"  # auxiliary classifier: "scadacos" (sub-cluster AdaCos), "arcface" (angular margin), "linear" (softmax)
SUB_CLUSTERS = 16  # SCAdaCos centres per class
TRAIN_CENTRES = True  # SCAdaCos centres are trained (False: fixed at their seeded random start)
ARCFACE_SCALE = 30.0  # ArcFace logit scale s
ARCFACE_MARGIN = 0.5  # ArcFace additive angular margin m (radians)
SINGLE_CLASS = "pretext"  # clips of one class only: "pretext" (learn which augmentation was applied) or "frozen" (no training)
VAL_FRACTION = 0.1  # share of each class held out for validation (stratified)
SEED = 0  # split, initialisation and augmentation seed
NUM_WORKERS = 2  # DataLoader worker processes per training process
DEVICE = "auto"  # "auto" (CUDA when present), "cpu", "cuda"
AMP = True  # bf16 autocast on CUDA (no effect on CPU)
TARGET_FRAMES = 0  # frames per clip (zero-padded / cropped); 0 = each clip whole, padded to PAD_MULTIPLE and the batch's longest
PAD_MULTIPLE = 32  # TARGET_FRAMES 0: clips are zero-padded to a multiple of this many frames
RANDOM_CROP = True  # TARGET_FRAMES > 0: crop longer training clips at a random offset
SPEC_AUGMENT = False  # random time and frequency masks on training fbanks
TIME_MASK = 80  # widest time mask (frames)
FREQ_MASK = 16  # widest frequency mask (mel bins)
NUM_MASKS = 2  # masks of each kind per clip
MIXUP_PROB = 0.5  # share of training batches whose clip pairs and targets are mixed (0 = never)
MIXUP_ALPHA = 0.2  # Beta(alpha, alpha) mixing weights
CHANNELS = "near"  # microphone(s) heard: near (channel 0, the 2026 baseline's) | far | mix | residual | both
RESIDUAL_WEIGHT = 0.5  # far channel's weight in residual (near - w x far) and CHANNEL_COMBINE residual
CHANNEL_COMBINE = "concat"  # both: how extraction combines the embeddings (concat | residual); recorded only
FEATURE_CACHE = "cache/features"  # fbank cache folder; None keeps all fbanks in memory instead
OUTPUT = "best_encoder_model.pth"  # best model (LoRA + head + label index + settings)
LAST_CHECKPOINT = "last_encoder_model.pth"  # last epoch with optimizer/scheduler state, for RESUME
RESUME = "auto"  # auto: continue an unfinished LAST_CHECKPOINT of the same settings, else start fresh saying why | true: must continue it | false: start fresh
# allowed values of the constants above, checked by asd.cli.parse_config
_LIMITS = {
    "RECIPE": ("asdkit-eat-lora", "arcface-v1"),
    "EPOCHS": (1, None),
    "BATCH_SIZE": (1, None),
    "GRAD_ACCUM": (1, None),
    "LEARNING_RATE": (">0", None),
    "WARMUP_STEPS": (0, None),
    "WARMUP_EPOCHS": (0.0, None),
    "LR_SCHEDULE": ("constant", "cosine"),
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
    "CHANNELS": ("near", "far", "mix", "residual", "both"),
    "RESIDUAL_WEIGHT": (0.0, None),
    "CHANNEL_COMBINE": ("concat", "residual"),
}


def check_settings(cfg) -> None:
    """What _LIMITS cannot say: a fixed clip length must fill at least one 16-frame patch."""
    if 0 < cfg.target_frames < 16:
        raise ValueError(f"TARGET_FRAMES {cfg.target_frames}: must be 0 (whole clips) or at least 16 frames")


def main(argv: list[str] | None = None) -> dict:
    argv = expand_recipe("train", sys.argv[1:] if argv is None else argv)
    cfg = parse_config(globals(), argv, description=__doc__)
    check_settings(cfg)
    rank, world, device = training.setup_processes(cfg.device)
    show = rank == 0
    if device.type == "cpu":
        tune_cpu_allocator()
    try:
        return run(cfg, rank, device, show)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def announce_single_class(cfg, records: list, label_index: LabelIndex) -> None:
    print(
        f"WARNING: all {len(records)} training clips form one class ({label_index.names[0]}): classifying "
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


def split_clips(cfg, records: list, label_index: LabelIndex, show: bool) -> tuple[list, list]:
    """(training clips, validation clips): VAL_FRACTION of each class held out."""
    train_records, val_records = stratified_split(records, cfg.val_fraction, cfg.seed)
    if show:
        print(
            f"{len(records)} normal training clips, {len(label_index)} classes: "
            f"{len(train_records)} to train, {len(val_records)} to validate on"
        )
        if not val_records:
            print(
                "WARNING: no validation clips (VAL_FRACTION 0 or single-clip classes): "
                "the best model is chosen by training accuracy"
            )
    return train_records, val_records


def new_history(label_index: LabelIndex, train_records: list, val_records: list, pretext: bool) -> dict:
    return {
        "train_loss": [],
        "train_acc": [],
        "val_loss": [],
        "val_acc": [],
        "lr": [],
        "epochs": [],
        "num_classes": len(label_index),
        "num_train": len(train_records),
        "num_val": len(val_records),
        "task": "pretext" if pretext else "classes",
    }


def run(cfg, rank: int, device: torch.device, show: bool) -> dict:
    if show:
        print_config(cfg, "train.py settings")
        print(recipe_summary(cfg.recipe, "train", vars(cfg)))
    seed_everything(cfg.seed)
    records = training.training_records(cfg)
    label_index = LabelIndex.from_records(records)
    pretext = len(label_index) == 1
    if pretext and show:
        announce_single_class(cfg, records, label_index)
    if pretext and cfg.single_class == "frozen":
        return save_frozen(cfg, label_index, show)
    train_records, val_records = split_clips(cfg, records, label_index, show)
    caches = training.feature_sources(cfg, [r.path for r in records], show)
    train_loader = training.make_loader(training.clip_dataset(train_records, label_index, caches), cfg, True)
    val_loader = (
        training.make_loader(training.clip_dataset(val_records, label_index, caches), cfg, False)
        if val_records
        else None
    )
    if pretext:
        label_index = pretext_label_index()

    model = training.build_model(cfg, len(label_index), show).to(device)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
    optimizer, scheduler = training.make_optimizer(model, cfg, steps_per_epoch)
    warmup = training.warmup_length(cfg, steps_per_epoch)
    if show and warmup > cfg.epochs * steps_per_epoch:
        print(
            f"note: the warm-up ({warmup} steps) outlasts training ({cfg.epochs * steps_per_epoch} steps): "
            "the learning rate never reaches LEARNING_RATE"
        )
    history = new_history(label_index, train_records, val_records, pretext)
    best, start_epoch = {}, 1
    state = resume_state(cfg, model, optimizer, scheduler, label_index, show)
    if state is not None:
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
    step_module: nn.Module = training.TrainStep(model)
    if dist.is_initialized():
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    loop = SimpleNamespace(
        cfg=cfg, model=model, step_module=step_module, optimizer=optimizer, scheduler=scheduler,
        train_loader=train_loader, val_loader=val_loader, label_index=label_index,
        device=device, rank=rank, show=show, pretext=pretext,
    )  # fmt: skip
    for epoch in range(start_epoch, cfg.epochs + 1):
        best = fit_epoch(loop, epoch, history, best)
    if show and best:
        print(
            f"best epoch {best['epoch']}: val acc {best['val_acc']:.3f}, val loss {best['val_loss']:.4f} -> {cfg.output}"
        )
    history["best"] = best
    history["feature_cache"] = {
        "hits": sum(getattr(c, "hits", 0) for c in caches) if cfg.feature_cache else None,
        "misses": sum(getattr(c, "misses", 0) for c in caches) if cfg.feature_cache else None,
    }
    return history


def fit_epoch(loop: SimpleNamespace, epoch: int, history: dict, best: dict) -> dict:
    """Train one epoch, validate, record it in ``history``, save the best and last models; the new best."""
    cfg, show = loop.cfg, loop.show
    # every epoch's shuffling and augmentation depend only on (seed, epoch, rank): resuming repeats them
    seed_everything(cfg.seed + 1000 * epoch + loop.rank)
    training.seed_epoch(loop.train_loader, cfg.seed, epoch)
    lr = loop.optimizer.param_groups[0]["lr"]
    sums = training.train_epoch(
        loop.step_module, loop.train_loader, loop.optimizer, loop.scheduler, cfg, loop.device, epoch, show,
        loop.pretext,
    )  # fmt: skip
    loss_sum, correct, count = training.all_sum(list(sums), loop.device)
    train_loss, train_acc = loss_sum / count, correct / count
    if loop.val_loader is not None:
        sums = training.evaluate(loop.model, loop.val_loader, cfg, loop.device, show, loop.pretext)
        loss_sum, correct, count = training.all_sum(list(sums), loop.device)
        val_loss, val_acc = loss_sum / count, correct / count
    else:
        val_loss, val_acc = train_loss, train_acc
    for key, value in (
        ("train_loss", train_loss),
        ("train_acc", train_acc),
        ("val_loss", val_loss),
        ("val_acc", val_acc),
        ("lr", lr),
        ("epochs", epoch),
    ):
        history[key].append(value)
    improved = training.is_better(val_acc, val_loss, best)
    if improved:
        best = {
            "epoch": epoch,
            "val_acc": val_acc,
            "val_loss": val_loss,
            "trainable_sha256": tensors_checksum(trainable_state(loop.model)),
        }
    if show:
        print(
            f"epoch {epoch}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.3f}  "
            f"val loss {val_loss:.4f} acc {val_acc:.3f}  lr {lr:.2e}"
            + ("  * best, saved" if improved else "")
        )
        if improved:
            settings = {**config_to_dict(cfg), "best_epoch": epoch, "val_acc": val_acc, "val_loss": val_loss}
            save_tuned(cfg.output, loop.model, loop.label_index, settings, cfg.eat_checkpoint)
        save_last(cfg, loop.model, loop.optimizer, loop.scheduler, loop.label_index, epoch, history, best)
    if dist.is_initialized():
        dist.barrier()
    return best


if __name__ == "__main__":
    main()
