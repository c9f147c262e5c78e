"""What train.py runs: processes (DDP), data loaders, the model to tune, optimiser and schedule, one
training epoch and one validation pass."""

from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from asd.augment import mixup_batch, pretext_batch, spec_augment
from asd.checkpoints import build_encoder
from asd.runtime import autocast, resolve_device
from dataset import ClipDataset, FixedLengthCollate, VariableLengthCollate, discover_clips
from model import ASDModel, add_lora, count_parameters, make_head
from preprocessing import FeatureCache, channel_views

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


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over every process (unchanged without DDP)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# ----------------------------------------------------------------------------- data


class MemoryFeatures:
    """fbanks held in memory (FEATURE_CACHE None): computed once, before the loaders fork."""

    def __init__(self, paths: list[str], show: bool, channels: str = "near", residual_weight: float = 0.5):
        compute = FeatureCache(None, channels=channels, residual_weight=residual_weight)
        self.fbanks = {p: compute.fbank(p) for p in tqdm(paths, desc="fbanks", disable=not show)}

    def fbank(self, path: str) -> torch.Tensor:
        return self.fbanks[path]


def feature_sources(cfg, paths: list[str], show: bool) -> list[FeatureCache | MemoryFeatures]:
    """One feature source per channel view of CHANNELS (two for 'both'): FEATURE_CACHE's on-disk
    cache, or every fbank in memory when it is None."""
    weight = cfg.residual_weight
    return [
        FeatureCache(cfg.feature_cache, channels=view, residual_weight=weight)
        if cfg.feature_cache
        else MemoryFeatures(paths, show, view, weight)
        for view in channel_views(cfg.channels)
    ]


def clip_dataset(records: list, label_index, sources: list) -> Dataset:
    """The clips heard through every source: with CHANNELS 'both' each clip's near and its far channel
    are two training examples of the clip's class (see train.py), one per view."""
    parts = [ClipDataset(records, label_index, source) for source in sources]
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def training_records(cfg) -> list:
    """The normal training clips of DATA_DIR (MACHINE_TYPES only, when given); a clip with too few
    channels for CHANNELS is refused naming it before anything is computed."""
    records = discover_clips(
        cfg.data_dir,
        splits=("train",),
        machine_types=cfg.machine_types or None,
        channels=cfg.channels,
    )
    normal = [r for r in records if r.split == "train" and r.label == "normal"]
    if not normal:
        raise ValueError(f"{cfg.data_dir}: no normal training clips found")
    return normal


def make_loader(dataset: Dataset, cfg, train: bool) -> DataLoader:
    """Batches of fbanks: whole clips padded to PAD_MULTIPLE (TARGET_FRAMES 0) or TARGET_FRAMES each."""
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


def seed_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Shuffle the epoch's clips as (seed, epoch) say, so a resumed run repeats the order."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    else:
        loader.generator.manual_seed(seed + epoch)


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
    """The encoder (EAT_CHECKPOINT or a random MODEL_SIZE one) with LoRA, and the HEAD to train."""
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
    """AdamW (decay on matrices only) and its LambdaLR: linear warm-up, then constant or cosine."""
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


# ----------------------------------------------------------------------------- one epoch


def _augment(x: torch.Tensor, labels: torch.Tensor, cfg, pretext: bool):
    """(clips, labels, mixup partner labels or None, lambda) of one training batch."""
    if pretext:
        x, labels = pretext_batch(x)
    if cfg.spec_augment:
        x = spec_augment(x, cfg.time_mask, cfg.freq_mask, cfg.num_masks)
    x, mixed_labels, lam = mixup_batch(x, labels, 0.0 if pretext else cfg.mixup_prob, cfg.mixup_alpha)
    return x, labels, mixed_labels, lam


def _optimizer_step(step_module: nn.Module, optimizer, scheduler, grad_clip: float) -> None:
    if grad_clip > 0:
        nn.utils.clip_grad_norm_([p for p in step_module.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


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

    ``pretext``: the labels are which PRETEXT_TASKS augmentation each clip got (no mixup then).
    """
    step_module.train()
    loss_sum = correct = count = 0.0
    batches = tqdm(loader, desc=f"epoch {epoch} train", disable=not show, leave=False)
    for i, (x, labels, _) in enumerate(batches):
        x, labels = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        x, labels, mixed_labels, lam = _augment(x, labels, cfg, pretext)
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
            _optimizer_step(step_module, optimizer, scheduler, cfg.grad_clip)
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


def is_better(val_acc: float, val_loss: float, best: dict) -> bool:
    """Higher validation accuracy wins; a tie goes to the lower validation loss."""
    if best.get("val_acc") is None:
        return True
    return val_acc > best["val_acc"] or (val_acc == best["val_acc"] and val_loss < best["val_loss"])
