"""Tune an EAT encoder with LoRA on an auxiliary task: classify each normal training clip's machine
type, section and attribute values. Writes the best model by validation accuracy (held-out training
normals, never test clips) to best_encoder_model.pth, and a resumable last_encoder_model.pth.

    python train.py --data_dir dev_data --eat_checkpoint /models/EAT-base_epoch30_pretrain
    torchrun --nproc_per_node 4 train.py ...        # DistributedDataParallel on several GPUs
    python train.py --resume false                  # start fresh even if an unfinished last_encoder_model.pth is there
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from utils import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from dataset import ClipDataset, FixedLengthCollate, LabelIndex, discover_clips, stratified_split
from model import (ASDModel, add_lora, build_encoder, count_parameters, make_head, save_tuned, tensors_checksum,
                   trainable_state)
from preprocessing import FeatureCache
from utils import (atomic_torch_save, autocast, config_to_dict, parse_config, print_config, resolve_device,
                   seed_everything, tune_cpu_allocator)

DATA_DIR = "dev_data"                      # DCASE folder: <machine>/train/*.wav (test clips are never read)
MACHINE_TYPES = []                         # machine types to train on, comma-separated; empty = all
EAT_CHECKPOINT = None                      # HF folder (config.json + model.safetensors) or fairseq .pt; None = random init (demo only)
MODEL_SIZE = "base"                        # random encoder size when EAT_CHECKPOINT is None: tiny | base | large
POOLING = "cls"                            # utterance embedding: "cls" token or "mean" of the patch tokens
EPOCHS = 10                                # passes over the training clips
BATCH_SIZE = 16                            # clips per step and process
GRAD_ACCUM = 1                             # steps whose gradients add up before one optimizer update
LEARNING_RATE = 3e-4                       # peak AdamW learning rate (LoRA and head)
WARMUP_EPOCHS = 1.0                        # linear warm-up length in epochs (may be fractional), then cosine decay
MIN_LR_RATIO = 0.01                        # the cosine decays to LEARNING_RATE * MIN_LR_RATIO
WEIGHT_DECAY = 0.01                        # AdamW decay on matrices (not on norms and biases)
GRAD_CLIP = 1.0                            # max gradient norm; 0 disables clipping
LORA_RANK = 8                              # LoRA rank on blocks.*.attn.qkv and blocks.*.attn.proj
LORA_ALPHA = 16.0                          # LoRA scaling numerator (scale = alpha / rank)
LORA_DROPOUT = 0.1                         # dropout on the LoRA branch
UNFREEZE_LAST_NORMS = 0                    # also train norm1/norm2 of the last K blocks
HEAD = "arcface"                           # auxiliary classifier: "arcface" (angular margin) or "linear" (softmax)
ARCFACE_SCALE = 30.0                       # ArcFace logit scale s
ARCFACE_MARGIN = 0.5                       # ArcFace additive angular margin m (radians)
VAL_FRACTION = 0.1                         # share of each class held out for validation (stratified)
SEED = 0                                   # split, initialisation and augmentation seed
NUM_WORKERS = 2                            # DataLoader worker processes per training process
DEVICE = "auto"                            # "auto" (CUDA when present), "cpu", "cuda"
AMP = True                                 # bf16 autocast on CUDA (no effect on CPU)
TARGET_FRAMES = 1024                       # frames per training clip (zero-padded / cropped)
RANDOM_CROP = True                         # crop longer training clips at a random offset
SPEC_AUGMENT = True                        # random time and frequency masks on training fbanks
TIME_MASK = 80                             # widest time mask (frames)
FREQ_MASK = 16                             # widest frequency mask (mel bins)
NUM_MASKS = 2                              # masks of each kind per clip
MIXUP = False                              # mix pairs of clips and their losses
MIXUP_ALPHA = 0.2                          # Beta(alpha, alpha) mixing weights
FEATURE_CACHE = "cache/features"           # fbank cache folder; None keeps all fbanks in memory instead
OUTPUT = "best_encoder_model.pth"          # best model (LoRA + head + label index + settings)
LAST_CHECKPOINT = "last_encoder_model.pth" # last epoch with optimizer/scheduler state, for RESUME
RESUME = "auto"                            # auto: continue an unfinished LAST_CHECKPOINT of the same settings, else start fresh saying why | true: must continue it | false: start fresh
# allowed values of the constants above, checked by utils.parse_config
_LIMITS = {"EPOCHS": (1, None), "BATCH_SIZE": (1, None), "GRAD_ACCUM": (1, None), "LEARNING_RATE": (">0", None),
           "WARMUP_EPOCHS": (0.0, None), "MIN_LR_RATIO": (0.0, 1.0), "WEIGHT_DECAY": (0.0, None), "GRAD_CLIP": (0.0, None),
           "LORA_RANK": (1, None), "LORA_ALPHA": (">0", None), "LORA_DROPOUT": (0.0, "<1"), "UNFREEZE_LAST_NORMS": (0, None),
           "ARCFACE_SCALE": (">0", None), "ARCFACE_MARGIN": (0.0, None), "VAL_FRACTION": (0.0, "<1"), "SEED": (0, None),
           "NUM_WORKERS": (0, None), "TARGET_FRAMES": (16, None), "TIME_MASK": (0, None), "FREQ_MASK": (0, None),
           "NUM_MASKS": (0, None), "MIXUP_ALPHA": (">0", None), "RESUME": ("auto", "true", "false")}


# ----------------------------------------------------------------------------- processes

def setup_processes(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device): DDP under torchrun with several processes, else a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, resolve_device(device_name)
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), world, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def all_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
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
    sampler = DistributedSampler(dataset, shuffle=train, seed=cfg.seed) if world > 1 else None
    return DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=train and sampler is None, sampler=sampler,
        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0, pin_memory=torch.cuda.is_available(),
        collate_fn=FixedLengthCollate(cfg.target_frames, random_crop=train and cfg.random_crop),
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


# ----------------------------------------------------------------------------- model and optimisation

class TrainStep(nn.Module):
    """What DDP wraps: embeddings once, then the head's logits for one or two label sets."""

    def __init__(self, model: ASDModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor, mixed_labels: torch.Tensor | None = None):
        emb = self.model.embed(x)
        logits = self.model.head(emb, labels)
        mixed = self.model.head(emb, mixed_labels) if mixed_labels is not None else None
        return logits, mixed, self.model.head(emb).detach()  # plain logits (no margin) for accuracy


def build_model(cfg, num_classes: int, show: bool) -> ASDModel:
    encoder = build_encoder(cfg.eat_checkpoint, cfg.model_size, init_seed=cfg.seed, verbose=show)
    wrapped = add_lora(encoder, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.unfreeze_last_norms)
    head = make_head(cfg.head, encoder.embed_dim, num_classes, cfg.arcface_scale, cfg.arcface_margin)
    model = ASDModel(wrapped, head, cfg.pooling)
    if show:
        trainable, total = count_parameters(model)
        print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%; LoRA + head)")
    return model


def make_optimizer(model: nn.Module, cfg, steps_per_epoch: int):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_epoch(step_module: nn.Module, loader: DataLoader, optimizer, scheduler, cfg, device, epoch: int,
                show: bool) -> tuple[float, float, float]:
    """(summed loss, correct, clips) of one pass; the optimizer steps every GRAD_ACCUM batches."""
    step_module.train()
    loss_sum = correct = count = 0.0
    batches = tqdm(loader, desc=f"epoch {epoch} train", disable=not show, leave=False)
    for i, (x, labels, _) in enumerate(batches):
        x, labels = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if cfg.spec_augment:
            x = spec_augment(x, cfg.time_mask, cfg.freq_mask, cfg.num_masks)
        mixed_labels, lam = None, 1.0
        if cfg.mixup:
            lam = float(torch.distributions.Beta(cfg.mixup_alpha, cfg.mixup_alpha).sample())
            order = torch.randperm(x.shape[0], device=device)
            x, mixed_labels = lam * x + (1 - lam) * x[order], labels[order]
        update = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(loader)
        no_sync = step_module.no_sync if isinstance(step_module, nn.parallel.DistributedDataParallel) and not update \
            else contextlib.nullcontext
        with no_sync():
            with autocast(device, cfg.amp):
                logits, mixed, plain = step_module(x, labels, mixed_labels)
            loss = F.cross_entropy(logits.float(), labels)
            if mixed is not None:
                loss = lam * loss + (1 - lam) * F.cross_entropy(mixed.float(), mixed_labels)
            (loss / cfg.grad_accum).backward()
        if update:
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_([p for p in step_module.parameters() if p.requires_grad], cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.item() * len(labels)
        correct += (plain.argmax(1) == labels).sum().item()
        count += len(labels)
        batches.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}")
    return loss_sum, correct, count


@torch.no_grad()
def evaluate(model: ASDModel, loader: DataLoader, cfg, device, show: bool) -> tuple[float, float, float]:
    """(summed loss, correct, clips) on held-out clips, without augmentation."""
    model.eval()
    loss_sum = correct = count = 0.0
    for x, labels, _ in tqdm(loader, desc="validation", disable=not show, leave=False):
        x, labels = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, cfg.amp):
            emb = model.embed(x)
            logits, plain = model.head(emb, labels), model.head(emb)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (plain.argmax(1) == labels).sum().item()
        count += len(labels)
    return loss_sum, correct, count


# ----------------------------------------------------------------------------- checkpoints

_RESUME_MUST_MATCH = ("eat_checkpoint", "model_size", "pooling", "lora_rank", "lora_alpha", "unfreeze_last_norms",
                      "head", "seed", "val_fraction", "machine_types", "data_dir")  # --resume true: may change the rest
_RESUME_MAY_DIFFER = ("device", "num_workers", "resume", "output", "last_checkpoint", "feature_cache")  # --resume auto


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
            f"{k.upper()} {saved.get(k)!r} then, {current[k]!r} now" for k in changed)
    if saved_classes != label_index:
        return None, f"{path} was trained on other classes than {cfg.data_dir} has now"
    if cfg.resume == "auto" and state["epoch"] >= cfg.epochs:
        return None, f"{path} has finished its {state['epoch']} epochs"
    if state["best"] and not Path(cfg.output).is_file():
        return None, f"the best model {cfg.output} of {path} is missing"
    return state, ""


def resume_state(cfg, model: ASDModel, optimizer, scheduler, label_index: LabelIndex, show: bool) -> dict | None:
    """Load the LAST_CHECKPOINT this run continues into model/optimizer/scheduler and return it
    (history, best record, epoch), or None to start fresh, as RESUME says; says why it does not resume."""
    if cfg.resume == "false":
        return None
    state, why_not = read_last_checkpoint(cfg, label_index)
    if state is None:
        if cfg.resume == "true":
            if not Path(cfg.last_checkpoint).exists():
                raise FileNotFoundError(f"--resume true, but {why_not}; pass --resume auto or false to start fresh")
            raise ValueError(f"--resume true, but {why_not}; delete it or pass --resume false to start fresh")
        if show and Path(cfg.last_checkpoint).exists():
            print(f"not resuming, starting fresh: {why_not}")
        return None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable_state"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if show:
        print(f"resumed from {cfg.last_checkpoint} after epoch {state['epoch']} (--resume false starts fresh)")
    return state


def save_last(cfg, model: ASDModel, optimizer, scheduler, label_index: LabelIndex, epoch: int,
              history: dict, best: dict) -> None:
    atomic_torch_save({"epoch": epoch, "trainable_state": trainable_state(model), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "history": history, "best": best,
                       "label_index": label_index.to_dict(), "settings": config_to_dict(cfg)},
                      cfg.last_checkpoint)


def is_better(val_acc: float, val_loss: float, best: dict) -> bool:
    """Higher validation accuracy wins; a tie goes to the lower validation loss."""
    if best.get("val_acc") is None:
        return True
    return val_acc > best["val_acc"] or (val_acc == best["val_acc"] and val_loss < best["val_loss"])


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(globals(), argv, description=__doc__)
    rank, world, device = setup_processes(cfg.device)
    show = rank == 0
    if device.type == "cpu":
        tune_cpu_allocator()
    try:
        return run(cfg, rank, world, device, show)
    finally:
        if world > 1:
            dist.destroy_process_group()


def run(cfg, rank: int, world: int, device: torch.device, show: bool) -> dict:
    if show:
        print_config(cfg, "train.py settings")
    seed_everything(cfg.seed)
    records = training_records(cfg)
    label_index = LabelIndex.from_records(records)
    train_records, val_records = stratified_split(records, cfg.val_fraction, cfg.seed)
    if show:
        print(f"{len(records)} normal training clips, {len(label_index)} classes: "
              f"{len(train_records)} to train, {len(val_records)} to validate on")
        if not val_records:
            print("WARNING: no validation clips (VAL_FRACTION 0 or single-clip classes): "
                  "the best model is chosen by training accuracy")
    cache = FeatureCache(cfg.feature_cache) if cfg.feature_cache else \
        MemoryFeatures([r.path for r in records], show)
    train_loader = make_loader(ClipDataset(train_records, label_index, cache), cfg, True, world)
    val_loader = make_loader(ClipDataset(val_records, label_index, cache), cfg, False, world) if val_records else None

    model = build_model(cfg, len(label_index), show).to(device)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
    optimizer, scheduler = make_optimizer(model, cfg, steps_per_epoch)
    history = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": [], "lr": [], "epochs": [],
               "num_classes": len(label_index), "num_train": len(train_records), "num_val": len(val_records)}
    best, start_epoch = {}, 1
    state = resume_state(cfg, model, optimizer, scheduler, label_index, show)
    if state is not None:
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
    step_module: nn.Module = TrainStep(model)
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)

    for epoch in range(start_epoch, cfg.epochs + 1):
        # every epoch's shuffling and augmentation depend only on (seed, epoch, rank): resuming repeats them
        seed_everything(cfg.seed + 1000 * epoch + rank)
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        else:
            train_loader.generator.manual_seed(cfg.seed + epoch)
        lr = optimizer.param_groups[0]["lr"]
        loss_sum, correct, count = all_sum(list(train_epoch(step_module, train_loader, optimizer, scheduler,
                                                            cfg, device, epoch, show)), device, world)
        train_loss, train_acc = loss_sum / count, correct / count
        if val_loader is not None:
            loss_sum, correct, count = all_sum(list(evaluate(model, val_loader, cfg, device, show)), device, world)
            val_loss, val_acc = loss_sum / count, correct / count
        else:
            val_loss, val_acc = train_loss, train_acc
        for key, value in (("train_loss", train_loss), ("train_acc", train_acc), ("val_loss", val_loss),
                           ("val_acc", val_acc), ("lr", lr), ("epochs", epoch)):
            history[key].append(value)
        improved = is_better(val_acc, val_loss, best)
        if improved:
            best = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss,
                    "trainable_sha256": tensors_checksum(trainable_state(model))}
        if show:
            print(f"epoch {epoch}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.3f}  "
                  f"val loss {val_loss:.4f} acc {val_acc:.3f}  lr {lr:.2e}" + ("  * best, saved" if improved else ""))
            if improved:
                settings = {**config_to_dict(cfg), "best_epoch": epoch, "val_acc": val_acc, "val_loss": val_loss}
                save_tuned(cfg.output, model, label_index, settings, cfg.eat_checkpoint)
            save_last(cfg, model, optimizer, scheduler, label_index, epoch, history, best)
        if world > 1:
            dist.barrier()
    if show and best:
        print(f"best epoch {best['epoch']}: val acc {best['val_acc']:.3f}, val loss {best['val_loss']:.4f} -> {cfg.output}")
    history["best"] = best
    history["feature_cache"] = {"hits": getattr(cache, "hits", None), "misses": getattr(cache, "misses", None)}
    return history


if __name__ == "__main__":
    main()
