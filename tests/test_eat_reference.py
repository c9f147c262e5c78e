"""The official EAT code's outputs (tests/fixtures/eat_reference_fixture) reproduced through the project's own
loader, from both checkpoint layouts: the Hugging Face folder and a fairseq .pt in the released layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import asd.model.pretrained as P
from asd.model import model as M

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "eat_reference_fixture"


@pytest.fixture(scope="module")
def fixture_dir() -> Path:
    """The fixture folder, its files checked against the SHA-256 cases.json lists."""
    if not (FIXTURE / "cases.json").is_file():
        pytest.fail(
            f"EAT reference fixture not found at {FIXTURE}: restore tests/fixtures/eat_reference_fixture"
        )
    for name, entry in json.loads((FIXTURE / "cases.json").read_text())["files"].items():
        assert hashlib.sha256((FIXTURE / name).read_bytes()).hexdigest() == entry["sha256"], name
    return FIXTURE


@pytest.fixture(scope="module")
def cases(fixture_dir) -> dict:
    return json.loads((fixture_dir / "cases.json").read_text())


@pytest.fixture(scope="module")
def arrays(fixture_dir):
    return np.load(fixture_dir / "cases.npz")


def _fairseq_file(fixture_dir: Path, folder: Path, cases: dict) -> Path:
    """A .pt in the released fairseq layout: checkpoint["model"] = fairseq_keys.npz (the official state dict,
    with the EMA teacher and a decoder the loader must drop), checkpoint["cfg"] an omegaconf DictConfig."""
    from omegaconf import OmegaConf  # fairseq pickles its config as omegaconf objects

    config = cases["config"]
    weights = {k: torch.from_numpy(v.copy()) for k, v in np.load(fixture_dir / "fairseq_keys.npz").items()}
    weights["_ema"] = {"blocks.0.attn.qkv.weight": torch.zeros(2)}
    weights["modality_encoders.IMAGE.decoder.proj.weight"] = torch.zeros(2, 2)
    cfg = OmegaConf.create(
        {
            "common": {"seed": 1},
            "task": {"_name": "mae_image_pretraining"},
            "model": {
                "_name": "data2vec_multi",
                "embed_dim": config["embed_dim"],
                "depth": config["depth"],
                "num_heads": config["num_heads"],
                "layer_norm_first": False,
                "modalities": {"image": {"in_chans": 1, "patch_size": 16}},
            },
        }
    )
    path = folder / "EAT-tiny_reference.pt"
    torch.save({"cfg": cfg, "model": weights, "optimizer_history": []}, path)
    return path


@pytest.fixture(scope="module", params=["hf_folder", "fairseq_pt"])
def encoder(request, fixture_dir, cases, tmp_path_factory) -> M.EATEncoder:
    if request.param == "hf_folder":
        spec = fixture_dir  # config.json + model.safetensors
    else:
        spec = _fairseq_file(fixture_dir, tmp_path_factory.mktemp("fairseq"), cases)
    encoder = P.build_encoder(spec, verbose=False)
    assert encoder.config.depth == cases["config"]["depth"]
    return encoder.eval()


def _cases_with(cases: dict, output: str) -> list[str]:
    return [name for name, case in cases["cases"].items() if f"{name}.out.{output}" in case["arrays"]]


def _check(actual: torch.Tensor, arrays, key: str, cases: dict) -> None:
    case = key.split(".")[0]
    entry = cases["cases"][case]["arrays"][key]
    expected = torch.from_numpy(arrays[key])
    assert tuple(actual.shape) == tuple(entry["shape"]), key
    error = (actual - expected).abs().max().item()
    assert error <= entry["tolerance_max_abs_diff"], f"{key}: max abs diff {error:.2e}"


def test_every_case_reproduces_the_official_tokens(encoder, cases, arrays):
    torch.backends.cuda.matmul.allow_tf32 = False
    names = _cases_with(cases, "tokens")
    assert set(names) == set(cases["cases"])  # every case has tokens
    for name in names:
        x = torch.from_numpy(arrays[f"{name}.in.fbank"])
        with torch.no_grad():
            _check(encoder(x), arrays, f"{name}.out.tokens", cases)


def test_the_clip_case_reproduces_the_block_input_and_first_block(encoder, cases, arrays):
    for name in _cases_with(cases, "block0"):
        x = torch.from_numpy(arrays[f"{name}.in.fbank"])
        with torch.no_grad():
            pre_blocks = encoder.patch_tokens(x)
            _check(pre_blocks, arrays, f"{name}.out.pre_blocks", cases)
            _check(encoder.blocks[0](pre_blocks), arrays, f"{name}.out.block0", cases)


def test_the_length_limit_is_the_official_one(encoder, cases):
    """T // 16 time patches up to max_length; the official code fails one patch later, and so does this one."""
    probes = cases["length_behaviour"]["probes"]
    for frames, probe in probes.items():
        x = torch.zeros(1, 1, int(frames), 128)
        if probe["ok"]:
            assert list(encoder.patch_tokens(x).shape) == probe["tokens"]
        else:
            with pytest.raises(ValueError, match="time patches"):
                encoder.patch_tokens(x)


def test_drop_path_rates_rise_linearly_over_the_blocks(cases):
    """set_drop_path (what train.py's DROP_PATH calls) gives block i numpy.linspace(0, rate, depth)[i]."""
    schedule = cases["drop_path"]
    for depth_key, expected in schedule["per_block_rates_read_from_official_blocks"].items():
        depth = int(depth_key.split("_")[1])
        encoder = M.EATEncoder(M.EATConfig(embed_dim=64, depth=depth, num_heads=2))
        wrapped = M.add_lora(encoder, rank=2, alpha=8, dropout=0.0, targets=["qkv"])
        assert M.set_drop_path(wrapped, schedule["drop_path_rate"]) == expected
        assert [block.drop_path_rate for block in encoder.blocks] == expected
        modules = schedule["block_modules"][depth_key]
        assert [rate == 0.0 for rate in expected] == [kind == "Identity" for kind in modules]


def test_the_project_front_end_gives_the_clip_case_input(encoder, cases, arrays, samples_dir):
    """The real clip through preprocessing (load, fbank, pad to 1024) then the encoder: the official tokens."""
    from asd.data.clips import pad_or_crop
    from asd.data.fbank import wav_to_fbank
    from asd.data.preprocessing import load_audio

    front = cases["front_end"]
    clip = samples_dir / front["clip"].split(" (")[0]  # "<path> (inside tests/fixtures/dcase_samples)"
    assert hashlib.sha256(clip.read_bytes()).hexdigest() == front["clip_sha256"]
    fbank = wav_to_fbank(load_audio(clip))
    assert fbank.shape[0] == front["clip_frames"]
    x = pad_or_crop(fbank, 1024)[None, None]
    with torch.no_grad():
        _check(encoder(x), arrays, "t1024_clip.out.tokens", cases)
