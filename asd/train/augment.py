"""Training augmentations: SpecAugment masks, mixup, and the pretext task of a single-class folder."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from asd.data.dataset import LabelIndex
from asd.data.fbank import PAD_VALUE

PRETEXT_TASKS = ("none", "time_stretch", "pitch_shift", "overlay")
_STRETCH, _SHIFT_BINS = 1.25, 8


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


def mixup_batch(
    x: torch.Tensor, labels: torch.Tensor, prob: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """With probability ``prob``: (lam * x + (1 - lam) * x[perm], labels[perm], lam), lam ~ Beta(alpha, alpha);
    otherwise (x, None, 1.0). Draws from the global torch RNG (seeded per epoch)."""
    if prob <= 0 or float(torch.rand(())) >= prob:
        return x, None, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(x.shape[0]).to(x.device)
    return lam * x + (1 - lam) * x[order], labels[order], lam


def pretext_batch(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one of PRETEXT_TASKS to each clip of [B, 1, T, F] -> (clips, index of the task applied).

    The task is drawn uniformly per clip (``generator``, else the global RNG). time_stretch: the
    clip played 1.25x slower (time axis linearly interpolated, the first T frames kept);
    pitch_shift: every mel bin moved 8 bins up (the lowest 8 filled with PAD_VALUE); overlay: the
    clip mixed (mean) with itself delayed by half its length (so a batch of one works too).
    """
    B, _, T, Fq = x.shape
    labels = torch.randint(0, len(PRETEXT_TASKS), (B,), generator=generator).to(x.device)
    stretched = F.interpolate(x, size=(round(T * _STRETCH), Fq), mode="bilinear", align_corners=False)[
        :, :, :T
    ]
    shifted = torch.cat([torch.full_like(x[..., :_SHIFT_BINS], PAD_VALUE), x[..., :-_SHIFT_BINS]], dim=-1)
    overlaid = 0.5 * (x + x.roll(T // 2, dims=2))
    versions = torch.stack([x, stretched, shifted, overlaid])  # same order as PRETEXT_TASKS
    return versions[labels, torch.arange(B, device=x.device)], labels


def pretext_label_index() -> LabelIndex:
    """Class names of the pretext task, sorted in PRETEXT_TASKS order (so index = task index)."""
    return LabelIndex(f"pretext/{i}_{name}" for i, name in enumerate(PRETEXT_TASKS))


def mixup_samples(
    x: torch.Tensor,
    targets: torch.Tensor,
    prob: float,
    generator: torch.Generator | None = None,
    draws: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ASDKit's per-sample mixup of a batch (waveforms [B, samples] and class targets [B, N]).

    Draws, in this order: lam = rand(B), perm = randperm(B), u = rand(B) (``generator``, else the global
    RNG; or the stored ``draws`` (lam, perm, u), replayed). Sample b is mixed when u_b < ``prob``:
    lam_b * v_b + (1 - lam_b) * v_perm[b] for both tensors (a sample may draw itself as partner);
    the others pass unchanged (ASDKit: dec * mixed + (1 - dec) * v).
    """
    batch = x.shape[0]
    if draws is None:
        lam = torch.rand(batch, generator=generator)
        perm = torch.randperm(batch, generator=generator)
        uniform = torch.rand(batch, generator=generator)
    else:
        lam, perm, uniform = (torch.as_tensor(d) for d in draws)
    dec = (uniform < prob).float()

    def mix(v: torch.Tensor) -> torch.Tensor:
        shape = (batch,) + (1,) * (v.dim() - 1)
        weight, mixed_in = lam.to(v).view(shape), dec.to(v).view(shape)
        mixed = weight * v + (1 - weight) * v[perm.to(v.device)]
        return mixed_in * mixed + (1 - mixed_in) * v

    return mix(x), mix(targets)
