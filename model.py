"""The EAT encoder in plain PyTorch, its LoRA adapters, the auxiliary heads and tuned-model files.

EAT (Chen et al., IJCAI 2024) is a ViT over 16x16 patches of a 128-bin log-mel fbank. Module and
parameter names follow the released Hugging Face port (every key prefixed ``model.``), so a local
download loads key for key with no ``trust_remote_code`` and no network. See
../shared/EAT_FORMAT.md for the format this file is built against.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import atomic_torch_save, autocast

TUNED_FORMAT = "eat-lora-asd/tuned-v1"
HF_PREFIX = "model."
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LORA_TARGETS = r"blocks\.\d+\.attn\.(qkv|proj)"  # peft full-matches this; local_encoder.proj stays out
RANDOM_INIT_WARNING = (
    "WARNING: no EAT checkpoint given: building a RANDOMLY INITIALISED '{size}' encoder. "
    "Embeddings and AUROC will be far below a pretrained EAT; pass a downloaded checkpoint "
    "directory (config.json + model.safetensors) as EAT_CHECKPOINT for real results."
)


# ----------------------------------------------------------------------------- configuration

@dataclass
class EATConfig:
    """The fields of the Hugging Face ``config.json`` (model_type "eat") with their defaults."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    stride: int = 16
    in_chans: int = 1
    mel_bins: int = 128
    max_length: int = 768  # time patches the position table covers
    num_classes: int = 527
    model_variant: str = "pretrain"  # "pretrain" | "finetune" (adds fc_norm + head)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    activation_dropout: float = 0.0
    post_mlp_drop: float = 0.0
    start_drop_path_rate: float = 0.0
    end_drop_path_rate: float = 0.0
    layer_norm_first: bool = False
    norm_eps: float = 1e-6
    norm_affine: bool = True
    fixed_positions: bool = True
    img_size: list[int] = field(default_factory=lambda: [1024, 128])

    def __post_init__(self) -> None:
        problems = []
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % 4:
            problems.append(f"embed_dim {self.embed_dim} must be divisible by 4 (2-D sin-cos positions)")
        if self.patch_size != self.stride:
            problems.append(f"only non-overlapping patches are supported (patch_size {self.patch_size} != stride {self.stride})")
        if self.mel_bins % self.patch_size:
            problems.append(f"mel_bins {self.mel_bins} is not a multiple of patch_size {self.patch_size}")
        if self.layer_norm_first:
            problems.append("layer_norm_first=true (pre-norm) is not an EAT release layout")
        if not self.fixed_positions:
            problems.append("fixed_positions=false is not an EAT release layout")
        if self.model_variant not in ("pretrain", "finetune"):
            problems.append(f"model_variant must be 'pretrain' or 'finetune', got {self.model_variant!r}")
        if problems:
            raise ValueError("unsupported EAT configuration: " + "; ".join(problems))

    @property
    def freq_patches(self) -> int:
        return self.mel_bins // self.patch_size

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EATConfig":
        """Known fields only; HF bookkeeping keys (architectures, auto_map, ...) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_pretrained_dir(cls, checkpoint_dir: str | os.PathLike) -> "EATConfig":
        path = Path(checkpoint_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"EAT checkpoint folder {checkpoint_dir} has no config.json")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from error

    @classmethod
    def preset(cls, size: str) -> "EATConfig":
        """'base' (ViT-B, 88M), 'large' (ViT-L, 309M) or 'tiny' (for tests and CPU demos)."""
        presets = {
            "tiny": dict(embed_dim=192, depth=4, num_heads=3),
            "base": dict(embed_dim=768, depth=12, num_heads=12),
            "large": dict(embed_dim=1024, depth=24, num_heads=16),
        }
        if size not in presets:
            raise ValueError(f"unknown model size {size!r}; choose one of {sorted(presets)}")
        return cls(**presets[size])


# ----------------------------------------------------------------------------- building blocks

def sincos_position_table(embed_dim: int, time_patches: int, freq_patches: int) -> torch.Tensor:
    """MAE 2-D sin-cos table (1, time_patches * freq_patches, D), row = t * freq_patches + f.

    The first D/2 channels encode the frequency index f, the last D/2 the time index t, each as
    [sin(p * omega), cos(p * omega)] with omega_i = 1 / 10000^(i / (D/4)).
    """
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    t = torch.arange(time_patches, dtype=torch.float64).repeat_interleave(freq_patches)
    f = torch.arange(freq_patches, dtype=torch.float64).repeat(time_patches)

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(f), encode(t)], dim=1).float().unsqueeze(0)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference attention (B, H, N, hd): softmax(q k^T / sqrt(hd)) v with the softmax in float32."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype) @ v


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


class PatchEmbed(nn.Module):
    """16x16 conv patches over (time, mel), flattened time-major: token = t_patch * F + f_patch."""

    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class FixedPositionalEncoder(nn.Module):
    """Holds the stored (not trained) position table under the checkpoint's name ``positions``."""

    def __init__(self, cfg: EATConfig):
        super().__init__()
        table = sincos_position_table(cfg.embed_dim, cfg.max_length, cfg.freq_patches)
        self.positions = nn.Parameter(table, requires_grad=False)


class Attention(nn.Module):
    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.attn_drop = cfg.attn_drop_rate
        self.proj_drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, explicit: bool = False) -> torch.Tensor:
        B, N, D = x.shape
        # one fused matmul; q, k, v are strided views, SDPA takes them without copies
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        if explicit:
            y = F.dropout(explicit_attention(q, k, v), self.attn_drop, self.training)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(B, N, D)))


class Mlp(nn.Module):
    def __init__(self, cfg: EATConfig):
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(cfg.activation_dropout)
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)
        self.drop2 = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Post-norm block (layer_norm_first false): x += attn(x); r = norm1(x); x = norm2(r + mlp(r))."""

    def __init__(self, cfg: EATConfig, drop_path_rate: float):
        super().__init__()
        self.attn = Attention(cfg)
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.mlp = Mlp(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.post_mlp_drop = nn.Dropout(cfg.post_mlp_drop)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor, explicit_attention: bool = False) -> torch.Tensor:
        x = x + drop_path(self.attn(x, explicit_attention), self.drop_path_rate, self.training)
        r = self.norm1(x)
        x = r + drop_path(self.post_mlp_drop(self.mlp(r)), self.drop_path_rate, self.training)
        return self.norm2(x)


class EATEncoder(nn.Module):
    """EAT's student encoder: forward(x[B, 1, T, 128]) -> tokens [B, 1 + N, D], index 0 = CLS."""

    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.config = cfg
        self.source: dict[str, Any] = {}  # where the weights came from (filled by build_encoder)
        self.local_encoder = PatchEmbed(cfg)
        self.fixed_positional_encoder = FixedPositionalEncoder(cfg)
        self.extra_tokens = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pre_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.dropout = nn.Dropout(cfg.drop_rate)
        rates = torch.linspace(cfg.start_drop_path_rate, cfg.end_drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        if cfg.model_variant == "finetune":  # AudioSet classifier of the fine-tuned release; unused here
            self.fc_norm = nn.LayerNorm(cfg.embed_dim)
            self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self.reset_parameters()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random init (data2vec / MAE style); the position table is set to the sin-cos formula."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        conv = self.local_encoder.proj
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        nn.init.zeros_(conv.bias)
        nn.init.trunc_normal_(self.extra_tokens, std=0.02)
        cfg = self.config
        self.fixed_positional_encoder.positions.copy_(
            sincos_position_table(cfg.embed_dim, cfg.max_length, cfg.freq_patches))

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + stored positions + CLS token + pre_norm: (B, 1 + N, D) block input."""
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_chans or x.shape[3] != cfg.mel_bins:
            raise ValueError(f"EAT expects fbanks shaped [B, {cfg.in_chans}, T, {cfg.mel_bins}], got {list(x.shape)}")
        time_patches = x.shape[2] // cfg.patch_size
        if not 1 <= time_patches <= cfg.max_length:
            raise ValueError(
                f"{x.shape[2]} frames give {time_patches} time patches; the encoder takes 1 to "
                f"{cfg.max_length} ({cfg.patch_size} to {cfg.max_length * cfg.patch_size} frames)")
        tokens = self.local_encoder(x)
        tokens = tokens + self.fixed_positional_encoder.positions[:, : tokens.shape[1]]
        tokens = torch.cat([self.extra_tokens.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.dropout(self.pre_norm(tokens))

    def forward(self, x: torch.Tensor, explicit_attention: bool = False) -> torch.Tensor:
        x = self.patch_tokens(x)
        for block in self.blocks:
            x = block(x, explicit_attention)
        return x

    extract_features = forward


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the glibc heap so large activations are not page-faulted in anew every batch.

    glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh pages and unmaps them on
    free, so on CPU each forward pass re-faults its big activations: GELU and the bias copies of the
    linear layers run several times slower. M_MMAP_MAX = 0 plus a high trim threshold keeps the
    memory in the process (its RSS stays at the peak). Linux/glibc only; returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


# ----------------------------------------------------------------------------- checkpoints

def _weights_file(checkpoint_dir: Path) -> Path:
    for name in WEIGHT_FILES:
        if (checkpoint_dir / name).is_file():
            return checkpoint_dir / name
    raise FileNotFoundError(f"EAT checkpoint folder {checkpoint_dir} has none of {', '.join(WEIGHT_FILES)}")


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt / truncated / not a checkpoint at all
        raise ValueError(f"cannot read EAT weights from {path}: {type(error).__name__}: {error}") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def _fairseq_to_hf(weights: dict[str, Any], model_cfg: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map an original fairseq/data2vec-2.0 EAT state dict onto this module's names (and a config).

    Mapping (fairseq's data2vec 2.0 ImageEncoder, which EAT's encoder is):
      modality_encoders.IMAGE.local_encoder.proj.*               -> local_encoder.proj.*
      modality_encoders.IMAGE.fixed_positional_encoder.positions -> fixed_positional_encoder.positions
      modality_encoders.IMAGE.extra_tokens                       -> extra_tokens
      modality_encoders.IMAGE.context_encoder.norm.*             -> pre_norm.*
      blocks.*                                                   -> blocks.*
      fc_norm.*, head.* (fine-tuned files hold the encoder under model.) -> fc_norm.*, head.*
    The EMA teacher (_ema), the decoders and recon_proj serve pre-training only and are dropped;
    anything else keeps its name, so the strict load reports it. num_heads comes from the saved
    config, else embed_dim / 64 (true of EAT base and large).
    """
    mapped = {}
    for key, value in weights.items():
        key = key[len("model."):] if key.startswith("model.") else key
        if key.startswith(("_ema", "ema.", "decoder.", "shared_decoder.", "recon_proj.",
                           "modality_encoders.IMAGE.decoder.")) or not isinstance(value, torch.Tensor):
            continue
        key = key.replace("modality_encoders.IMAGE.context_encoder.norm.", "pre_norm.")
        mapped[key.replace("modality_encoders.IMAGE.", "")] = value
    embed_dim = mapped["extra_tokens"].shape[-1] if "extra_tokens" in mapped else 768
    positions = mapped.get("fixed_positional_encoder.positions")
    config = {"embed_dim": embed_dim,
              "depth": len({k.split(".")[1] for k in mapped if k.startswith("blocks.")}),
              "num_heads": int(model_cfg.get("num_heads") or embed_dim // 64),
              "max_length": positions.shape[1] // 8 if positions is not None else 768,
              "model_variant": "finetune" if "head.weight" in mapped else "pretrain"}
    if "head.weight" in mapped:
        config["num_classes"] = mapped["head.weight"].shape[0]
    return mapped, config


def read_checkpoint(checkpoint: str | os.PathLike) -> tuple[EATConfig, dict[str, torch.Tensor], Path]:
    """(config, state with the ``model.`` prefix removed, weights file) of an HF folder or fairseq .pt."""
    path = Path(checkpoint)
    if path.is_dir():
        config = EATConfig.from_pretrained_dir(path)
        weights = _weights_file(path)
        state = _read_state(weights)
        unprefixed = [k for k in state if not k.startswith(HF_PREFIX)]
        if unprefixed:
            raise ValueError(
                f"{weights}: keys without the Hugging Face '{HF_PREFIX}' prefix, e.g. {unprefixed[:3]}; "
                "this is not a released EAT checkpoint in the HF layout")
        return config, {k[len(HF_PREFIX):]: v for k, v in state.items()}, weights
    if path.is_file() and path.suffix == ".pt":
        try:  # fairseq pickles its config (omegaconf): a full unpickling, so only load files you trust
            raw = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise ValueError(f"cannot read fairseq EAT checkpoint {path}: {type(error).__name__}: {error}") from error
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            raise ValueError(f"{path} is not a fairseq checkpoint (no 'model' state dict inside)")
        saved_cfg = raw.get("cfg") if isinstance(raw.get("cfg"), dict) else {}
        model_cfg = saved_cfg.get("model") if isinstance(saved_cfg.get("model"), dict) else {}
        state, values = _fairseq_to_hf(raw["model"], dict(model_cfg))
        print(f"note: {path} read as a fairseq checkpoint (num_heads={values['num_heads']})")
        return EATConfig.from_dict(values), state, path
    raise FileNotFoundError(
        f"EAT checkpoint {checkpoint} not found: give a Hugging Face folder (config.json + "
        f"model.safetensors or pytorch_model.bin) or an original fairseq .pt file")


def load_state_strict(encoder: EATEncoder, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy ``state`` into ``encoder``; any missing, unexpected or mis-shaped key stops with all of them listed."""
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                       for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or misshaped:
        def listing(title: str, items: list[str]) -> str:
            shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
            return f"\n  {title} ({len(items)}): " + ("none" if not items else "\n    " + "\n    ".join(shown))
        raise ValueError(
            f"EAT checkpoint {source} does not match the {encoder.config.embed_dim}-dim, "
            f"{encoder.config.depth}-block {encoder.config.model_variant} encoder its config describes:"
            + listing("missing keys", missing) + listing("unexpected keys", unexpected)
            + listing("mis-shaped keys", misshaped))
    encoder.load_state_dict(state, strict=True)


def backbone_fingerprint(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Cheap identity of a backbone checkpoint: config hash + weights file name, size and mtime."""
    path = Path(checkpoint)
    weights = _weights_file(path) if path.is_dir() else path
    # the config's content, not its formatting
    config_text = json.dumps(json.loads((path / "config.json").read_text()), sort_keys=True) if path.is_dir() else ""
    stat = weights.stat()
    return {"config_sha256": hashlib.sha256(config_text.encode()).hexdigest(), "weights_file": weights.name,
            "size": stat.st_size, "mtime": stat.st_mtime}


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over named tensors (names, shapes, dtypes and bytes), in sorted name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_checksum(module: nn.Module) -> str:
    """tensors_checksum of a module's whole state dict."""
    return tensors_checksum(module.state_dict())


def build_encoder(checkpoint: str | os.PathLike | None, size: str = "base", init_seed: int = 0,
                  verbose: bool = True) -> EATEncoder:
    """Load a released EAT checkpoint strictly, or (checkpoint None) build a random ``size`` encoder."""
    if checkpoint is None or str(checkpoint) == "":
        if verbose:
            print(RANDOM_INIT_WARNING.format(size=size))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            encoder = EATEncoder(EATConfig.preset(size))
        encoder.source = {"checkpoint": None, "size": size, "init_seed": init_seed,
                          "checksum": state_checksum(encoder), "torch": str(torch.__version__)}
        return encoder
    config, state, weights = read_checkpoint(checkpoint)
    encoder = EATEncoder(config)
    load_state_strict(encoder, state, weights)
    table = sincos_position_table(config.embed_dim, config.max_length, config.freq_patches)
    if verbose and not torch.allclose(encoder.fixed_positional_encoder.positions, table, atol=1e-4):
        print(f"note: the position table stored in {weights} differs from the 2-D sin-cos formula; using the stored one")
    encoder.source = {"checkpoint": str(Path(checkpoint).resolve()), "fingerprint": backbone_fingerprint(checkpoint)}
    if verbose:
        print(f"loaded EAT encoder from {weights} (dim {config.embed_dim}, depth {config.depth}, {config.model_variant})")
    return encoder


# ----------------------------------------------------------------------------- LoRA

def add_lora(encoder: EATEncoder, rank: int, alpha: float, dropout: float,
             unfreeze_last_norms: int = 0) -> nn.Module:
    """Wrap ``encoder`` with peft LoRA on blocks.*.attn.qkv / .proj; everything else frozen.

    ``unfreeze_last_norms`` > 0 also trains norm1/norm2 of the last K blocks.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, bias="none")
    wrapped = get_peft_model(encoder, config)
    depth = encoder.config.depth
    for index in range(max(0, depth - unfreeze_last_norms), depth):
        for norm in (encoder.blocks[index].norm1, encoder.blocks[index].norm2):
            norm.requires_grad_(True)
    wrapped.asd_lora_settings = {"rank": rank, "alpha": alpha, "dropout": dropout,
                                 "unfreeze_last_norms": unfreeze_last_norms}
    return wrapped


def base_encoder(encoder: nn.Module) -> EATEncoder:
    """The EATEncoder inside a peft wrapper (or the encoder itself)."""
    inner = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
    if not isinstance(inner, EATEncoder):
        raise TypeError(f"expected an EATEncoder, got {type(inner).__name__}")
    return inner


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ----------------------------------------------------------------------------- heads

class LinearHead(nn.Module):
    """Plain softmax classifier; ``labels`` is accepted for a common interface and ignored."""

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(emb)


class ArcFaceHead(nn.Module):
    """Additive angular margin (ArcFace): logits = s * cos(theta + m) for the true class, s * cos(theta) else.

    Without labels (inference, accuracy) it returns s * cos(theta) for every class.
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin = scale, margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(emb.device.type, enabled=False):  # cosines in float32, also under bf16 autocast
            cosine = F.linear(F.normalize(emb.float(), dim=-1), F.normalize(self.weight.float(), dim=-1))
        if labels is None:
            return self.scale * cosine
        cosine = cosine.clamp(-1 + 1e-7, 1 - 1e-7)
        sine = (1 - cosine ** 2).sqrt()
        with_margin = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        # past theta = pi - m, cos(theta + m) stops decreasing: fall back to a linear penalty
        threshold = math.cos(math.pi - self.margin)
        with_margin = torch.where(cosine > threshold, with_margin, cosine - math.sin(math.pi - self.margin) * self.margin)
        target = F.one_hot(labels, cosine.shape[1]).bool()
        return self.scale * torch.where(target, with_margin, cosine)


def make_head(kind: str, embed_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.5) -> nn.Module:
    """'linear' or 'arcface'."""
    if kind == "linear":
        return LinearHead(embed_dim, num_classes)
    if kind == "arcface":
        return ArcFaceHead(embed_dim, num_classes, scale, margin)
    raise ValueError(f"unknown head {kind!r}; choose 'linear' or 'arcface'")


def head_settings(head: nn.Module) -> dict[str, Any]:
    if isinstance(head, ArcFaceHead):
        return {"kind": "arcface", "num_classes": head.weight.shape[0], "scale": head.scale, "margin": head.margin}
    if isinstance(head, LinearHead):
        return {"kind": "linear", "num_classes": head.fc.out_features}
    raise TypeError(f"unknown head type {type(head).__name__}")


# ----------------------------------------------------------------------------- the ASD model

class ASDModel(nn.Module):
    """Encoder (plain or LoRA-wrapped) + auxiliary classification head."""

    def __init__(self, encoder: nn.Module, head: nn.Module, pooling: str = "cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.encoder, self.head, self.pooling = encoder, head, pooling

    @property
    def embed_dim(self) -> int:
        return base_encoder(self.encoder).embed_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Utterance embeddings [B, D]: the CLS token, or the mean of the patch tokens."""
        tokens = self.encoder(x)
        return tokens[:, 0] if self.pooling == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(x), labels)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (LoRA, unfrozen norms, head), detached CPU copies."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_tuned(path: str | os.PathLike, model: ASDModel, label_index: Any, settings: dict[str, Any],
               backbone_checkpoint: str | os.PathLike | None) -> None:
    """Write LoRA + head weights, the label index, settings and the backbone's identity (atomic).

    Frozen pretrained weights are not copied: the file points at the backbone checkpoint and its
    fingerprint; a random backbone is recorded by its init seed and a checksum of its weights.
    """
    encoder = base_encoder(model.encoder)
    source = dict(encoder.source)
    recorded = source.get("checkpoint")
    if (backbone_checkpoint is None) != (recorded is None) or (
            recorded is not None and Path(backbone_checkpoint).resolve() != Path(recorded)):
        raise ValueError(f"save_tuned: backbone_checkpoint {backbone_checkpoint!r} is not the checkpoint "
                         f"the encoder was built from ({recorded!r})")
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
                "random initialisation is not reproducible across these versions")
        return encoder
    if not Path(checkpoint).exists():
        raise FileNotFoundError(
            f"{path} was tuned on the EAT checkpoint {checkpoint}, which is not there any more; "
            "pass its new location as backbone_checkpoint")
    now, saved = backbone_fingerprint(checkpoint), backbone.get("fingerprint") or {}
    for key in ("config_sha256", "weights_file", "size"):
        if key in saved and now[key] != saved[key]:
            raise ValueError(f"{path} was tuned on a different EAT checkpoint than {checkpoint} "
                             f"({key}: saved {saved[key]!r}, now {now[key]!r})")
    if saved.get("mtime") not in (None, now["mtime"]):
        print(f"note: {checkpoint} was modified after {path} was tuned on it (same size and config)")
    return build_encoder(checkpoint)


def load_tuned(path: str | os.PathLike, device: str | torch.device = "cpu",
               backbone_checkpoint: str | os.PathLike | None = None) -> tuple[ASDModel, Any, dict[str, Any]]:
    """Rebuild the tuned model (eval mode, on ``device``), its LabelIndex and its settings.

    ``backbone_checkpoint`` overrides the recorded backbone path (e.g. after moving the files).
    """
    from dataset import LabelIndex

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tuned model {path} not found (run train.py first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read tuned model {path}: {type(error).__name__}: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != TUNED_FORMAT:
        raise ValueError(f"{path} is not a tuned EAT-LoRA model file (format {TUNED_FORMAT})")
    encoder = _rebuild_backbone(payload["backbone"], path, backbone_checkpoint)
    if asdict(encoder.config) != payload["eat_config"]:
        raise ValueError(f"{path}: the backbone's config differs from the one it was tuned with")
    wrapped: nn.Module = encoder
    if payload["lora"] is not None:
        lora = payload["lora"]
        wrapped = add_lora(encoder, lora["rank"], lora["alpha"], lora["dropout"], lora["unfreeze_last_norms"])
    head_cfg = payload["head"]
    head = make_head(head_cfg["kind"], encoder.embed_dim, head_cfg["num_classes"],
                     head_cfg.get("scale", 30.0), head_cfg.get("margin", 0.5))
    model = ASDModel(wrapped, head, payload["pooling"])
    saved = payload["trainable_state"]
    current = dict(model.named_parameters())
    missing, unexpected = sorted(set(trainable_state(model)) - set(saved)), sorted(set(saved) - set(current))
    if missing or unexpected:
        raise ValueError(f"{path}: tuned weights do not fit the rebuilt model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    with torch.no_grad():
        for name, tensor in saved.items():
            if current[name].shape != tensor.shape:
                raise ValueError(f"{path}: {name} is {tuple(tensor.shape)}, the model expects {tuple(current[name].shape)}")
            current[name].copy_(tensor)
    model.to(device).eval()
    return model, LabelIndex.from_dict(payload["label_index"]), payload["settings"]


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a tuned-model file's bytes (changes whenever the file changes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- embedding clips

def _embed_batch(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "embed"):
        return model.embed(x)
    return model(x)[:, 0]  # a bare EATEncoder: CLS token


def embed_fbanks(model: nn.Module, fbanks: Sequence[torch.Tensor], target_frames: int | None,
                 long_clip: str = "crop", device: str | torch.device = "cpu", amp: bool = True,
                 batch_size: int = 16) -> torch.Tensor:
    """Utterance embeddings [B, D] (float32, CPU) of full-length fbanks [frames, 128], without grad.

    Each clip is padded (EAT-style) / cropped to ``target_frames`` ("crop"), or ("windows") split into
    ``target_frames`` windows covering the whole clip whose embeddings are averaged. With
    ``target_frames`` None every clip is embedded at its own length (up to the encoder's maximum).
    """
    from preprocessing import pad_or_crop, split_windows

    if long_clip not in ("crop", "windows"):
        raise ValueError(f"long_clip must be 'crop' or 'windows', got {long_clip!r}")
    device = torch.device(device)
    cfg = base_encoder(model.encoder if hasattr(model, "encoder") else model).config
    max_frames = cfg.max_length * cfg.patch_size
    if target_frames is not None and target_frames > max_frames:
        raise ValueError(f"target_frames {target_frames} exceeds the encoder's {max_frames} frames")
    pieces, owners = [], []
    for clip_index, fbank in enumerate(fbanks):
        if target_frames is None:
            windows = [fbank[:max_frames]]
        elif long_clip == "windows":
            windows = list(split_windows(fbank, target_frames))
        else:
            windows = [pad_or_crop(fbank, target_frames)]
        pieces += windows
        owners += [clip_index] * len(windows)
    # equal lengths batch together (with target_frames set, every piece has the same length)
    order = sorted(range(len(pieces)), key=lambda i: pieces[i].shape[0])
    batches, current = [], []
    for i in order:
        if current and (len(current) == batch_size or pieces[i].shape[0] != pieces[current[0]].shape[0]):
            batches.append(current)
            current = []
        current.append(i)
    batches += [current] if current else []
    was_training = model.training
    model.eval()
    embeddings = torch.zeros(len(pieces), cfg.embed_dim)
    try:
        with torch.inference_mode(), autocast(device, amp):
            for batch in batches:
                x = torch.stack([pieces[i] for i in batch]).unsqueeze(1).to(device, torch.float32)
                embeddings[batch] = _embed_batch(model, x).float().cpu()
    finally:
        model.train(was_training)
    owner = torch.tensor(owners, dtype=torch.long)
    sums = torch.zeros(len(fbanks), cfg.embed_dim).index_add_(0, owner, embeddings)
    return sums / torch.bincount(owner, minlength=len(fbanks)).clamp_min(1)[:, None].float()
