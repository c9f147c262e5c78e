"""What train.py runs: data loaders, the model to tune, optimiser and schedule, one training epoch and
one validation pass (asd/train/epochs.py strings the epochs together)."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from asd.base.runtime import autocast
from asd.data.clips import ClipPolicy
from asd.data.dataset import ClipDataset, LabelIndex, discover_clips, fbank_collate, stratified_split
from asd.data.ground_truth import apply_evaluation_list
from asd.data.labels import ClassIndex, counted_note, counted_records
from asd.data.preprocessing import FeatureCache, channel_views, load_audio
from asd.model.heads import make_head
from asd.model.model import ASDModel, add_lora, count_parameters, set_drop_path
from asd.model.pretrained import build_encoder
from asd.train.augment import mixup_batch, mixup_samples, pretext_batch, spec_augment

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


def data_dirs(cfg) -> list[str]:
    """The folders DATA_DIR names (comma-separated)."""
    folders = [part.strip() for part in str(cfg.data_dir).split(",") if part.strip()]
    if not folders:
        raise ValueError("DATA_DIR names no folder")
    return folders


def _records(cfg, splits: tuple[str, ...]) -> list:
    machine_types = cfg.machine_types or None
    return [
        r for folder in data_dirs(cfg) for r in discover_clips(folder, splits, machine_types, cfg.channels)
    ]


def training_records(cfg) -> list:
    """The normal training clips of every DATA_DIR folder (MACHINE_TYPES only, when given); a clip with
    too few channels for CHANNELS is refused naming it before anything is computed."""
    normal = [r for r in _records(cfg, ("train",)) if r.split == "train" and r.label == "normal"]
    if not normal:
        raise ValueError(f"{cfg.data_dir}: no normal training clips found")
    return normal


def test_records(cfg) -> list:
    """The test clips of every DATA_DIR folder (read for their class names only, never their audio),
    anonymised evaluation names under their original names when EVAL_LIST gives the evaluation list."""
    tests = [r for r in _records(cfg, ("train", "test")) if r.split == "test"]
    for path in (p.strip() for p in str(cfg.eval_list or "").split(",")):
        tests = apply_evaluation_list(tests, path) if path else tests
    return tests


def class_index(cfg, records: list, show: bool = False) -> ClassIndex:
    """The classes of the task (LABEL), counted over the training ``records`` or also the labelled
    test names (CLASSES_FROM); ``show`` prints how many test clips counted."""
    tests = test_records(cfg) if cfg.classes_from == "train_test" else []
    counted = counted_records(records, tests, cfg.classes_from)
    index = ClassIndex.from_records(counted, cfg.label)
    if show and tests:
        print(counted_note(tests, len(counted), len(index)))
    return index


class WaveDataset(torch.utils.data.Dataset):
    """(whole waveform, class index, record) per clip, heard through one channel view of CHANNELS;
    train_epoch crops or tiles them to one length."""

    def __init__(self, records: list, label_index, channels: str = "near", residual_weight: float = 0.5):
        self.records, self.label_index = list(records), label_index
        self.channels, self.residual_weight = channels, residual_weight

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        record = self.records[i]
        wave = load_audio(record.path, channels=self.channels, residual_weight=self.residual_weight)
        return wave, self.label_index.get(record), record


def wave_dataset(records: list, label_index, cfg) -> Dataset:
    """The clips' waveforms through every channel view of CHANNELS (both: near and far, two examples
    of the clip's class, as clip_dataset does for fbanks)."""
    parts = [
        WaveDataset(records, label_index, view, cfg.residual_weight) for view in channel_views(cfg.channels)
    ]
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def _holds_waves(dataset: Dataset) -> bool:
    first = dataset.datasets[0] if isinstance(dataset, ConcatDataset) else dataset
    return isinstance(first, WaveDataset)


def wave_batch(batch: list) -> tuple[list, torch.Tensor, list]:
    """Collate of WaveDataset items: (waveforms of their own lengths, labels, records)."""
    return [w for w, _, _ in batch], torch.tensor([label for _, label, _ in batch]), [r for _, _, r in batch]


def make_loader(dataset: Dataset, cfg, train: bool, policy: ClipPolicy) -> DataLoader:
    """Batches of fbanks cut as the clip ``policy`` says (dataset.fbank_collate), or of whole waveforms
    (a WaveDataset: fixed-length clips)."""
    collate = wave_batch if _holds_waves(dataset) else fbank_collate(policy, train)
    sampler = DistributedSampler(dataset, shuffle=train, seed=cfg.seed) if dist.is_initialized() else None
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        # training: fresh workers every epoch, seeded from the epoch's generator (persistent ones would carry
        # their random crops' state over from the epochs before, which a resumed run never saw)
        persistent_workers=not train and cfg.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate,
        generator=torch.Generator() if train and sampler is None else None,  # reseeded every epoch
    )


def seed_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Shuffle the epoch's clips, and seed its workers, as (seed, epoch) say, so a resumed run repeats them."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    else:
        loader.generator.manual_seed(seed + epoch)


def split_clips(cfg, records: list, label_index: LabelIndex, show: bool) -> tuple[list, list]:
    """(training clips, validation clips): VAL_FRACTION of each class held out."""
    train_records, val_records = stratified_split(records, cfg.val_fraction, cfg.seed)
    if show:
        print(
            f"{len(records)} normal training clips, {len(label_index)} classes: "
            f"{len(train_records)} to train, {len(val_records)} to validate on"
        )
        if not val_records and cfg.keep_epoch == "best":
            print(
                "WARNING: no validation clips (VAL_FRACTION 0 or single-clip classes): "
                "the best model is chosen by training accuracy"
            )
    return train_records, val_records


def make_loaders(
    cfg, label_index: LabelIndex, train_records: list, val_records: list, policy: ClipPolicy, show: bool
):
    """(training loader, validation loader or None, fbank caches (none for waveforms)): fbanks of whole
    clips (through FEATURE_CACHE), or whole waveforms that training tiles or crops to policy.seconds."""
    caches = []
    if policy.seconds is None:
        caches = feature_sources(cfg, [r.path for r in train_records + val_records], show)
        train_set, val_set = (
            clip_dataset(part, label_index, caches) for part in (train_records, val_records)
        )
    else:
        train_set, val_set = (wave_dataset(part, label_index, cfg) for part in (train_records, val_records))
    val_loader = make_loader(val_set, cfg, False, policy) if val_records else None
    return make_loader(train_set, cfg, True, policy), val_loader, caches


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
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits): against ``targets`` [B, N] when given (per-sample mixup), else the labels."""
        emb = self.model.embed(x)
        head = self.model.head
        loss = (
            head.loss(emb, labels, mixed_labels, lam) if targets is None else head.target_loss(emb, targets)
        )
        return loss, head(emb).detach()


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
        cfg.scale == "adaptive",
        cfg.centre_init,
    )
    if cfg.drop_path > 0:
        set_drop_path(wrapped, cfg.drop_path)
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
    """AdamW (decay on matrices only, DECAY "matrices", or on every trainable parameter, "all") and its
    LambdaLR: linear warm-up, (step + 1) / warm-up (WARMUP_RULE "project") or step / warm-up ("timm",
    as timm's scheduler stepped with the optimizer step: the first step runs at 0), then constant or cosine."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay == "all":
        groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    first = 0 if cfg.warmup_rule == "timm" else 1
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = warmup_length(cfg, steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + first) / warmup
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- one epoch


def fixed_length_input(
    waves: list, policy: ClipPolicy, device, rng=None, mixup_prob: float = 0.0, labels=None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fixed-length clips to EAT's input: each waveform cropped or tiled as ``policy`` says (offset from
    ``rng``, else from the start), ASDKit's per-sample waveform mixup with ``mixup_prob`` (one-hot
    ``labels`` [B, N] mixed alike), then the padded fbank -> (x [B, 1, T, 128], mixed targets or None)."""
    batch = policy.crop_waves(waves, device, rng)
    targets = None
    if mixup_prob > 0:
        batch, targets = mixup_samples(batch, labels.float(), mixup_prob)
    return policy.wave_input(batch), targets


def _augment(x: torch.Tensor, labels: torch.Tensor, cfg, pretext: bool):
    """(clips, labels, mixup partner labels or None, lambda) of one training batch."""
    if pretext:
        x, labels = pretext_batch(x)
    if cfg.spec_augment:
        x = spec_augment(x, cfg.time_mask, cfg.freq_mask, cfg.num_masks)
    prob = 0.0 if pretext or cfg.mixup != "batch_fbank" else cfg.mixup_prob
    x, mixed_labels, lam = mixup_batch(x, labels, prob, cfg.mixup_alpha)
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
    clip: tuple[ClipPolicy, object] | None = None,
) -> tuple[float, float, float]:
    """(summed loss, correct, clips) of one pass; the optimizer steps every GRAD_ACCUM batches.

    ``pretext``: the labels are which PRETEXT_TASKS augmentation each clip got (no mixup then).
    ``clip``: (ClipPolicy, numpy Generator) when the loader gives whole waveforms (fixed-length clips).
    """
    classes = _module(step_module).model.head.settings()["num_classes"]
    step_module.train()
    loss_sum = correct = count = 0.0
    batches = tqdm(loader, desc=f"epoch {epoch} train", disable=not show, leave=False)
    for i, (x, labels, _) in enumerate(batches):
        labels, targets = labels.to(device, non_blocking=True), None
        if clip is not None:
            wave_mixup = cfg.mixup_prob if cfg.mixup == "sample_wave" and not pretext else 0.0
            onehot = nn.functional.one_hot(labels, classes)
            x, targets = fixed_length_input(x, clip[0], device, clip[1], wave_mixup, onehot)
        x, labels, mixed_labels, lam = _augment(x.to(device, non_blocking=True), labels, cfg, pretext)
        update = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(loader)
        no_sync = (
            step_module.no_sync
            if isinstance(step_module, nn.parallel.DistributedDataParallel) and not update
            else contextlib.nullcontext
        )
        with no_sync():
            with autocast(device, cfg.amp):
                loss, plain = step_module(x, labels, mixed_labels, lam, targets)
            (loss / cfg.grad_accum).backward()
        if update:
            _optimizer_step(step_module, optimizer, scheduler, cfg.grad_clip)
        loss_sum += loss.item() * len(labels)
        correct += (plain.argmax(1) == labels).sum().item()
        count += len(labels)
        batches.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}")
    return loss_sum, correct, count


def _module(step_module: nn.Module) -> nn.Module:
    return step_module.module if isinstance(step_module, nn.parallel.DistributedDataParallel) else step_module


@torch.no_grad()
def evaluate(
    model: ASDModel,
    loader: DataLoader,
    cfg,
    device,
    show: bool,
    pretext: bool = False,
    policy: ClipPolicy | None = None,
) -> tuple[float, float, float]:
    """(summed loss, correct, clips) on held-out clips, without augmentation (``pretext``: the same
    seeded pretext augmentations every epoch; ``policy`` of fixed-length clips: whole waveforms cut
    from the start)."""
    model.eval()
    loss_sum = correct = count = 0.0
    for i, (x, labels, _) in enumerate(tqdm(loader, desc="validation", disable=not show, leave=False)):
        if policy is not None and policy.seconds is not None:
            x, _ = fixed_length_input(x, policy, device)
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
