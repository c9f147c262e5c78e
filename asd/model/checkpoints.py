"""Tuned-model files: the LoRA and head weights, label index, settings and the identity of the backbone
they were tuned on (asd/model/pretrained.py reads the backbone itself).

    save_tuned("best_encoder_model.pth", model, label_index, settings, backbone_checkpoint)
    model, label_index, settings = load_tuned("best_encoder_model.pth")
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from asd.base.files import atomic_torch_save, load_plain
from asd.base.freshness import changes
from asd.model.heads import head_from_settings, head_settings
from asd.model.model import ASDModel, EATEncoder, add_lora, base_encoder, trainable_state
from asd.model.pretrained import backbone_fingerprint, build_encoder, resolve_checkpoint

TUNED_FORMAT = "eat-lora-asd/tuned-v1"


def save_tuned(
    path: str | os.PathLike,
    model: ASDModel,
    label_index: Any,
    settings: dict[str, Any],
    backbone_checkpoint: str | os.PathLike | None,
) -> None:
    """Write LoRA + head weights, the label index, settings and the backbone's identity (atomic).

    Frozen pretrained weights are not copied: the file points at the backbone checkpoint (path, and
    hub id + commit when it came from the hub) and its fingerprint; a random backbone is recorded by
    its init seed and a checksum of its weights.
    """
    encoder = base_encoder(model.encoder)
    source = dict(encoder.source)
    recorded = source.get("checkpoint")
    if (backbone_checkpoint is None) != (recorded is None) or (
        recorded is not None and resolve_checkpoint(backbone_checkpoint).path != Path(recorded)
    ):
        raise ValueError(
            f"save_tuned: backbone_checkpoint {backbone_checkpoint!r} is not the checkpoint "
            f"the encoder was built from ({recorded!r})"
        )
    lora = getattr(model.encoder, "asd_lora_settings", None)
    payload = {
        "format": TUNED_FORMAT,
        "eat_config": asdict(encoder.config),
        "backbone": source,
        "lora": lora,
        "head": head_settings(model.head),
        "pooling": model.pooling,
        "trainable_state": trainable_state(model),
        "label_index": label_index.to_dict() if hasattr(label_index, "to_dict") else label_index,
        "settings": json.loads(json.dumps(settings, default=str)),
    }
    atomic_torch_save(payload, path)


def _rebuild_backbone(backbone: dict[str, Any], path: Path, override: str | os.PathLike | None) -> EATEncoder:
    checkpoint = override if override is not None else backbone.get("checkpoint")
    if checkpoint is None:
        encoder = build_encoder(None, backbone["size"], backbone["init_seed"])
        if encoder.source["checksum"] != backbone["checksum"]:
            raise ValueError(
                f"{path}: rebuilding its random '{backbone['size']}' backbone (seed {backbone['init_seed']}) gave "
                f"different weights (saved with torch {backbone.get('torch')}, this is torch {torch.__version__}); "
                "random initialisation is not reproducible across these versions"
            )
        return encoder
    if override is None and backbone.get("hub_id"):  # the same commit, found again through the hub cache
        checkpoint = f"{backbone['hub_id']}@{backbone['revision']}"
    try:
        resolved = resolve_checkpoint(checkpoint)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{path} was tuned on the EAT checkpoint {checkpoint}, which is not there any more; "
            f"pass its new location as backbone_checkpoint ({error})"
        ) from error
    now, saved = backbone_fingerprint(resolved.path), backbone.get("fingerprint") or {}
    shared = [key for key in ("config_key", "weights_key", "weights_file", "size") if key in saved]
    changed = changes({k: saved[k] for k in shared}, {k: now[k] for k in shared})
    if changed:
        raise ValueError(
            f"{path} was tuned on a different EAT checkpoint than {checkpoint} "
            f"({', '.join(f'{k}: saved {saved[k]!r}, now {now[k]!r}' for k in changed)})"
        )
    return build_encoder(checkpoint)


def read_tuned(path: str | os.PathLike) -> dict[str, Any]:
    """The tuned model file's contents (tensors and plain data only); an error naming a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tuned model {path} not found (run train.py first)")
    payload = load_plain(path, "tuned model")
    if not isinstance(payload, dict) or payload.get("format") != TUNED_FORMAT:
        raise ValueError(f"{path} is not a tuned EAT-LoRA model file (format {TUNED_FORMAT})")
    return payload


def load_tuned(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    backbone_checkpoint: str | os.PathLike | None = None,
) -> tuple[ASDModel, Any, dict[str, Any]]:
    """Rebuild the tuned model (eval mode, on ``device``), its LabelIndex and its settings.

    ``backbone_checkpoint`` overrides the recorded backbone (e.g. after moving the files): a path or hub id.
    """
    from asd.data.dataset import LabelIndex

    path = Path(path)
    payload = read_tuned(path)
    encoder = _rebuild_backbone(payload["backbone"], path, backbone_checkpoint)
    if asdict(encoder.config) != payload["eat_config"]:
        raise ValueError(f"{path}: the backbone's config differs from the one it was tuned with")
    wrapped: nn.Module = encoder
    if payload["lora"] is not None:
        wrapped = add_lora(encoder, **payload["lora"])
    head = head_from_settings(payload["head"], encoder.embed_dim)
    model = ASDModel(wrapped, head, payload["pooling"])
    saved = payload["trainable_state"]
    current = dict(model.named_parameters())
    missing, unexpected = sorted(set(trainable_state(model)) - set(saved)), sorted(set(saved) - set(current))
    if missing or unexpected:
        raise ValueError(
            f"{path}: tuned weights do not fit the rebuilt model (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            if current[name].shape != tensor.shape:
                raise ValueError(
                    f"{path}: {name} is {tuple(tensor.shape)}, the model expects {tuple(current[name].shape)}"
                )
            current[name].copy_(tensor)
    model.to(device).eval()
    return model, LabelIndex.from_dict(payload["label_index"]), payload["settings"]
