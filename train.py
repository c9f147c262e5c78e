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
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from types import SimpleNamespace

from asd.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from asd.checkpoints import build_encoder, save_tuned, tensors_checksum
from asd.cli import config_to_dict, parse_config, print_config
from asd.files import atomic_torch_save
from asd.runtime import autocast, resolve_device, seed_everything, tune_cpu_allocator
from dataset import (
    ClipDataset,
    FixedLengthCollate,
    LabelIndex,
    VariableLengthCollate,
    discover_clips,
    stratified_split,
)
from model import ASDModel, add_lora, count_parameters, make_head, trainable_state
from preprocessing import PAD_VALUE, FeatureCache

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
}


# ----------------------------------------------------------------------------- processes


def setup_processes(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device): DDP whenever torchrun started the process (one process too), else
    a plain process."""
    if "LOCAL_RANK" not in os.environ:
        return 0, 1, resolve_device(device_name)
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), world, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def all_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# ----------------------------------------------------------------------------- data


class MemoryFeatures:
    """fbanks held in memory (FEATURE_CACHE None): computed once, before the loaders fork."""

    def __init__(self, paths: list[str], show: bool):
        compute = FeatureCache(None)
        self.fbanks = {p: compute.fbank(p) for p in tqdm(paths, desc="fbanks", disable=not show)}

    def fbank(self, path: str) -> torch.Tensor:
        return self.fbanks[path]


def training_records(cfg) -> list:
    records = discover_clips(cfg.data_dir, splits=("train",), machine_types=cfg.machine_types or None)
    normal = [r for r in records if r.split == "train" and r.label == "normal"]
    if not normal:
        raise ValueError(f"{cfg.data_dir}: no normal training clips found")
    return normal


def make_loader(dataset: ClipDataset, cfg, train: bool, world: int) -> DataLoader:
    sampler = DistributedSampler(dataset, shuffle=train, seed=cfg.seed) if dist.is_initialized() else None
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        collate_fn=VariableLengthCollate(cfg.pad_multiple)
        if cfg.target_frames == 0
        else FixedLengthCollate(cfg.target_frames, random_crop=train and cfg.random_crop),
        generator=torch.Generator() if train and sampler is None else None,  # reseeded every epoch
    )


def spec_augment(x: torch.Tensor, time_mask: int, freq_mask: int, num_masks: int) -> torch.Tensor:
    """Zero random time and frequency bands of each clip in [B, 1, T, F] (new tensor)."""
    B, _, T, Fq = x.shape
    keep = torch.ones(B, 1, T, Fq, dtype=torch.bool, device=x.device)
    for size, width in ((T, time_mask), (Fq, freq_mask)):
        positions = torch.arange(size, device=x.device)
        for _ in range(num_masks):
            w = torch.randint(0, min(width, size) + 1, (B, 1), device=x.device)
            start = (torch.rand(B, 1, device=x.device) * (size - w + 1)).long()
            band = (positions >= start) & (positions < start + w)  # [B, size]
            keep &= ~(band[:, None, :, None] if size == T else band[:, None, None, :])
    return x * keep


def mixup_batch(
    x: torch.Tensor, labels: torch.Tensor, prob: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """With probability ``prob``: (lam * x + (1 - lam) * x[perm], labels[perm], lam), lam ~ Beta(alpha, alpha);
    otherwise (x, None, 1.0). Draws from the global torch RNG (seeded per epoch)."""
    if prob <= 0 or float(torch.rand(())) >= prob:
        return x, None, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(x.shape[0]).to(x.device)
    return lam * x + (1 - lam) * x[order], labels[order], lam


_PRETEXT_TASKS = ("none", "time_stretch", "pitch_shift", "overlay")
_STRETCH, _SHIFT_BINS = 1.25, 8


def pretext_batch(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one of _PRETEXT_TASKS to each clip of [B, 1, T, F] -> (clips, index of the task applied).

    The task is drawn uniformly per clip (``generator``, else the global RNG). time_stretch: the
    clip played 1.25x slower (time axis linearly interpolated, the first T frames kept);
    pitch_shift: every mel bin moved 8 bins up (the lowest 8 filled with PAD_VALUE); overlay: the
    clip mixed (mean) with itself delayed by half its length (so a batch of one works too).
    """
    B, _, T, Fq = x.shape
    labels = torch.randint(0, len(_PRETEXT_TASKS), (B,), generator=generator).to(x.device)
    stretched = F.interpolate(x, size=(round(T * _STRETCH), Fq), mode="bilinear", align_corners=False)[
        :, :, :T
    ]
    shifted = torch.cat([torch.full_like(x[..., :_SHIFT_BINS], PAD_VALUE), x[..., :-_SHIFT_BINS]], dim=-1)
    overlaid = 0.5 * (x + x.roll(T // 2, dims=2))
    versions = torch.stack([x, stretched, shifted, overlaid])  # same order as _PRETEXT_TASKS
    return versions[labels, torch.arange(B, device=x.device)], labels


def pretext_label_index() -> LabelIndex:
    """Class names of the pretext task, sorted in _PRETEXT_TASKS order (so index = task index)."""
    return LabelIndex(f"pretext/{i}_{name}" for i, name in enumerate(_PRETEXT_TASKS))


# ----------------------------------------------------------------------------- model and optimisation


class TrainStep(nn.Module):
    """What DDP wraps: embeddings once, the head's loss (mixup-aware) and its plain logits for accuracy."""

    def __init__(self, model: ASDModel):
        super().__init__()
        self.model = model

    def forward(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        mixed_labels: torch.Tensor | None = None,
        lam: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.model.embed(x)
        return self.model.head.loss(emb, labels, mixed_labels, lam), self.model.head(emb).detach()


def build_model(cfg, num_classes: int, show: bool) -> ASDModel:
    encoder = build_encoder(cfg.eat_checkpoint, cfg.model_size, init_seed=cfg.seed, verbose=show)
    wrapped = add_lora(
        encoder, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.unfreeze_last_norms, cfg.lora_targets
    )
    head = make_head(
        cfg.head,
        encoder.embed_dim,
        num_classes,
        cfg.arcface_scale if cfg.head == "arcface" else None,
        cfg.arcface_margin,
        cfg.sub_clusters,
        cfg.train_centres,
        cfg.projection_dim,
    )
    model = ASDModel(wrapped, head, cfg.pooling)
    if show:
        trainable, total = count_parameters(model)
        print(
            f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%; "
            f"LoRA + projection + head)"
        )
    return model


def warmup_length(cfg, steps_per_epoch: int) -> int:
    """Optimizer steps of linear warm-up: WARMUP_STEPS plus WARMUP_EPOCHS' worth."""
    return cfg.warmup_steps + round(cfg.warmup_epochs * steps_per_epoch)


def make_optimizer(model: nn.Module, cfg, steps_per_epoch: int):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = warmup_length(cfg, steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_epoch(
    step_module: nn.Module,
    loader: DataLoader,
    optimizer,
    scheduler,
    cfg,
    device,
    epoch: int,
    show: bool,
    pretext: bool = False,
) -> tuple[float, float, float]:
    """(summed loss, correct, clips) of one pass; the optimizer steps every GRAD_ACCUM batches.

    ``pretext``: the labels are which _PRETEXT_TASKS augmentation each clip got (no mixup then).
    """
    step_module.train()
    loss_sum = correct = count = 0.0
    batches = tqdm(loader, desc=f"epoch {epoch} train", disable=not show, leave=False)
    for i, (x, labels, _) in enumerate(batches):
        x, labels = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if pretext:
            x, labels = pretext_batch(x)
        if cfg.spec_augment:
            x = spec_augment(x, cfg.time_mask, cfg.freq_mask, cfg.num_masks)
        x, mixed_labels, lam = mixup_batch(x, labels, 0.0 if pretext else cfg.mixup_prob, cfg.mixup_alpha)
        update = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(loader)
        no_sync = (
            step_module.no_sync
            if isinstance(step_module, nn.parallel.DistributedDataParallel) and not update
            else contextlib.nullcontext
        )
        with no_sync():
            with autocast(device, cfg.amp):
                loss, plain = step_module(x, labels, mixed_labels, lam)
            (loss / cfg.grad_accum).backward()
        if update:
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(
                    [p for p in step_module.parameters() if p.requires_grad], cfg.grad_clip
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.item() * len(labels)
        correct += (plain.argmax(1) == labels).sum().item()
        count += len(labels)
        batches.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}")
    return loss_sum, correct, count


@torch.no_grad()
def evaluate(
    model: ASDModel, loader: DataLoader, cfg, device, show: bool, pretext: bool = False
) -> tuple[float, float, float]:
    """(summed loss, correct, clips) on held-out clips, without augmentation (``pretext``: the same
    seeded pretext augmentations every epoch)."""
    model.eval()
    loss_sum = correct = count = 0.0
    for i, (x, labels, _) in enumerate(tqdm(loader, desc="validation", disable=not show, leave=False)):
        x, labels = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if pretext:
            x, labels = pretext_batch(x, torch.Generator().manual_seed(cfg.seed + i))
        with autocast(device, cfg.amp):
            emb = model.embed(x)
            loss, plain = model.head.loss(emb, labels), model.head(emb)
        loss_sum += loss.item() * len(labels)
        correct += (plain.argmax(1) == labels).sum().item()
        count += len(labels)
    return loss_sum, correct, count


# ----------------------------------------------------------------------------- checkpoints

_RESUME_MUST_MATCH = (
    "eat_checkpoint",
    "model_size",
    "pooling",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
    "unfreeze_last_norms",
    "projection_dim",
    "head",
    "sub_clusters",
    "train_centres",
    "seed",
    "val_fraction",
    "machine_types",
    "data_dir",
)  # --resume true: may change the rest
_RESUME_MAY_DIFFER = (
    "device",
    "num_workers",
    "resume",
    "output",
    "last_checkpoint",
    "feature_cache",
)  # --resume auto


def read_last_checkpoint(cfg, label_index: LabelIndex) -> tuple[dict | None, str]:
    """(LAST_CHECKPOINT's state, "") when this run may continue it, else (None, why not).

    RESUME auto continues only an unfinished run whose settings all match except _RESUME_MAY_DIFFER
    (so a changed learning rate or a finished run trains afresh); RESUME true only needs
    _RESUME_MUST_MATCH to match and also "continues" a finished run."""
    path = Path(cfg.last_checkpoint)
    if not path.is_file():
        return None, f"there is no last checkpoint {path}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved, saved_classes = state["settings"], LabelIndex.from_dict(state["label_index"])
    except Exception as error:  # truncated, not a checkpoint, or from another program
        return None, f"{path} cannot be read ({type(error).__name__}: {error})"
    current = config_to_dict(cfg)
    keys = _RESUME_MUST_MATCH if cfg.resume == "true" else [k for k in current if k not in _RESUME_MAY_DIFFER]
    changed = [k for k in keys if saved.get(k) != current[k]]
    if changed:
        return None, f"{path} was trained with other settings: " + ", ".join(
            f"{k.upper()} {saved.get(k)!r} then, {current[k]!r} now" for k in changed
        )
    if saved_classes != label_index:
        return None, f"{path} was trained on other classes than {cfg.data_dir} has now"
    if cfg.resume == "auto" and state["epoch"] >= cfg.epochs:
        return None, f"{path} has finished its {state['epoch']} epochs"
    if state["best"] and not Path(cfg.output).is_file():
        return None, f"the best model {cfg.output} of {path} is missing"
    return state, ""


def resume_state(
    cfg, model: ASDModel, optimizer, scheduler, label_index: LabelIndex, show: bool
) -> dict | None:
    """Load the LAST_CHECKPOINT this run continues into model/optimizer/scheduler and return it
    (history, best record, epoch), or None to start fresh, as RESUME says; says why it does not resume."""
    if cfg.resume == "false":
        return None
    state, why_not = read_last_checkpoint(cfg, label_index)
    if state is None:
        if cfg.resume == "true":
            if not Path(cfg.last_checkpoint).exists():
                raise FileNotFoundError(
                    f"--resume true, but {why_not}; pass --resume auto or false to start fresh"
                )
            raise ValueError(f"--resume true, but {why_not}; delete it or pass --resume false to start fresh")
        if show and Path(cfg.last_checkpoint).exists():
            print(f"not resuming, starting fresh: {why_not}")
        return None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable_state"].items():
            params[name].copy_(tensor)
        buffers = dict(model.head.named_buffers())
        for name, tensor in state.get("head_buffers", {}).items():
            buffers[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if show:
        print(
            f"resumed from {cfg.last_checkpoint} after epoch {state['epoch']} (--resume false starts fresh)"
        )
    return state


def save_last(
    cfg, model: ASDModel, optimizer, scheduler, label_index: LabelIndex, epoch: int, history: dict, best: dict
) -> None:
    atomic_torch_save(
        {
            "epoch": epoch,
            "trainable_state": trainable_state(model),
            "head_buffers": dict(model.head.named_buffers()),  # e.g. SCAdaCos's adaptive scale
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history,
            "best": best,
            "label_index": label_index.to_dict(),
            "settings": config_to_dict(cfg),
        },
        cfg.last_checkpoint,
    )


def is_better(val_acc: float, val_loss: float, best: dict) -> bool:
    """Higher validation accuracy wins; a tie goes to the lower validation loss."""
    if best.get("val_acc") is None:
        return True
    return val_acc > best["val_acc"] or (val_acc == best["val_acc"] and val_loss < best["val_loss"])


# ----------------------------------------------------------------------------- main


def check_settings(cfg) -> None:
    """What _LIMITS cannot say: a fixed clip length must fill at least one 16-frame patch."""
    if 0 < cfg.target_frames < 16:
        raise ValueError(f"TARGET_FRAMES {cfg.target_frames}: must be 0 (whole clips) or at least 16 frames")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(globals(), argv, description=__doc__)
    check_settings(cfg)
    rank, world, device = setup_processes(cfg.device)
    show = rank == 0
    if device.type == "cpu":
        tune_cpu_allocator()
    try:
        return run(cfg, rank, world, device, show)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def save_frozen(cfg, label_index: LabelIndex, show: bool) -> dict:
    """SINGLE_CLASS "frozen": no training. The encoder as loaded (LoRA at zero, no projection, a
    linear head) is written to OUTPUT, so the embeddings are the pretrained encoder's."""
    frozen = SimpleNamespace(**{**vars(cfg), "projection_dim": 0, "head": "linear"})
    model = build_model(frozen, len(label_index), show)
    if show:
        save_tuned(
            cfg.output,
            model,
            label_index,
            {**config_to_dict(frozen), "best_epoch": 0, "task": "frozen"},
            cfg.eat_checkpoint,
        )
        print(f"no training (SINGLE_CLASS frozen): the encoder as loaded -> {cfg.output}")
    return {"epochs": [], "num_classes": len(label_index), "task": "frozen", "best": {}}


def run(cfg, rank: int, world: int, device: torch.device, show: bool) -> dict:
    if show:
        print_config(cfg, "train.py settings")
    seed_everything(cfg.seed)
    records = training_records(cfg)
    label_index = LabelIndex.from_records(records)
    pretext = len(label_index) == 1
    if pretext and show:
        print(
            f"WARNING: all {len(records)} training clips form one class ({label_index.names[0]}): classifying "
            "them teaches the encoder nothing (loss 0 from the first step). "
            + (
                "Training on a pretext task instead: which of "
                + ", ".join(_PRETEXT_TASKS)
                + " each clip got."
                if cfg.single_class == "pretext"
                else "SINGLE_CLASS frozen: no training."
            )
        )
    if pretext and cfg.single_class == "frozen":
        return save_frozen(cfg, label_index, show)
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
    cache = (
        FeatureCache(cfg.feature_cache)
        if cfg.feature_cache
        else MemoryFeatures([r.path for r in records], show)
    )
    train_loader = make_loader(ClipDataset(train_records, label_index, cache), cfg, True, world)
    val_loader = (
        make_loader(ClipDataset(val_records, label_index, cache), cfg, False, world) if val_records else None
    )
    if pretext:
        label_index = pretext_label_index()

    model = build_model(cfg, len(label_index), show).to(device)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
    optimizer, scheduler = make_optimizer(model, cfg, steps_per_epoch)
    warmup = warmup_length(cfg, steps_per_epoch)
    if show and warmup > cfg.epochs * steps_per_epoch:
        print(
            f"note: the warm-up ({warmup} steps) outlasts training ({cfg.epochs * steps_per_epoch} steps): "
            "the learning rate never reaches LEARNING_RATE"
        )
    history = {
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
    best, start_epoch = {}, 1
    state = resume_state(cfg, model, optimizer, scheduler, label_index, show)
    if state is not None:
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
    step_module: nn.Module = TrainStep(model)
    if dist.is_initialized():
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None
        )

    for epoch in range(start_epoch, cfg.epochs + 1):
        # every epoch's shuffling and augmentation depend only on (seed, epoch, rank): resuming repeats them
        seed_everything(cfg.seed + 1000 * epoch + rank)
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        else:
            train_loader.generator.manual_seed(cfg.seed + epoch)
        lr = optimizer.param_groups[0]["lr"]
        loss_sum, correct, count = all_sum(
            list(
                train_epoch(
                    step_module, train_loader, optimizer, scheduler, cfg, device, epoch, show, pretext
                )
            ),
            device,
            world,
        )
        train_loss, train_acc = loss_sum / count, correct / count
        if val_loader is not None:
            loss_sum, correct, count = all_sum(
                list(evaluate(model, val_loader, cfg, device, show, pretext)), device, world
            )
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
        improved = is_better(val_acc, val_loss, best)
        if improved:
            best = {
                "epoch": epoch,
                "val_acc": val_acc,
                "val_loss": val_loss,
                "trainable_sha256": tensors_checksum(trainable_state(model)),
            }
        if show:
            print(
                f"epoch {epoch}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.3f}  "
                f"val loss {val_loss:.4f} acc {val_acc:.3f}  lr {lr:.2e}"
                + ("  * best, saved" if improved else "")
            )
            if improved:
                settings = {
                    **config_to_dict(cfg),
                    "best_epoch": epoch,
                    "val_acc": val_acc,
                    "val_loss": val_loss,
                }
                save_tuned(cfg.output, model, label_index, settings, cfg.eat_checkpoint)
            save_last(cfg, model, optimizer, scheduler, label_index, epoch, history, best)
        if dist.is_initialized():
            dist.barrier()
    if show and best:
        print(
            f"best epoch {best['epoch']}: val acc {best['val_acc']:.3f}, val loss {best['val_loss']:.4f} -> {cfg.output}"
        )
    history["best"] = best
    history["feature_cache"] = {
        "hits": getattr(cache, "hits", None),
        "misses": getattr(cache, "misses", None),
    }
    return history


if __name__ == "__main__":
    main()
