"""asd/model/model.py heads: sub-cluster AdaCos, the projection, head settings round trips, LoRA targets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import asd.model.pretrained as P
from asd.embed.embed import embed_fbanks
from asd.model import heads
from asd.model import model as M


def _clusters(num_classes: int = 4, per_class: int = 32, dim: int = 16, seed: int = 0):
    """Separable synthetic embeddings: each class two tight blobs around its own random directions."""
    g = torch.Generator().manual_seed(seed)
    modes = torch.randn(num_classes, 2, dim, generator=g) * 3
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    which = torch.randint(0, 2, (len(labels),), generator=g)
    return modes[labels, which] + 0.3 * torch.randn(len(labels), dim, generator=g), labels


def test_scadacos_learns_separable_embeddings():
    emb, labels = _clusters()
    head = heads.SCAdaCosHead(16, 4, sub_clusters=3)
    assert float(head.scale) == pytest.approx(math.sqrt(2) * math.log(4 * 3 - 1))
    start_centres, start_scale = head.centres.detach().clone(), float(head.scale)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    head.train()
    losses, accuracies = [], []
    for _ in range(60):
        loss = head.loss(emb, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        accuracies.append((head(emb).argmax(1) == labels).float().mean().item())
    assert losses[-1] < 0.5 * losses[0]
    assert accuracies[-1] == 1.0 and accuracies[-1] > accuracies[0]
    assert not torch.allclose(head.centres, start_centres)  # trainable centres moved
    assert float(head.scale) != start_scale  # the adaptive scale followed the batches
    frozen = heads.SCAdaCosHead(16, 4, sub_clusters=3, train_centres=False)
    assert not frozen.centres.requires_grad and torch.equal(frozen.centres, start_centres)  # seeded start


def test_scadacos_formula():
    torch.manual_seed(1)
    head = heads.SCAdaCosHead(8, 3, sub_clusters=2, scale=5.0)
    emb, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    cosine = F.normalize(emb) @ F.normalize(head.centres).T  # [6, 3 * 2], row j * 2 + k
    p = torch.softmax(5.0 * cosine, dim=1)
    class_p = p[:, 0::2] + p[:, 1::2]
    assert torch.allclose(head(emb).exp(), class_p, atol=1e-5)
    assert torch.allclose(head(emb).exp().sum(1), torch.ones(6), atol=1e-5)
    head.eval()  # no scale update: the loss is the cross-entropy on the class probabilities
    assert head.loss(emb, labels).item() == pytest.approx(F.nll_loss(class_p.log(), labels).item(), rel=1e-5)
    # mixup: loss on mixed targets = lam * CE(labels) + (1 - lam) * CE(mixed labels)
    mixed = labels.roll(1)
    expected = 0.3 * F.nll_loss(class_p.log(), labels) + 0.7 * F.nll_loss(class_p.log(), mixed)
    assert head.loss(emb, labels, mixed, 0.3).item() == pytest.approx(expected.item(), rel=1e-5)
    assert float(head.scale) == 5.0
    # the AdaCos update, written out: non-target sum and median target angle (both mixed classes are targets)
    head.train()
    head.loss(emb, labels, mixed, 0.3)
    target = torch.zeros(6, 3, dtype=torch.bool)
    target[torch.arange(6), labels] = target[torch.arange(6), mixed] = True
    target = target.repeat_interleave(2, dim=1)
    b_avg = torch.where(target, 0.0, torch.exp(5.0 * cosine)).sum(1).mean()
    theta_med = torch.acos(cosine[target]).median()
    assert float(head.scale) == pytest.approx(
        (b_avg.log() / torch.cos(theta_med.clamp(max=math.pi / 4))).item(), rel=1e-4
    )


@pytest.mark.parametrize("kind", ["linear", "arcface", "scadacos"])
def test_head_settings_rebuild_the_head(kind):
    head = heads.make_head(kind, 32, 5, projection_dim=8, sub_clusters=4)
    if kind == "scadacos":
        head.scale.fill_(7.25)
    settings = heads.head_settings(head)
    rebuilt = heads.head_from_settings(settings, 32)
    assert type(rebuilt) is type(head) and heads.head_settings(rebuilt) == settings
    assert rebuilt.projection.weight.shape == (8, 32) and rebuilt.dim == 8
    if kind == "scadacos":
        assert float(rebuilt.scale) == 7.25 and rebuilt.centres.shape == (5 * 4, 8)
    old_file_settings = {
        "kind": "arcface",
        "num_classes": 3,
        "scale": 30.0,
        "margin": 0.5,
    }  # before projections
    assert isinstance(heads.head_from_settings(old_file_settings, 32).projection, torch.nn.Identity)


def test_scadacos_fixed_scale_and_xavier_centres_survive_a_reload():
    head = heads.make_head("scadacos", 32, 5, sub_clusters=4, dynamic=False, centre_init="xavier")
    rebuilt = heads.head_from_settings(heads.head_settings(head), 32)
    assert not rebuilt.dynamic and torch.equal(rebuilt.centres, head.centres)  # frozen centres rebuild alike
    bound = math.sqrt(6 / (32 + 5 * 4))  # xavier uniform over the (D, N * C) layout
    assert head.centres.abs().max() <= bound and head.centres.abs().max() > 0.9 * bound
    rebuilt.train()
    before = float(rebuilt.scale)
    rebuilt.target_loss(torch.randn(6, 32), torch.eye(5)[torch.tensor([0, 1, 2, 3, 4, 0])])
    assert float(rebuilt.scale) == before
    older = {"kind": "scadacos", "num_classes": 5, "sub_clusters": 4, "scale": 3.0, "train_centres": True}
    assert heads.head_from_settings(older, 32).dynamic  # files saved before the setting: adaptive, as trained


def test_projection_gives_the_downstream_embedding(tmp_path):
    encoder = P.build_encoder(None, "tiny")
    model = M.ASDModel(
        M.add_lora(encoder, 2, 4, 0.0, targets="qkv"), heads.make_head("scadacos", 192, 3, projection_dim=24)
    ).eval()
    assert model.embed_dim == 24
    fbank = torch.randn(130, 128)
    with torch.no_grad():
        tokens = encoder(fbank[None, None, :128])
        expected = model.head.projection(tokens[:, 0])
        assert torch.allclose(model.embed(fbank[None, None, :128]), expected, atol=1e-6)
    embedded = embed_fbanks(model, [fbank, fbank[:64]], 128, amp=False)
    assert embedded.shape == (2, 24) and torch.allclose(embedded[0], expected[0], atol=1e-5)


@pytest.mark.parametrize(
    "targets, suffixes",
    [("qkv", ("attn.qkv",)), ("proj", ("attn.proj",)), (["qkv", "fc2"], ("attn.qkv", "mlp.fc2"))],
)
def test_lora_targets(targets, suffixes):
    from peft.tuners.lora import LoraLayer

    wrapped = M.add_lora(P.build_encoder(None, "tiny"), rank=2, alpha=4, dropout=0.0, targets=targets)
    layers = [name for name, module in wrapped.named_modules() if isinstance(module, LoraLayer)]
    depth = M.base_encoder(wrapped).config.depth
    assert len(layers) == len(suffixes) * depth and all(name.endswith(suffixes) for name in layers)
    assert not isinstance(M.base_encoder(wrapped).local_encoder.proj, LoraLayer)
    assert wrapped.asd_lora_settings["targets"] == [s.split(".")[1] for s in suffixes]
    with pytest.raises(ValueError, match="LoRA targets must be some of"):
        M.add_lora(P.build_encoder(None, "tiny"), rank=2, alpha=4, dropout=0.0, targets="qkv,local_encoder")
