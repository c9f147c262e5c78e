"""The auxiliary classification heads tuned on top of the encoder: softmax, ArcFace and sub-cluster
AdaCos (SCAdaCos), each with an optional projection whose output is the embedding used downstream.
Part of the model (asd/model/model.py re-exports them); here so that asd/model/model.py stays the encoder."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


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


def fixed_scale(num_classes: int, sub_clusters: int) -> float:
    """SCAdaCos's initial (SCALE fixed: constant) scale sqrt(2) ln(N - 1), N = classes x sub-clusters."""
    return math.sqrt(2) * math.log(max(2, num_classes * sub_clusters - 1))


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
        initial = fixed_scale(num_classes, sub_clusters)
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
