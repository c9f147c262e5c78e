"""The epochs of a train.py run: each epoch's random streams, its training and validation pass, its
record in the history, and what it saves (OUTPUT, LAST_CHECKPOINT, the history CSV); resuming first.

Why a resumed run is the uninterrupted one, bit for bit on CPU: no random stream outlives its epoch.
Each epoch starts by seeding every stream from (SEED, epoch, rank) alone (seed_streams), and the
training loader starts fresh workers every epoch, seeded from the epoch's generator. What does carry
over (trainable weights, head buffers, AdamW's moments, the schedule's step, history, best record)
is in LAST_CHECKPOINT. A run killed mid-epoch resumes after its last finished epoch and repeats the
killed epoch from its start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from asd.base.cli import config_to_dict
from asd.base.runtime import all_sum, seed_everything
from asd.data.clips import ClipPolicy
from asd.data.dataset import LabelIndex
from asd.model.checkpoints import save_tuned
from asd.model.model import ASDModel, trainable_state
from asd.model.pretrained import tensors_checksum
from asd.train import training
from asd.train.history import history_path, record_epoch, write_history
from asd.train.resume import resume_state, save_last


@dataclass
class Loop:
    """What every epoch of a run needs."""

    cfg: Any
    model: ASDModel
    step_module: nn.Module  # the model's TrainStep, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    val_loader: DataLoader | None
    label_index: LabelIndex  # the task's classes (the pretext tasks' for a single-class folder)
    device: torch.device
    rank: int
    world: int
    pretext: bool
    policy: ClipPolicy  # how a clip becomes the encoder's input (recorded in the tuned model)

    @property
    def show(self) -> bool:
        return self.rank == 0

    @property
    def where(self) -> dict:
        """What a bit-identical resume needs unchanged besides the settings."""
        return {"device": self.device.type, "world_size": self.world}


def train_epochs(loop: Loop, history: dict) -> dict:
    """Continue LAST_CHECKPOINT as RESUME says, train the remaining epochs; the history with its best record."""
    cfg, best, start = loop.cfg, {}, 1
    state = resume_state(
        cfg, loop.model, loop.optimizer, loop.scheduler, loop.label_index, loop.show, loop.where
    )
    if state is not None:
        history, best, start = state["history"], state["best"], state["epoch"] + 1
    for epoch in range(start, cfg.epochs + 1):
        best = fit_epoch(loop, epoch, history, best)
    if loop.show and best and cfg.keep_epoch == "best":
        split = _split(best)
        print(
            f"best epoch {best['epoch']}: {split} acc {best[f'{split}_acc']:.3f}, "
            f"{split} loss {best[f'{split}_loss']:.4f} -> {cfg.output}"
        )
    elif loop.show and history["epochs"]:
        print(f"last epoch {history['epochs'][-1]} -> {cfg.output}")
    history["best"] = best
    return history


def seed_streams(loop: Loop, epoch: int) -> np.random.Generator:
    """Seed every random stream of ``epoch`` from (SEED, epoch, rank): python's, numpy's and torch's
    global generators (drop path, LoRA dropout, SpecAugment, mixup), the loader's shuffling generator
    (the order and its workers' seeds: random crops of TARGET_FRAMES); the fixed-length clips' crop
    generator."""
    seed = loop.cfg.seed
    seed_everything(seed + 1000 * epoch + loop.rank)
    training.seed_epoch(loop.train_loader, seed, epoch)
    return np.random.default_rng([seed, epoch, loop.rank])


def fit_epoch(loop: Loop, epoch: int, history: dict, best: dict) -> dict:
    """Train one epoch, validate, record it in ``history``, save the models and the history; the best record."""
    cfg, show, started = loop.cfg, loop.show, time.monotonic()
    crops = seed_streams(loop, epoch)
    lr = loop.optimizer.param_groups[0]["lr"]
    clip = None if loop.policy.seconds is None else (loop.policy, crops)
    sums = training.train_epoch(
        loop.step_module, loop.train_loader, loop.optimizer, loop.scheduler, cfg, loop.device, epoch, show,
        loop.pretext, clip,
    )  # fmt: skip
    loss_sum, correct, count = all_sum(list(sums), loop.device)
    figures = {
        "train_loss": loss_sum / count,
        "train_acc": correct / count,
        "val_loss": None,
        "val_acc": None,
    }
    if loop.val_loader is not None:
        sums = training.evaluate(
            loop.model,
            loop.val_loader,
            cfg,
            loop.device,
            show,
            loop.pretext,
            loop.policy,
        )
        loss_sum, correct, count = all_sum(list(sums), loop.device)
        figures.update(val_loss=loss_sum / count, val_acc=correct / count)
    scale = getattr(loop.model.head, "scale", None)
    record_epoch(
        history, **figures, lr=lr, scale=None if scale is None else float(scale),
        seconds=time.monotonic() - started, epochs=epoch,
    )  # fmt: skip
    split = "train" if loop.val_loader is None else "val"  # no validation clips: chosen by training figures
    improved = is_better(figures[f"{split}_acc"], figures[f"{split}_loss"], best, split)
    if improved:
        best = {
            "epoch": epoch,
            f"{split}_acc": figures[f"{split}_acc"],
            f"{split}_loss": figures[f"{split}_loss"],
            "trainable_sha256": tensors_checksum(trainable_state(loop.model)),
        }
    if show:
        saved = improved if cfg.keep_epoch == "best" else True
        print(epoch_line(epoch, cfg.epochs, figures, lr, improved and cfg.keep_epoch == "best", saved))
        if saved:
            save_model(loop, epoch, figures)
        save_last(
            cfg,
            loop.model,
            loop.optimizer,
            loop.scheduler,
            loop.label_index,
            epoch,
            history,
            best,
            loop.where,
        )
        write_history(history_path(cfg.output), history)
    if dist.is_initialized():
        dist.barrier()
    return best


def epoch_line(epoch: int, epochs: int, figures: dict, lr: float, best: bool, saved: bool) -> str:
    """The epoch's printed line: training figures, validation figures only when there were validation clips."""
    line = f"epoch {epoch}/{epochs}  train loss {figures['train_loss']:.4f} acc {figures['train_acc']:.3f}  "
    if figures["val_loss"] is not None:
        line += f"val loss {figures['val_loss']:.4f} acc {figures['val_acc']:.3f}  "
    return line + f"lr {lr:.2e}" + ("  * best" if best else "") + (", saved" if saved else "")


def _split(best: dict) -> str:
    """Which figures chose ``best``: "val" (validation clips) or "train" (no validation clips)."""
    return "val" if "val_acc" in best else "train"


def is_better(acc: float, loss: float, best: dict, split: str) -> bool:
    """Higher accuracy wins; a tie goes to the lower loss (``split``'s figures: "val" or "train")."""
    if best.get(f"{split}_acc") is None:
        return True
    return acc > best[f"{split}_acc"] or (acc == best[f"{split}_acc"] and loss < best[f"{split}_loss"])


def save_model(loop: Loop, epoch: int, figures: dict) -> None:
    """OUTPUT: the model after ``epoch``, with its figures (validation ones None without validation clips)
    and the settings extraction needs (the fixed clip length)."""
    cfg = loop.cfg
    settings = {
        **config_to_dict(cfg),
        "best_epoch" if cfg.keep_epoch == "best" else "epoch": epoch,
        **figures,
        "clip_policy": loop.policy.record(),
    }
    save_tuned(cfg.output, loop.model, loop.label_index, settings, cfg.eat_checkpoint)
