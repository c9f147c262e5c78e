"""The DCASE baseline's autoencoder network and its training, covariance and scoring passes (the back end
that uses them: asd/backends/baseline_ae.py; formulas: tests/fixtures/baseline_fixture/README.md).

Training runs a hand-written backward pass (``train_step``): the same operations autograd records for
``AENet`` (addmm, native batch norm, ReLU, MSE), called directly, with every parameter and gradient a view of
one flat tensor so that one fused Adam call updates them all. Its gradients, losses, batch-norm statistics
and weights equal autograd's with fused Adam (tests/test_baseline_ae.py); with autograd and torch's default
Adam an epoch took 1.75 times as long on 2 CPU cores (docs/benchmarks.md), where this small network's
per-operation overhead is as large as its matrix products.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

CODE_DIM = 8
HIDDEN = 128


def _block(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out, momentum=0.01, eps=1e-3), nn.ReLU()]


class AENet(nn.Module):
    """The baseline's dense autoencoder; its state-dict names are the baseline's."""

    def __init__(self, input_dim: int, block_size: int):
        super().__init__()
        self.input_dim = input_dim
        widths = [input_dim, HIDDEN, HIDDEN, HIDDEN, HIDDEN, CODE_DIM]
        self.encoder = nn.Sequential(*[m for a, b in zip(widths, widths[1:]) for m in _block(a, b)])
        back = widths[::-1]
        decoder = [m for a, b in zip(back[:-2], back[1:-1]) for m in _block(a, b)]
        self.decoder = nn.Sequential(*decoder, nn.Linear(HIDDEN, input_dim))
        self.register_buffer("cov_source", torch.zeros(block_size, block_size))
        self.register_buffer("cov_target", torch.zeros(block_size, block_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x.view(-1, self.input_dim))
        return self.decoder(z), z

    def layers(self) -> list[tuple[nn.Linear, nn.BatchNorm1d | None]]:
        """(Linear, its BatchNorm1d followed by ReLU, or None for the bare output layer), input to output."""
        modules = [*self.encoder, *self.decoder]
        pairs = []
        for i, module in enumerate(modules):
            if isinstance(module, nn.Linear):
                following = modules[i + 1] if i + 1 < len(modules) else None
                pairs.append((module, following if isinstance(following, nn.BatchNorm1d) else None))
        return pairs


def _batches(order: torch.Tensor, batch_size: int):
    """Runs of ``batch_size`` indices; a batch of one vector is skipped, as in the baseline."""
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        if len(batch) > 1:
            yield batch


@contextmanager
def flat_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Every parameter of ``model`` (and its ``.grad``) as a view of one flat tensor, yielded as one
    Parameter whose ``.grad`` is the flat gradient; afterwards each parameter owns its storage again."""
    params = list(model.parameters())
    flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        p.data = flat.data[offset : offset + p.numel()].view_as(p)
        p.grad = flat.grad[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    try:
        yield flat
    finally:
        for p in params:
            p.data, p.grad = p.data.clone(), None


@torch.no_grad()
def train_step(model: AENet, x: torch.Tensor) -> torch.Tensor:
    """One training-mode forward and backward pass of the mean squared error on batch ``x``: writes every
    parameter's ``.grad`` in place (the views of ``flat_parameters``), updates the batch-norm running
    statistics as BatchNorm1d does, and returns the loss."""
    layers, saved = model.layers(), []
    h = x
    for linear, norm in layers:
        z = torch.addmm(linear.bias, h, linear.weight.t())
        if norm is None:
            saved.append((h, z, None))
            h = z
            continue
        y, mean, invstd = torch.native_batch_norm(
            z, norm.weight, norm.bias, norm.running_mean, norm.running_var, True, norm.momentum, norm.eps
        )
        norm.num_batches_tracked.add_(1)
        y.relu_()
        saved.append((h, z, (y, mean, invstd)))
        h = y
    diff = h.sub_(x)
    loss = diff.pow(2).mean()
    grad = diff.mul_(2.0 / diff.numel())
    for (linear, norm), (h_in, z, norm_saved) in zip(reversed(layers), reversed(saved)):
        if norm is not None:
            y, mean, invstd = norm_saved
            grad = torch.ops.aten.threshold_backward(grad, y, 0)
            grad, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                grad, z, norm.weight, norm.running_mean, norm.running_var, mean, invstd, True, norm.eps,
                [True, True, True],
            )  # fmt: skip
            norm.weight.grad.copy_(grad_weight)
            norm.bias.grad.copy_(grad_bias)
        torch.mm(grad.t(), h_in, out=linear.weight.grad)
        torch.sum(grad, 0, out=linear.bias.grad)
        if h_in is not x:
            grad = grad @ linear.weight
    return loss


def train_network(
    model: AENet,
    train: torch.Tensor,
    valid: torch.Tensor,
    settings: Mapping[str, Any],
    generator: torch.Generator,
    desc: str = "baseline AE",
) -> list[tuple[float, float]]:
    """The baseline's training loop (Adam, shuffled batches, MSE); returns (train loss, validation loss)
    per epoch (the validation loss is NaN without validation vectors)."""
    from tqdm import tqdm

    history = []
    with flat_parameters(model) as flat:
        optimizer = torch.optim.Adam([flat], lr=settings["learning_rate"], fused=True)
        epochs = tqdm(range(settings["epochs"]), desc=desc, unit="epoch", leave=False, file=sys.stderr)
        for _ in epochs:
            model.train()
            total, steps = 0.0, 0
            order = torch.randperm(len(train), generator=generator).to(train.device)
            for batch in _batches(order, settings["batch_size"]):
                total, steps = total + train_step(model, train[batch]), steps + 1
                optimizer.step()
            history.append(
                (float(total) / max(steps, 1), validation_loss(model, valid, settings["batch_size"]))
            )
            epochs.set_postfix(loss=f"{history[-1][0]:.4g}", val_loss=f"{history[-1][1]:.4g}")
    return history


@torch.no_grad()
def validation_loss(model: AENet, valid: torch.Tensor, batch_size: int) -> float:
    """Mean over the validation batches of their mean squared error (eval mode)."""
    model.eval()
    losses = [
        torch.mean((model(valid[i : i + batch_size])[0] - valid[i : i + batch_size]) ** 2)
        for i in range(0, len(valid), batch_size)
    ]
    return float(torch.stack(losses).mean()) if losses else float("nan")


@torch.no_grad()
def covariance_pass(
    model: AENet, vectors: torch.Tensor, is_target: torch.Tensor, order: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cov_source, cov_target) of the residual blocks, batch by batch in ``order`` (the baseline's
    covariance epoch): each batch's blocks of one domain centred on their own mean, ``diff^T diff`` summed,
    divided by that domain's vector count - 1; a domain without vectors takes the other's."""
    model.eval()
    block = model.cov_source.shape[0]
    sums = {False: torch.zeros(block, block, device=vectors.device), True: torch.zeros_like(model.cov_source)}
    counts = {False: 0, True: 0}
    for batch in _batches(order.to(vectors.device), batch_size):
        x = vectors[batch]
        diff = x - model(x)[0]
        for domain in (False, True):
            rows = is_target[batch] == domain
            if rows.any():
                blocks = diff[rows].reshape(-1, block)
                centred = blocks - blocks.mean(dim=0)
                sums[domain] += centred.T @ centred
                counts[domain] += int(rows.sum())
    if counts[False] + counts[True] == 0:
        raise ValueError("the covariance pass needs at least one batch of two training vectors")
    covs = {d: sums[d] / (counts[d] - 1) if counts[d] else None for d in (False, True)}
    source = covs[False] if covs[False] is not None else covs[True]
    target = covs[True] if covs[True] is not None else source
    return source, target


@torch.no_grad()
def clip_scores(model: AENet, vectors: torch.Tensor, inverses: Sequence[torch.Tensor]) -> dict[str, float]:
    """One clip's scores: MSE, MAHALA_source, MAHALA_target and MAHALA (their minimum)."""
    model.eval()
    diff = vectors - model(vectors)[0]
    mean_block = diff.reshape(-1, inverses[0].shape[0]).mean(dim=0).to(inverses[0].dtype)
    mahala = [float(mean_block @ inverse @ mean_block) for inverse in inverses]
    return {
        "MSE": float(torch.mean(diff**2)),
        "MAHALA_source": mahala[0],
        "MAHALA_target": mahala[1],
        "MAHALA": min(mahala),
    }
