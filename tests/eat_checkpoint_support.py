"""Write tiny EAT checkpoints in the released Hugging Face layout, for tests (no network).

    from eat_checkpoint_support import write_eat_checkpoint
    state = write_eat_checkpoint(tmp_path / "eat")        # folder with config.json + model.safetensors
    folder = write_hub_snapshot(tmp_path / "hub", "owner/name", COMMIT)   # a Hugging Face cache entry
    fairseq_layout(state, "pretrain")                     # the same tensors under fairseq's names

The folder holds `config.json` (model_type "eat") and `model.safetensors` (or `pytorch_model.bin`),
every key prefixed `model.`, exactly as the released checkpoints are laid out.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asd.model.model import EATConfig, EATEncoder, sincos_position_table  # noqa: E402

TINY_HF_CONFIG = {
    "architectures": ["EATModel"],
    "auto_map": {"AutoConfig": "configuration_eat.EATConfig", "AutoModel": "modeling_eat.EATModel"},
    "model_type": "eat",
    "torch_dtype": "float32",
    "transformers_version": "4.44.0",
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
    "patch_size": 16,
    "stride": 16,
    "in_chans": 1,
    "mel_bins": 128,
    "max_length": 64,
    "num_classes": 10,
    "model_variant": "pretrain",
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "drop_rate": 0.0,
    "attn_drop_rate": 0.0,
    "activation_dropout": 0.0,
    "post_mlp_drop": 0.0,
    "start_drop_path_rate": 0.0,
    "end_drop_path_rate": 0.0,
    "layer_norm_first": False,
    "norm_eps": 1e-6,
    "norm_affine": True,
    "fixed_positions": True,
    "img_size": [1024, 128],
}


def tiny_eat_state(config: dict, seed: int = 1234) -> dict[str, torch.Tensor]:
    """Random weights (unprefixed names) for ``config``; the position table is the sin-cos formula."""
    cfg = EATConfig.from_dict(config)
    names = EATEncoder(cfg).state_dict()
    generator = torch.Generator().manual_seed(seed)
    state = {name: 0.05 * torch.randn(t.shape, generator=generator) for name, t in names.items()}
    state["fixed_positional_encoder.positions"] = sincos_position_table(
        cfg.embed_dim, cfg.max_length, cfg.freq_patches
    )
    for name in state:
        if ("norm" in name) and name.endswith(".weight"):
            state[name] = 1.0 + state[name]
    return state


def write_eat_checkpoint(
    folder: str | Path, variant: str = "pretrain", weights: str = "safetensors", seed: int = 1234, **overrides
) -> dict[str, torch.Tensor]:
    """Write a tiny HF-layout EAT checkpoint into ``folder``; returns the state written (with `model.`).

    ``weights``: "safetensors" (model.safetensors) or "bin" (pytorch_model.bin); ``overrides`` change
    config.json fields (e.g. embed_dim=32).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**TINY_HF_CONFIG, "model_variant": variant, **overrides}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {f"model.{k}": v.contiguous() for k, v in tiny_eat_state(config, seed).items()}
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif weights == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        raise ValueError(f"weights must be 'safetensors' or 'bin', got {weights!r}")
    return state


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hub_snapshot(
    cache: str | Path, hub_id: str, commit: str = COMMIT, ref: str = "main", **checkpoint_options
) -> Path:
    """A tiny checkpoint laid out as huggingface_hub caches it under ``cache`` (HF_HUB_CACHE).

    models--owner--name/blobs/<file hash>, snapshots/<commit>/<file> -> ../../blobs/<hash> links,
    refs/<ref> holding the commit. Returns the snapshot folder.
    """
    import hashlib

    repo = Path(cache) / ("models--" + hub_id.replace("/", "--"))
    staging = repo / "staging"
    write_eat_checkpoint(staging, **checkpoint_options)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in sorted(staging.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.move(file, blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    staging.rmdir()
    (repo / "refs").mkdir()
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def fairseq_layout(hf_state: dict[str, torch.Tensor], variant: str = "pretrain") -> dict[str, torch.Tensor]:
    """The tensors of an HF-layout state under an original fairseq EAT file's names, with training-only extras.

    Pre-trained: modality_encoders.IMAGE.{local_encoder, extra_tokens, fixed_positional_encoder,
    context_encoder.norm} and blocks.*, plus the EMA teacher and a decoder; fine-tuned: the same
    encoder keys under model., with fc_norm and head.
    """
    fairseq = {}
    for key, value in hf_state.items():
        key = key[len("model.") :]
        if key.startswith("pre_norm."):
            key = "modality_encoders.IMAGE.context_encoder.norm." + key.split(".")[-1]
        elif not key.startswith(("blocks.", "fc_norm.", "head.")):
            key = "modality_encoders.IMAGE." + key
        if variant == "finetune" and not key.startswith(("fc_norm.", "head.")):
            key = "model." + key
        fairseq[key] = value
    if variant == "pretrain":
        fairseq["_ema"] = {"blocks.0.attn.qkv.weight": torch.zeros(2)}
        fairseq["modality_encoders.IMAGE.decoder.proj.weight"] = torch.zeros(2, 2)
        fairseq["decoder.blocks.0.weight"] = torch.zeros(2)
    return fairseq
