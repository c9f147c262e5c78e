"""Resuming training: the last-epoch checkpoint (LAST_CHECKPOINT), written after every epoch, whether a
run may continue it (asd.base.freshness.changes over the settings), and whether the continued run will be
bit-identical to an uninterrupted one.

LAST_CHECKPOINT holds everything one epoch hands the next: trainable weights, head buffers, AdamW's
state, the schedule's step, the history and best record, plus where it ran (device kind, world
size). It holds no random generator state because no random stream outlives its epoch: asd/train/epochs.py
seeds every stream from (SEED, epoch, rank) at each epoch's start. Tensors, numbers and strings
only: it loads with torch.load(weights_only=True)."""

from __future__ import annotations

from pathlib import Path

import torch

from asd.base.cli import config_to_dict
from asd.base.files import atomic_torch_save, load_plain
from asd.base.freshness import changes
from asd.data.dataset import LabelIndex
from asd.model.model import ASDModel, trainable_state

# --resume true: these must match, the rest may change
RESUME_MUST_MATCH = (
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
)
# --resume auto: everything but these must match
RESUME_MAY_DIFFER = ("device", "num_workers", "resume", "output", "last_checkpoint", "feature_cache")
# settings that change no number of training (where files go); any other change, the device kind or the
# world size make a resumed run differ from an uninterrupted one (NUM_WORKERS: the workers' random crops)
_BOOKKEEPING = ("device", "resume", "output", "last_checkpoint", "feature_cache")


def _comparable(key: str, value):
    """Settings as compared: data folders by their resolved paths (a relative and an absolute spelling of
    the same folders match)."""
    if key == "data_dir" and isinstance(value, str):
        return [str(Path(part.strip()).resolve()) for part in value.split(",") if part.strip()]
    return value


def read_last_checkpoint(cfg, label_index: LabelIndex) -> tuple[dict | None, str]:
    """(LAST_CHECKPOINT's state, "") when this run may continue it, else (None, why not).

    RESUME auto continues only an unfinished run whose settings all match except RESUME_MAY_DIFFER
    (so a changed learning rate or a finished run trains afresh); RESUME true only needs
    RESUME_MUST_MATCH to match and also "continues" a finished run."""
    path = Path(cfg.last_checkpoint)
    if not path.is_file():
        return None, f"there is no last checkpoint {path}"
    try:
        state = load_plain(path, "last checkpoint")
        saved, saved_classes = state["settings"], LabelIndex.from_dict(state["label_index"])
    except Exception as error:  # truncated, not a checkpoint, or from another program
        return None, f"{path} cannot be read ({type(error).__name__}: {error})"
    current = config_to_dict(cfg)
    keys = RESUME_MUST_MATCH if cfg.resume == "true" else [k for k in current if k not in RESUME_MAY_DIFFER]
    changed = changes(
        {k: _comparable(k, saved.get(k)) for k in keys}, {k: _comparable(k, current[k]) for k in keys}
    )
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


def inexact_resume(state: dict, cfg, where: dict) -> list[str]:
    """Why continuing ``state`` cannot give the uninterrupted run's numbers (empty: it gives them
    bit for bit on CPU): changed settings, another device kind or world size (``where``)."""
    saved, current = state["settings"], config_to_dict(cfg)
    keys = [k for k in current if k not in _BOOKKEEPING]
    changed = changes(
        {k: _comparable(k, saved.get(k)) for k in keys}, {k: _comparable(k, current[k]) for k in keys}
    )
    reasons = [f"{k.upper()} {saved.get(k)!r} then, {current[k]!r} now" for k in changed]
    then = state.get("where", {})
    return reasons + [
        f"{k} {then.get(k, 'unrecorded')} then, {v} now" for k, v in where.items() if then.get(k) != v
    ]


def resume_state(
    cfg, model: ASDModel, optimizer, scheduler, label_index: LabelIndex, show: bool, where: dict
) -> dict | None:
    """Load the LAST_CHECKPOINT this run continues into model/optimizer/scheduler and return it
    (history, best record, epoch), or None to start fresh, as RESUME says; says why it does not resume,
    and in one line why a resumed run will not be the uninterrupted one (``where``: device kind, world size)."""
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
        inexact = inexact_resume(state, cfg, where)
        if inexact:
            print("note: the resumed run will differ from an uninterrupted one: " + "; ".join(inexact))
    return state


def save_last(
    cfg,
    model: ASDModel,
    optimizer,
    scheduler,
    label_index: LabelIndex,
    epoch: int,
    history: dict,
    best: dict,
    where: dict,
) -> None:
    """LAST_CHECKPOINT after ``epoch``: trainable weights, head buffers, optimizer and schedule, and
    ``where`` it ran (device kind, world size) (atomic)."""
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
            "where": where,
        },
        cfg.last_checkpoint,
    )
