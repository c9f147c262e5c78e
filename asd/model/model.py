"""The EAT encoder in plain PyTorch, its LoRA adapters and the ASD model (encoder + auxiliary head;
the heads themselves are in asd/model/heads.py).

EAT (Chen et al., IJCAI 2024, arXiv 2401.03497) is a ViT over 16x16 patches of a 128-bin log-mel
fbank. Its front end (asd/data/preprocessing.py): a 16 kHz mono waveform minus its mean; kaldi fbank with
htk_compat, 128 mel bins, hanning window, 25 ms frames every 10 ms, no energy, no dither; zero-padded
or cropped to the target frames (1024 = 10.24 s in the released recipes); normalised as
(fbank + 4.268) / (2 * 4.569); shaped [B, 1, T, 128].

Module and parameter names follow the released Hugging Face port (every key prefixed ``model.``
there), so its weights load key for key with no ``trust_remote_code`` (asd/model/pretrained.py reads them):
  local_encoder.proj                  Conv2d(1, D, 16, stride 16); tokens time-major, t_patch * 8 + f_patch
  fixed_positional_encoder.positions  (1, max_length * 8, D) 2-D sin-cos table, stored, not trained
  extra_tokens                        (1, 1, D) CLS token, prepended after the positions are added
  pre_norm                            LayerNorm(D, eps 1e-6) over the whole sequence before the blocks
  blocks.{i}.attn.qkv, .attn.proj     attention (qkv splits as 3, heads, head_dim)
  blocks.{i}.norm1, .norm2            post-norm LayerNorms (see Block)
  blocks.{i}.mlp.fc1, .mlp.fc2        Linear(D, 4D), GELU, Linear(4D, D)
  fc_norm, head                       fine-tuned release only: the AudioSet classifier, unused here
There is no norm after the last block; the output's token 0 is the utterance (CLS) embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from asd.model.heads import Head

LORA_TARGET_MODULES = {
    "qkv": r"attn\.qkv",
    "proj": r"attn\.proj",
    "fc1": r"mlp\.fc1",
    "fc2": r"mlp\.fc2",
}  # LoRA targets by name


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
            problems.append(
                f"only non-overlapping patches are supported (patch_size {self.patch_size} != stride {self.stride})"
            )
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
    def from_dict(cls, values: dict[str, Any]) -> EATConfig:
        """Known fields only; HF bookkeeping keys (architectures, auto_map, ...) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def preset(cls, size: str) -> EATConfig:
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


def drop_path_rates(start: float, end: float, depth: int) -> list[float]:
    """Per-block stochastic-depth rates as EAT's Data2VecMultiModel sets them: np.linspace(start, end, depth)."""
    return np.linspace(start, end, depth).tolist()


def set_drop_path(encoder: nn.Module, rate: float) -> list[float]:
    """Give the blocks of ``encoder`` (plain or LoRA-wrapped) stochastic depth rising linearly from 0 at
    the first block to ``rate`` at the last, as EAT's fine-tuning does; returns the per-block rates."""
    blocks = base_encoder(encoder).blocks
    rates = drop_path_rates(0.0, rate, len(blocks))
    for block, block_rate in zip(blocks, rates):
        block.drop_path_rate = block_rate
    return rates


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
        self.source: dict[str, Any] = {}  # where the weights came from (filled by checkpoints.build_encoder)
        self.local_encoder = PatchEmbed(cfg)
        self.fixed_positional_encoder = FixedPositionalEncoder(cfg)
        self.extra_tokens = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pre_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.dropout = nn.Dropout(cfg.drop_rate)
        rates = drop_path_rates(cfg.start_drop_path_rate, cfg.end_drop_path_rate, cfg.depth)
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
            sincos_position_table(cfg.embed_dim, cfg.max_length, cfg.freq_patches)
        )

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + stored positions + CLS token + pre_norm: (B, 1 + N, D) block input."""
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_chans or x.shape[3] != cfg.mel_bins:
            raise ValueError(
                f"EAT expects fbanks shaped [B, {cfg.in_chans}, T, {cfg.mel_bins}], got {list(x.shape)}"
            )
        time_patches = x.shape[2] // cfg.patch_size
        if not 1 <= time_patches <= cfg.max_length:
            raise ValueError(
                f"{x.shape[2]} frames give {time_patches} time patches; the encoder takes 1 to "
                f"{cfg.max_length} ({cfg.patch_size} to {cfg.max_length * cfg.patch_size} frames)"
            )
        tokens = self.local_encoder(x)
        tokens = tokens + self.fixed_positional_encoder.positions[:, : tokens.shape[1]]
        tokens = torch.cat([self.extra_tokens.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.dropout(self.pre_norm(tokens))

    def forward(self, x: torch.Tensor, explicit_attention: bool = False) -> torch.Tensor:
        x = self.patch_tokens(x)
        for block in self.blocks:
            x = block(x, explicit_attention)
        return x


# ----------------------------------------------------------------------------- LoRA


def lora_target_names(targets: Sequence[str] | str) -> list[str]:
    """ "qkv,proj" or ["qkv", "proj"] -> the checked, de-duplicated LORA_TARGET_MODULES names."""
    names = list(
        dict.fromkeys(t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets))
    )
    unknown = [t for t in names if t not in LORA_TARGET_MODULES]
    if not names or unknown:
        raise ValueError(f"LoRA targets must be some of {sorted(LORA_TARGET_MODULES)}, got {names}")
    return names


def add_lora(
    encoder: EATEncoder,
    rank: int,
    alpha: float,
    dropout: float,
    unfreeze_last_norms: int = 0,
    targets: Sequence[str] | str = ("qkv", "proj"),
) -> nn.Module:
    """Wrap ``encoder`` with peft LoRA on the ``targets`` of every block; everything else frozen.

    ``unfreeze_last_norms`` > 0 also trains norm1/norm2 of the last K blocks. The settings are kept
    on the wrapper (``asd_lora_settings``) as this function's keyword arguments.
    """
    from peft import LoraConfig, get_peft_model

    names = lora_target_names(targets)
    # anchored at blocks.<i>. (peft full-matches), so the patch embedding local_encoder.proj never matches
    pattern = r"blocks\.\d+\.(" + "|".join(LORA_TARGET_MODULES[name] for name in names) + ")"
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")
    wrapped = get_peft_model(encoder, config)
    depth = encoder.config.depth
    for index in range(max(0, depth - unfreeze_last_norms), depth):
        for norm in (encoder.blocks[index].norm1, encoder.blocks[index].norm2):
            norm.requires_grad_(True)
    wrapped.asd_lora_settings = {
        "rank": rank,
        "alpha": alpha,
        "dropout": dropout,
        "unfreeze_last_norms": unfreeze_last_norms,
        "targets": names,
    }
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


# ----------------------------------------------------------------------------- the ASD model


class ASDModel(nn.Module):
    """Encoder (plain or LoRA-wrapped) + auxiliary head (with its optional projection)."""

    def __init__(self, encoder: nn.Module, head: Head, pooling: str = "cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.encoder, self.head, self.pooling = encoder, head, pooling

    @property
    def embed_dim(self) -> int:
        """Width of embed()'s vectors: the projection's when there is one, else the encoder's."""
        return self.head.dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Utterance embeddings [B, embed_dim]: the CLS token or the patch tokens' mean, projected."""
        tokens = self.encoder(x)
        return self.head.projection(tokens[:, 0] if self.pooling == "cls" else tokens[:, 1:].mean(dim=1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(x), labels)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (LoRA, unfrozen norms, head), detached CPU copies."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
