"""model.py: HF checkpoint loading (strict), positions, attention, LoRA, heads, embedding, tuned files."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

import model as M
from dataset import LabelIndex
from eat_checkpoint_support import TINY_HF_CONFIG, write_eat_checkpoint


def _fbank(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, 128, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_encoder() -> M.EATEncoder:
    return M.build_encoder(None, "tiny").eval()


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
                expected = [math.sin(f * omega), math.cos(f * omega), math.sin(t * omega), math.cos(t * omega)]
                got = [row[i], row[quarter + i], row[2 * quarter + i], row[3 * quarter + i]]
                assert torch.allclose(torch.tensor(got), torch.tensor(expected, dtype=torch.float32), atol=1e-6)


def test_random_encoder_warns_and_uses_formula_table(capsys, tiny_encoder):
    encoder = M.build_encoder(None, "tiny")
    assert "RANDOMLY INITIALISED" in capsys.readouterr().out
    cfg = encoder.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (192, 4, 3)
    table = M.sincos_position_table(cfg.embed_dim, cfg.max_length, cfg.freq_patches)
    assert torch.equal(encoder.fixed_positional_encoder.positions.data, table)
    assert not encoder.fixed_positional_encoder.positions.requires_grad
    # the same seed rebuilds the same weights, another seed does not
    assert encoder.source["checksum"] == tiny_encoder.source["checksum"]
    assert M.build_encoder(None, "tiny", init_seed=1).source["checksum"] != encoder.source["checksum"]


def test_presets_and_bad_size():
    assert M.EATConfig.preset("base").embed_dim == 768
    large = M.EATConfig.preset("large")
    assert (large.embed_dim, large.depth, large.num_heads) == (1024, 24, 16)
    with pytest.raises(ValueError, match="unknown model size"):
        M.EATConfig.preset("huge")


# ----------------------------------------------------------------------------- checkpoint loading

@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_hf_checkpoint_loads_key_for_key(tmp_path, weights, capsys):
    written = write_eat_checkpoint(tmp_path / "eat", weights=weights)
    encoder = M.build_encoder(tmp_path / "eat")
    assert "loaded EAT encoder" in capsys.readouterr().out
    state = encoder.state_dict()
    assert set(state) == {k[len("model."):] for k in written}
    for key, value in written.items():
        assert torch.equal(state[key[len("model."):]], value), key
    assert encoder.config.embed_dim == TINY_HF_CONFIG["embed_dim"] and not hasattr(encoder, "head")
    assert encoder.source["checkpoint"] == str((tmp_path / "eat").resolve())


def test_finetune_checkpoint_loads_fc_norm_and_head(tmp_path):
    written = write_eat_checkpoint(tmp_path / "eat", variant="finetune")
    assert "model.head.weight" in written and "model.fc_norm.weight" in written
    encoder = M.build_encoder(tmp_path / "eat")
    assert torch.equal(encoder.head.weight, written["model.head.weight"])
    assert encoder.head.weight.shape == (TINY_HF_CONFIG["num_classes"], TINY_HF_CONFIG["embed_dim"])
    assert torch.equal(encoder.fc_norm.bias, written["model.fc_norm.bias"])


def _rewrite(folder, change):
    from safetensors.torch import load_file, save_file
    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))


@pytest.mark.parametrize("problem, expected", [
    ("missing", r"missing keys \(1\):\s+blocks\.1\.mlp\.fc2\.bias"),
    ("extra", r"unexpected keys \(1\):\s+decoder\.weight"),
    ("shape", r"mis-shaped keys \(1\):\s+blocks\.0\.attn\.qkv\.weight: file \(192, 32\) vs model \(192, 64\)"),
    ("broken", r"cannot read EAT weights from .*model\.safetensors"),
    ("no_prefix", r"without the Hugging Face 'model\.' prefix"),
    ("config", r"config\.json is not valid JSON"),
    ("no_weights", r"has none of model\.safetensors, pytorch_model\.bin"),
])
def test_corrupted_checkpoint_fails_clearly(tmp_path, problem, expected):
    folder = tmp_path / "eat"
    write_eat_checkpoint(folder)
    weights = folder / "model.safetensors"
    if problem == "missing":
        _rewrite(folder, lambda s: s.pop("model.blocks.1.mlp.fc2.bias"))
    elif problem == "extra":
        _rewrite(folder, lambda s: s.update({"model.decoder.weight": torch.zeros(3)}))
    elif problem == "shape":
        _rewrite(folder, lambda s: s.update({"model.blocks.0.attn.qkv.weight": torch.zeros(192, 32)}))
    elif problem == "broken":
        weights.write_bytes(weights.read_bytes()[:200])
    elif problem == "no_prefix":
        _rewrite(folder, lambda s: s.update({k[6:]: s.pop(k) for k in list(s)}))
    elif problem == "config":
        (folder / "config.json").write_text("{not json")
    elif problem == "no_weights":
        weights.unlink()
    with pytest.raises((ValueError, FileNotFoundError), match=expected) as info:
        M.build_encoder(folder)
    if problem in ("missing", "extra", "shape"):
        message = str(info.value)
        assert str(weights) in message
        assert "missing keys" in message and "unexpected keys" in message and "mis-shaped keys" in message


def test_missing_checkpoint_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        M.build_encoder(tmp_path / "nowhere")


def test_fairseq_checkpoint_maps_onto_hf_names(tmp_path):
    hf = write_eat_checkpoint(tmp_path / "eat")
    plain = {k[len("model."):]: v for k, v in hf.items()}
    fairseq = {}
    for key, value in plain.items():
        if key == "pre_norm.weight" or key == "pre_norm.bias":
            key = "modality_encoders.IMAGE.context_encoder.norm." + key.split(".")[-1]
        elif not key.startswith("blocks."):
            key = "modality_encoders.IMAGE." + key
        fairseq[key] = value
    fairseq["_ema"] = {"x": torch.zeros(1)}
    fairseq["modality_encoders.IMAGE.decoder.proj.weight"] = torch.zeros(2, 2)
    fairseq["decoder.blocks.0.weight"] = torch.zeros(2)
    torch.save({"model": fairseq, "cfg": {"model": {"num_heads": 2}}}, tmp_path / "eat.pt")
    encoder = M.build_encoder(tmp_path / "eat.pt")
    assert encoder.config.num_heads == 2 and encoder.config.depth == 2
    for key, value in plain.items():
        assert torch.equal(encoder.state_dict()[key], value), key


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
    encoder = M.build_encoder(None, "tiny").eval()
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
    wrapped = M.add_lora(M.build_encoder(None, "tiny"), rank=2, alpha=4, dropout=0.1, unfreeze_last_norms=1)
    norms = sorted(n for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" not in n)
    assert norms == sorted(f"base_model.model.blocks.3.norm{i}.{w}" for i in (1, 2) for w in ("weight", "bias"))


# ----------------------------------------------------------------------------- heads

def test_heads():
    emb, labels = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    arc = M.ArcFaceHead(16, 3, scale=10.0, margin=0.3)
    plain, margined = arc(emb), arc(emb, labels)
    cosine = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(arc.weight).T
    assert torch.allclose(plain, 10 * cosine, atol=1e-5)
    target = torch.arange(4), labels
    assert torch.all(margined[target] < plain[target])
    others = torch.ones_like(plain, dtype=torch.bool)
    others[target] = False
    assert torch.equal(margined[others], plain[others])
    linear = M.make_head("linear", 16, 3)
    assert torch.equal(linear(emb, labels), linear(emb))
    with pytest.raises(ValueError, match="unknown head"):
        M.make_head("svm", 16, 3)


# ----------------------------------------------------------------------------- embedding clips

def test_embed_fbanks_crop_and_windows(tiny_encoder):
    model = M.ASDModel(tiny_encoder, M.LinearHead(192, 2))
    short, long = _fbank(100, 1), _fbank(700, 2)  # 700 frames -> 3 windows of 256
    crop = M.embed_fbanks(model, [short, long], 256, "crop", amp=False)
    windows = M.embed_fbanks(model, [short, long], 256, "windows", amp=False)
    assert crop.shape == windows.shape == (2, 192) and crop.dtype == torch.float32
    assert torch.allclose(crop[0], windows[0], atol=1e-5)  # short clip: one padded window
    starts = [0, 222, 444]
    with torch.no_grad():
        each = model.embed(torch.stack([long[s:s + 256] for s in starts]).unsqueeze(1))
        first = model.embed(long[None, None, :256])
    assert torch.allclose(windows[1], each.mean(0), atol=1e-5)
    assert torch.allclose(crop[1], first[0], atol=1e-5)
    assert not torch.allclose(crop[1], windows[1], atol=1e-3)
    # full length: clips of different lengths, grouped by length, match one-at-a-time embedding
    full = M.embed_fbanks(model, [short, long, _fbank(100, 3)], None, amp=False, batch_size=2)
    with torch.no_grad():
        alone = model.embed(long[None, None])
    assert torch.allclose(full[1], alone[0], atol=1e-5)
    mean_pool = M.ASDModel(tiny_encoder, M.LinearHead(192, 2), pooling="mean")
    assert not torch.allclose(M.embed_fbanks(mean_pool, [short], 256, amp=False), crop[:1])


# ----------------------------------------------------------------------------- tuned files

def _tuned(encoder: M.EATEncoder, head: str = "arcface") -> M.ASDModel:
    wrapped = M.add_lora(encoder, rank=4, alpha=8, dropout=0.0, unfreeze_last_norms=1)
    model = M.ASDModel(wrapped, M.make_head(head, encoder.embed_dim, 3))
    with torch.no_grad():  # pretend training moved the adapters
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("backbone", ["random", "hf"])
def test_save_and_load_tuned_gives_identical_embeddings(tmp_path, backbone):
    checkpoint = None
    if backbone == "hf":
        checkpoint = tmp_path / "eat"
        write_eat_checkpoint(checkpoint)
    encoder = M.build_encoder(checkpoint, "tiny", init_seed=7)
    model = _tuned(encoder, "arcface" if backbone == "random" else "linear")
    labels = LabelIndex(["fan/section_00/a", "fan/section_00/b", "pump/section_01/noAttribute"])
    path = tmp_path / "best_encoder_model.pth"
    M.save_tuned(path, model, labels, {"epochs": 2, "target_frames": 256}, checkpoint)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    fbanks = [_fbank(300, 5), _fbank(120, 6)]
    expected = M.embed_fbanks(model, fbanks, 256, amp=False)
    loaded, loaded_labels, settings = M.load_tuned(path)
    assert loaded_labels == labels and settings["epochs"] == 2 and not loaded.training
    assert torch.equal(M.embed_fbanks(loaded, fbanks, 256, amp=False), expected)
    with torch.no_grad():
        x = fbanks[0][None, None, :256]
        assert torch.equal(loaded(x), model(x))
    size = path.stat().st_size
    frozen_bytes = 4 * sum(p.numel() for p in encoder.parameters() if not p.requires_grad)
    assert size < frozen_bytes / 4  # the frozen backbone is not copied into the file


def test_load_tuned_checks_the_backbone(tmp_path):
    checkpoint = tmp_path / "eat"
    write_eat_checkpoint(checkpoint)
    model = _tuned(M.build_encoder(checkpoint), "linear")
    path = tmp_path / "tuned.pth"
    M.save_tuned(path, model, LabelIndex(["a", "b", "c"]), {}, checkpoint)
    fingerprint = M.checkpoint_fingerprint(path)
    assert fingerprint == M.checkpoint_fingerprint(path)
    with pytest.raises(ValueError, match="not the checkpoint"):
        M.save_tuned(tmp_path / "other.pth", model, LabelIndex(["a"]), {}, None)
    # the backbone changes underneath the tuned file -> refused
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "num_classes": 11}))
    with pytest.raises(ValueError, match="different EAT checkpoint"):
        M.load_tuned(path)
    # moved -> named, and an override path works
    moved = tmp_path / "moved"
    (checkpoint / "config.json").write_text(json.dumps(config))
    os.rename(checkpoint, moved)
    with pytest.raises(FileNotFoundError, match="not there any more"):
        M.load_tuned(path)
    loaded, _, _ = M.load_tuned(path, backbone_checkpoint=moved)
    assert isinstance(loaded, M.ASDModel)
    # re-saving changes the fingerprint
    M.save_tuned(path, _tuned(M.build_encoder(moved), "linear"), LabelIndex(["a", "b", "c"]), {}, moved)
    assert M.checkpoint_fingerprint(path) != fingerprint


def test_load_tuned_rejects_other_files(tmp_path):
    bogus = tmp_path / "bogus.pth"
    torch.save({"hello": 1}, bogus)
    with pytest.raises(ValueError, match="not a tuned EAT-LoRA model"):
        M.load_tuned(bogus)
    with pytest.raises(FileNotFoundError, match="run train.py"):
        M.load_tuned(tmp_path / "absent.pth")
