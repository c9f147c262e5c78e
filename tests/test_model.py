"""asd/model/model.py: the random encoder, positions, attention, LoRA, heads, embedding."""

from __future__ import annotations

import math

import pytest
import torch

import asd.model.pretrained as P
from asd.embed.embed import embed_fbanks
from asd.model import heads
from asd.model import model as M


def _fbank(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, 128, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_encoder() -> M.EATEncoder:
    return P.build_encoder(None, "tiny").eval()


# ----------------------------------------------------------------------------- positions


def test_position_table_matches_formula():
    D, T, Fp = 16, 5, 8
    table = M.sincos_position_table(D, T, Fp)
    assert table.shape == (1, T * Fp, D)
    quarter = D // 4
    for t in range(T):
        for f in range(Fp):
            row = table[0, t * Fp + f]
            for i in range(quarter):
                omega = 1.0 / 10000 ** (i / quarter)
                expected = [
                    math.sin(f * omega),
                    math.cos(f * omega),
                    math.sin(t * omega),
                    math.cos(t * omega),
                ]
                got = [row[i], row[quarter + i], row[2 * quarter + i], row[3 * quarter + i]]
                assert torch.allclose(
                    torch.tensor(got), torch.tensor(expected, dtype=torch.float32), atol=1e-6
                )


def test_random_encoder_warns_and_uses_formula_table(capsys, tiny_encoder):
    encoder = P.build_encoder(None, "tiny")
    assert "RANDOMLY INITIALISED" in capsys.readouterr().out
    cfg = encoder.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (192, 4, 3)
    table = M.sincos_position_table(cfg.embed_dim, cfg.max_length, cfg.freq_patches)
    assert torch.equal(encoder.fixed_positional_encoder.positions.data, table)
    assert not encoder.fixed_positional_encoder.positions.requires_grad
    # the same seed rebuilds the same weights, another seed does not
    assert encoder.source["checksum"] == tiny_encoder.source["checksum"]
    assert P.build_encoder(None, "tiny", init_seed=1).source["checksum"] != encoder.source["checksum"]


def test_presets_and_bad_size():
    assert M.EATConfig.preset("base").embed_dim == 768
    large = M.EATConfig.preset("large")
    assert (large.embed_dim, large.depth, large.num_heads) == (1024, 24, 16)
    with pytest.raises(ValueError, match="unknown model size"):
        M.EATConfig.preset("huge")


# ----------------------------------------------------------------------------- forward


def test_sdpa_equals_explicit_attention(tiny_encoder):
    x = torch.randn(2, 1, 256, 128)
    with torch.no_grad():
        fast, slow = tiny_encoder(x), tiny_encoder(x, explicit_attention=True)
    assert fast.shape == (2, 1 + 16 * 8, 192)
    assert torch.allclose(fast, slow, atol=1e-5, rtol=0)
    attn = tiny_encoder.blocks[0].attn
    tokens = 3 * torch.randn(2, 33, 192)
    with torch.no_grad():
        assert torch.allclose(attn(tokens), attn(tokens, explicit=True), atol=1e-5, rtol=0)


def test_variable_length_inputs():
    encoder = M.EATEncoder(M.EATConfig(embed_dim=32, depth=1, num_heads=2, max_length=12)).eval()
    with torch.no_grad():
        for frames in (16, 100, 160, 12 * 16):
            tokens = encoder(torch.randn(2, 1, frames, 128))
            assert tokens.shape == (2, 1 + (frames // 16) * 8, 32)
    with pytest.raises(ValueError, match="time patches"):
        encoder(torch.randn(1, 1, 13 * 16, 128))
    with pytest.raises(ValueError, match="time patches"):
        encoder(torch.randn(1, 1, 15, 128))
    with pytest.raises(ValueError, match=r"\[B, 1, T, 128\]"):
        encoder(torch.randn(1, 1, 128, 80))


def test_positions_are_the_first_rows_of_the_stored_table(tiny_encoder):
    # a clip's first patches see the same positions whatever the clip length: with attention
    # removed from the picture, the block input of the first tokens is identical
    short, long = torch.randn(1, 1, 64, 128), torch.randn(1, 1, 256, 128)
    long[:, :, :64] = short
    with torch.no_grad():
        a, b = tiny_encoder.patch_tokens(short), tiny_encoder.patch_tokens(long)
    assert torch.allclose(a, b[:, : a.shape[1]], atol=1e-6)


# ----------------------------------------------------------------------------- LoRA


def test_lora_wraps_exactly_attention_qkv_and_proj(tiny_encoder, capsys):
    from peft.tuners.lora import LoraLayer

    encoder = P.build_encoder(None, "tiny").eval()
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        before = encoder(x)
    wrapped = M.add_lora(encoder, rank=4, alpha=8, dropout=0.0).eval()
    lora_layers = sorted(name for name, module in wrapped.named_modules() if isinstance(module, LoraLayer))
    depth = encoder.config.depth
    assert len(lora_layers) == 2 * depth
    assert all(name.endswith(("attn.qkv", "attn.proj")) for name in lora_layers)
    assert not isinstance(M.base_encoder(wrapped).local_encoder.proj, LoraLayer)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        assert torch.equal(wrapped(x), before)  # lora_B starts at zero


def test_lora_unfreezes_last_norms():
    wrapped = M.add_lora(P.build_encoder(None, "tiny"), rank=2, alpha=4, dropout=0.1, unfreeze_last_norms=1)
    norms = sorted(n for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" not in n)
    assert norms == sorted(
        f"base_model.model.blocks.3.norm{i}.{w}" for i in (1, 2) for w in ("weight", "bias")
    )


# ----------------------------------------------------------------------------- heads


def test_heads():
    emb, labels = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    arc = heads.ArcFaceHead(16, 3, scale=10.0, margin=0.3)
    plain, margined = arc(emb), arc(emb, labels)
    cosine = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(arc.weight).T
    assert torch.allclose(plain, 10 * cosine, atol=1e-5)
    target = torch.arange(4), labels
    assert torch.all(margined[target] < plain[target])
    others = torch.ones_like(plain, dtype=torch.bool)
    others[target] = False
    assert torch.equal(margined[others], plain[others])
    linear = heads.make_head("linear", 16, 3)
    assert torch.equal(linear(emb, labels), linear(emb))
    with pytest.raises(ValueError, match="unknown head"):
        heads.make_head("svm", 16, 3)


# ----------------------------------------------------------------------------- embedding clips


def test_embed_fbanks_crop_and_windows(tiny_encoder):
    model = M.ASDModel(tiny_encoder, heads.LinearHead(192, 2))
    short, long = _fbank(100, 1), _fbank(700, 2)  # 700 frames -> 3 windows of 256
    crop = embed_fbanks(model, [short, long], 256, "crop", amp=False)
    windows = embed_fbanks(model, [short, long], 256, "windows", amp=False)
    assert crop.shape == windows.shape == (2, 192) and crop.dtype == torch.float32
    assert torch.allclose(crop[0], windows[0], atol=1e-5)  # short clip: one padded window
    starts = [0, 222, 444]
    with torch.no_grad():
        each = model.embed(torch.stack([long[s : s + 256] for s in starts]).unsqueeze(1))
        first = model.embed(long[None, None, :256])
    assert torch.allclose(windows[1], each.mean(0), atol=1e-5)
    assert torch.allclose(crop[1], first[0], atol=1e-5)
    assert not torch.allclose(crop[1], windows[1], atol=1e-3)
    # full length: clips of different lengths, grouped by length, match one-at-a-time embedding
    full = embed_fbanks(model, [short, long, _fbank(100, 3)], None, amp=False, batch_size=2)
    with torch.no_grad():
        alone = model.embed(long[None, None])
    assert torch.allclose(full[1], alone[0], atol=1e-5)
    mean_pool = M.ASDModel(tiny_encoder, heads.LinearHead(192, 2), pooling="mean")
    assert not torch.allclose(embed_fbanks(mean_pool, [short], 256, amp=False), crop[:1])
