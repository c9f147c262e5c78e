"""The EAT encoder in plain PyTorch, its LoRA adapters and the auxiliary classification heads.

EAT (Chen et al., IJCAI 2024, arXiv 2401.03497) is a ViT over 16x16 patches of a 128-bin log-mel
fbank. Its front end (preprocessing.py): a 16 kHz mono waveform minus its mean; kaldi fbank with
htk_compat, 128 mel bins, hanning window, 25 ms frames every 10 ms, no energy, no dither; zero-padded
or cropped to the target frames (1024 = 10.24 s in the released recipes); normalised as
(fbank + 4.268) / (2 * 4.569); shaped [B, 1, T, 128].

Module and parameter names follow the released Hugging Face port (every key prefixed ``model.``
there), so its weights load key for key with no ``trust_remote_code`` (checkpoints.py reads them):
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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

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


# ----------------------------------------------------------------------------- heads


class Head(nn.Module):
    """What every auxiliary head shares: an optional linear projection of the pooled encoder output
    (``projection_dim`` 0: none) and a batch loss. ASDModel.embed applies the projection, so the
    projected vector is the embedding used downstream; ``forward(emb, labels)`` takes projected
    embeddings and returns logits (``labels`` only matter to margin heads)."""

    def __init__(self, embed_dim: int, projection_dim: int = 0):
        super().__init__()
        self.projection = nn.Linear(embed_dim, projection_dim) if projection_dim else nn.Identity()
        self.projection_dim = projection_dim
        self.dim = projection_dim or embed_dim  # width of the embeddings the head classifies

    def loss(
        self,
        emb: torch.Tensor,
        labels: torch.Tensor,
        mixed_labels: torch.Tensor | None = None,
        lam: float = 1.0,
    ) -> torch.Tensor:
        """Mean cross-entropy; with mixup lam * CE(labels) + (1 - lam) * CE(mixed_labels), margins per label set."""
        loss = F.cross_entropy(self(emb, labels).float(), labels)
        if mixed_labels is not None:
            loss = lam * loss + (1 - lam) * F.cross_entropy(self(emb, mixed_labels).float(), mixed_labels)
        return loss

    def target_loss(self, emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy against class targets [B, N] (one-hot, or mixed per sample by mixup)."""
        return -(targets * self(emb).float().log_softmax(dim=1)).sum(dim=1).mean()


def _cosines(emb: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cosine similarities [B, rows] in float32, also under bf16 autocast."""
    with torch.autocast(emb.device.type, enabled=False):
        return F.linear(F.normalize(emb.float(), dim=-1), F.normalize(weight.float(), dim=-1))


class LinearHead(Head):
    """Plain softmax classifier; ``labels`` is accepted for a common interface and ignored."""

    def __init__(self, embed_dim: int, num_classes: int, projection_dim: int = 0):
        super().__init__(embed_dim, projection_dim)
        self.fc = nn.Linear(self.dim, num_classes)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(emb)

    def settings(self) -> dict[str, Any]:
        return {"kind": "linear", "num_classes": self.fc.out_features, "projection_dim": self.projection_dim}


class ArcFaceHead(Head):
    """Additive angular margin (ArcFace): logits = s * cos(theta + m) for the true class, s * cos(theta) else.

    Without labels (inference, accuracy) it returns s * cos(theta) for every class.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        scale: float = 30.0,
        margin: float = 0.5,
        projection_dim: int = 0,
    ):
        super().__init__(embed_dim, projection_dim)
        self.weight = nn.Parameter(torch.empty(num_classes, self.dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin = scale, margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cosine = _cosines(emb, self.weight)
        if labels is None:
            return self.scale * cosine
        cosine = cosine.clamp(-1 + 1e-7, 1 - 1e-7)
        sine = (1 - cosine**2).sqrt()
        with_margin = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        # past theta = pi - m, cos(theta + m) stops decreasing: fall back to a linear penalty
        threshold = math.cos(math.pi - self.margin)
        with_margin = torch.where(
            cosine > threshold, with_margin, cosine - math.sin(math.pi - self.margin) * self.margin
        )
        target = F.one_hot(labels, cosine.shape[1]).bool()
        return self.scale * torch.where(target, with_margin, cosine)

    def settings(self) -> dict[str, Any]:
        return {
            "kind": "arcface",
            "num_classes": self.weight.shape[0],
            "scale": self.scale,
            "margin": self.margin,
            "projection_dim": self.projection_dim,
        }


class SCAdaCosHead(Head):
    """Sub-cluster AdaCos (Wilkinghoff, IJCNN 2021): C centres per class, a fixed or adaptive scale s.

    With x the normalised embedding, w_jk the normalised k-th centre of class j (N classes) and
    cos_jk = <x, w_jk>:
        p_jk = exp(s cos_jk) / sum_{j',k'} exp(s cos_j'k')      softmax over all N*C sub-clusters
        P_j  = sum_k p_jk                                          class probability
        loss = -mean_i sum_j y_ij log P_ij                         y: one-hot, or mixup's lam/(1-lam) mix
    forward() returns log P [B, N] (so F.cross_entropy(log P, labels) is the loss with one-hot y).
    ``dynamic`` True: before each training batch's loss, without gradient (AdaCos's dynamic scale, over
    sub-clusters):
        B_avg     = mean_i sum_{(j,k): y_ij = 0} exp(s cos_ijk)   non-target sub-clusters only
        theta_med = median of arccos(cos_ijk) over the target sub-clusters (y_ij > 0) of the batch
        s        <- log(B_avg) / cos(min(pi/4, theta_med))
    ``dynamic`` False (ASDKit's recipe): s stays at its initial value. Initial s = sqrt(2) * log(N*C - 1)
    (``scale`` None), or the saved s when a tuned model is reloaded. Centres start from a fixed-seed
    draw, so frozen ones (``train_centres`` False) are rebuilt identically on load: ``centre_init``
    "normal" (standard normal) or "xavier" (ASDKit: xavier_uniform_ of its (D, N*C) layout, seed 0).
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        sub_clusters: int = 16,
        scale: float | None = None,
        train_centres: bool = True,
        projection_dim: int = 0,
        dynamic: bool = True,
        centre_init: str = "normal",
    ):
        super().__init__(embed_dim, projection_dim)
        if sub_clusters < 1:
            raise ValueError(f"sub_clusters must be at least 1, got {sub_clusters}")
        self.num_classes, self.sub_clusters, self.train_centres = num_classes, sub_clusters, train_centres
        self.dynamic, self.centre_init = dynamic, centre_init
        centres = _initial_centres(num_classes * sub_clusters, self.dim, centre_init)
        self.centres = nn.Parameter(
            centres, requires_grad=train_centres
        )  # row j * C + k: class j, sub-cluster k
        initial = math.sqrt(2) * math.log(max(2, num_classes * sub_clusters - 1))
        self.register_buffer("scale", torch.tensor(float(initial if scale is None else scale)))

    def _log_class_probs(self, cosine: torch.Tensor) -> torch.Tensor:
        logits = self.scale * cosine
        per_class = logits.view(-1, self.num_classes, self.sub_clusters).logsumexp(dim=2)
        return per_class - logits.logsumexp(dim=1, keepdim=True)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._log_class_probs(_cosines(emb, self.centres))

    def target_loss(self, emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """-mean_i sum_j y_ij log P_ij for class targets y [B, N]; adapts s first when ``dynamic``."""
        cosine = _cosines(emb, self.centres)
        if self.training and self.dynamic:
            self.update_scale(cosine, targets)
        return -(targets * self._log_class_probs(cosine)).sum(dim=1).mean()

    @torch.no_grad()
    def update_scale(self, cosine: torch.Tensor, targets: torch.Tensor) -> None:
        """The AdaCos rule above, from one batch's cosines [B, N*C] and class targets [B, N]."""
        target = (targets > 0).repeat_interleave(self.sub_clusters, dim=1)
        non_target = (self.scale * cosine).masked_fill(target, float("-inf"))
        log_b_avg = non_target.flatten().logsumexp(0) - math.log(cosine.shape[0])
        theta_med = torch.acos(cosine[target].clamp(-1 + 1e-7, 1 - 1e-7)).median()
        self.scale.copy_(log_b_avg / torch.cos(theta_med.clamp(max=math.pi / 4)))

    def loss(
        self,
        emb: torch.Tensor,
        labels: torch.Tensor,
        mixed_labels: torch.Tensor | None = None,
        lam: float = 1.0,
    ) -> torch.Tensor:
        targets = F.one_hot(labels, self.num_classes).float()
        if mixed_labels is not None:
            targets = lam * targets + (1 - lam) * F.one_hot(mixed_labels, self.num_classes).float()
        return self.target_loss(emb, targets)

    def settings(self) -> dict[str, Any]:
        return {
            "kind": "scadacos",
            "num_classes": self.num_classes,
            "sub_clusters": self.sub_clusters,
            "scale": float(self.scale),
            "train_centres": self.train_centres,
            "projection_dim": self.projection_dim,
            "dynamic": self.dynamic,
            "centre_init": self.centre_init,
        }


def _initial_centres(rows: int, dim: int, init: str) -> torch.Tensor:
    """SCAdaCos centres [rows, dim] from a seed-0 generator: "normal" draws, or "xavier" as ASDKit
    initialises its (dim, rows) weight (xavier_uniform_), transposed to rows."""
    generator = torch.Generator().manual_seed(0)
    if init == "normal":
        return torch.randn(rows, dim, generator=generator)
    if init == "xavier":
        layout = torch.empty(dim, rows)
        nn.init.xavier_uniform_(layout, generator=generator)
        return layout.T.contiguous()
    raise ValueError(f"centre_init must be 'normal' or 'xavier', got {init!r}")


HEADS = {"linear": LinearHead, "arcface": ArcFaceHead, "scadacos": SCAdaCosHead}


def make_head(
    kind: str,
    embed_dim: int,
    num_classes: int,
    scale: float | None = None,
    margin: float = 0.5,
    sub_clusters: int = 16,
    train_centres: bool = True,
    projection_dim: int = 0,
    dynamic: bool = True,
    centre_init: str = "normal",
) -> Head:
    """'linear', 'arcface' or 'scadacos' over ``embed_dim``-wide pooled outputs, projected to
    ``projection_dim`` first when it is not 0. ``scale`` None: the head's own default (ArcFace 30,
    SCAdaCos adaptive initial value); arguments a head does not use are ignored."""
    if kind == "linear":
        return LinearHead(embed_dim, num_classes, projection_dim)
    if kind == "arcface":
        return ArcFaceHead(embed_dim, num_classes, 30.0 if scale is None else scale, margin, projection_dim)
    if kind == "scadacos":
        return SCAdaCosHead(
            embed_dim, num_classes, sub_clusters, scale, train_centres, projection_dim, dynamic, centre_init
        )
    raise ValueError(f"unknown head {kind!r}; choose one of {sorted(HEADS)}")


def head_settings(head: Head) -> dict[str, Any]:
    """make_head's keyword arguments (without embed_dim) that rebuild ``head``."""
    if not isinstance(head, Head):
        raise TypeError(f"unknown head type {type(head).__name__}")
    return head.settings()


def head_from_settings(settings: dict[str, Any], embed_dim: int) -> Head:
    """The head that head_settings() described, over an encoder of width ``embed_dim``."""
    return make_head(embed_dim=embed_dim, **settings)


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
