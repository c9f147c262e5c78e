"""ASDKit's own outputs (tests/fixtures/asdkit_fixture) for the training side of the recipe asdkit-eat-lora,
reproduced through the functions train.py calls: SCAdaCos (fixed scale, xavier centres, one-hot and
mixed targets), per-sample waveform mixup, fixed-length crop/tile, the fbank, class labels and the
learning-rate schedule. Random draws are replayed where the fixture stores them."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from asd.base.cli import parse_config
from asd.base.years import YEARS
from asd.data.clips import (
    ClipPolicy,
    clip_samples,
    crop_or_tile,
    resolve_clip_seconds,
    waves_to_input,
)
from asd.data.labels import ClassIndex, class_name
from asd.data.names import parse_clip_name
from asd.model import heads
from asd.model import model as M
from asd.train import training
from asd.train.augment import mixup_samples

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "asdkit_fixture"


@pytest.fixture(scope="module")
def cases() -> dict:
    if not (FIXTURE / "cases.json").is_file():
        pytest.fail(f"ASDKit fixture not found at {FIXTURE}: restore tests/fixtures/asdkit_fixture")
    return json.loads((FIXTURE / "cases.json").read_text())["cases"]


@pytest.fixture(scope="module")
def npz(cases):
    return np.load(FIXTURE / "cases.npz")


def _t(npz, key: str) -> torch.Tensor:
    return torch.from_numpy(np.array(npz[key]))


def _recipe_cfg(*extra: str):
    """train.py's settings under the recipe (what run() passes to the training functions)."""
    return parse_config(vars(train), ["--recipe", "asdkit-eat-lora", *extra])


# ----------------------------------------------------------------------------- scadacos


def _recipe_head(cases) -> heads.SCAdaCosHead:
    """The head build_model makes for the recipe, over 256-d embeddings and the case's 12 classes."""
    cfg, settings = _recipe_cfg(), cases["scadacos"]["settings"]
    head = heads.make_head(
        cfg.head,
        settings["embed_size"],
        settings["n_classes"],
        None,
        cfg.arcface_margin,
        cfg.sub_clusters,
        cfg.train_centres,
        0,
        cfg.scale == "adaptive",
        cfg.centre_init,
    )
    assert isinstance(head, heads.SCAdaCosHead) and head.sub_clusters == settings["n_subclusters"]
    return head.train()


def _loss_and_grads(head, x, targets):
    head.zero_grad()
    x = x.clone().requires_grad_(True)
    loss = head.target_loss(x, targets)
    loss.backward()
    return loss.item(), x.grad, head.centres.grad.T  # dW in ASDKit's (D, N) layout


def test_scadacos_fixed_scale_xavier_centres_and_gradients(cases, npz):
    case = cases["scadacos"]
    tol = case["tolerance"]
    head = _recipe_head(cases)
    W = _t(npz, "scadacos.in.W")
    assert torch.equal(head.centres.detach().T, W)  # xavier_uniform_ of (D, N) after seed 0, as ASDKit
    assert int(npz["scadacos.out.N"]) == head.num_classes * head.sub_clusters
    assert float(head.scale) == pytest.approx(float(npz["scadacos.out.s_fixed"]), rel=1e-7)
    x, onehot = _t(npz, "scadacos.in.x"), _t(npz, "scadacos.in.onehot")
    assert torch.equal(onehot.argmax(1), _t(npz, "scadacos.in.labels"))
    draws = tuple(_t(npz, f"scadacos.in.{k}") for k in ("mix_lam", "mix_perm", "mix_dec_uniform"))
    _, mixed = mixup_samples(torch.zeros(len(x), 1), onehot, 0.5, draws=draws)
    assert torch.equal(mixed, _t(npz, "scadacos.out.targets_mixed"))
    for kind, targets in (("onehot", onehot), ("mixed", mixed)):
        loss, dx, dW = _loss_and_grads(head, x, targets)
        assert loss == pytest.approx(float(npz[f"scadacos.out.loss_{kind}"]), rel=tol[f"loss_{kind}"]["rtol"])
        assert (dx - _t(npz, f"scadacos.out.dx_{kind}")).abs().max() <= tol[f"dx_{kind}"]["atol"]
        assert (dW - _t(npz, f"scadacos.out.dW_{kind}")).abs().max() <= tol[f"dW_{kind}"]["atol"]
    # the one-hot path without mixup (labels) is the same loss
    assert head.loss(x, _t(npz, "scadacos.in.labels")).item() == pytest.approx(
        float(npz["scadacos.out.loss_onehot"]), rel=tol["loss_onehot"]["rtol"]
    )


def test_scadacos_scale_stays_fixed_over_training_passes(cases, npz):
    head = _recipe_head(cases)
    with torch.no_grad():
        head.centres.copy_(_t(npz, "scadacos.in.W").T)
    trace = [float(head.scale)]
    for i, (x, targets) in enumerate(zip(_t(npz, "scadacos.in.pass_x"), _t(npz, "scadacos.in.pass_onehot"))):
        loss = head.target_loss(x, targets)
        assert loss.item() == pytest.approx(float(npz["scadacos.out.pass_loss"][i]), rel=1e-5)
        trace.append(float(head.scale))
    assert trace == pytest.approx(npz["scadacos.out.pass_s_trace"].tolist(), rel=1e-7)
    adaptive = heads.SCAdaCosHead(256, 12, 16, dynamic=True).train()  # the other setting still adapts
    adaptive.target_loss(_t(npz, "scadacos.in.x"), _t(npz, "scadacos.in.onehot"))
    assert float(adaptive.scale) != pytest.approx(trace[0], rel=1e-3)


# ----------------------------------------------------------------------------- mixup


def test_mixup_per_sample_on_waveforms_and_targets(cases, npz):
    tol = cases["mixup"]["tolerance"]
    wave = torch.from_numpy(npz["mixup.in.wave_int16"].astype(np.float32) / 32768)
    onehot = _t(npz, "mixup.in.onehot")
    draws = tuple(_t(npz, f"mixup.in.{k}") for k in ("draw_lam", "draw_perm", "draw_dec_uniform"))
    torch.manual_seed(3)  # ASDKit drew them after this seed, lam, perm, decision in this order
    for replayed in (mixup_samples(wave, onehot, 0.5, draws=draws), mixup_samples(wave, onehot, 0.5)):
        mixed_wave, mixed_targets = replayed
        assert (mixed_wave - _t(npz, "mixup.out.wave_mixed")).abs().max() <= tol["wave_mixed"]["atol"]
        assert (mixed_targets - _t(npz, "mixup.out.onehot_mixed")).abs().max() <= tol["onehot_mixed"]["atol"]
    untouched = _t(npz, "mixup.out.dec") == 0
    assert torch.equal(mixed_wave[untouched], wave[untouched]) and untouched.any() and not untouched.all()


# ----------------------------------------------------------------------------- crop and fbank


class _Replay:
    """numpy's integers(low, high) returning the stored offsets, checking ASDKit's bounds."""

    def __init__(self, highs, offsets):
        self.draws = iter(zip(highs, offsets))

    def integers(self, low, high):
        expected_high, offset = next(self.draws)
        assert (low, high) == (0, expected_high)
        return offset


def test_crop_or_tile_reproduces_every_case(cases, npz):
    case = cases["crop"]
    highs, offsets = npz["crop.in.randint_high"], npz["crop.in.draw_offset"]
    segments = npz["crop.out.segments"]
    for spec in case["cases"]:
        i = spec["i"]
        seconds = YEARS[spec["dcase"].removeprefix("dcase")].clip_seconds
        assert seconds == npz["crop.out.sec"][i]
        ramp = torch.arange(int(npz["crop.in.input_len"][i]), dtype=torch.float32)
        rng = _Replay([highs[i]], [offsets[i]]) if spec["phase"] == "train" else None
        out = crop_or_tile(ramp, clip_samples(seconds), rng)
        assert len(out) == npz["crop.out.out_len"][i]
        expected = np.concatenate([np.arange(s, s + n) for c, s, n in segments if c == i]).astype(np.float32)
        assert np.array_equal(out.numpy(), expected)
        assert (
            hashlib.sha256(out.numpy().astype("<f4").tobytes()).hexdigest()
            == case["extra"]["output_sha256_float32le"][i]
        )
    # the stored offsets are numpy's legacy draws after seed 0, in case order: the same generator replays them
    np.random.seed(0)

    class Legacy:
        integers = staticmethod(np.random.randint)

    for spec in (s for s in case["cases"] if s["phase"] == "train"):
        i = spec["i"]
        out = crop_or_tile(
            torch.arange(int(npz["crop.in.input_len"][i]), dtype=torch.float32),
            clip_samples(npz["crop.out.sec"][i]),
            Legacy,
        )
        assert out[0] == offsets[i] and out[-8:].tolist() == npz["crop.out.tail"][i].tolist()


def test_auto_clip_seconds_follow_the_year_of_the_clip_names_not_the_folder_name(tmp_path):
    """A 2023 set in a folder called dev_data gets 2023's 18 s; a folder named like 2024 changes nothing."""
    names = {
        "fan": "section_00_source_train_normal_0000_m-n_X.wav",  # 2023's attribute keys
        "bearing": "section_00_source_train_normal_0001_pro_A_vel_4_loc_A.wav",  # 2024's
    }
    for machine, seconds in (("fan", 18.0), ("bearing", 12.0)):
        record = parse_clip_name(tmp_path / "dev_data_2024" / machine / "train" / names[machine])
        assert resolve_clip_seconds("auto", [str(tmp_path / "dev_data_2024")], [record])[0] == seconds
    assert resolve_clip_seconds("whole", ["dcase2023"], [])[0] is None
    assert resolve_clip_seconds("7.5", ["dcase2023"], [])[0] == 7.5


def test_fbank_padded_to_a_multiple_of_32_frames(cases, npz):
    tol = cases["fbank"]["tolerance"]["fbank"]["atol"]
    wave = torch.from_numpy(npz["fbank.in.wave_int16"].astype(np.float32) / 32768)
    x = waves_to_input(crop_or_tile(wave, clip_samples(float(npz["fbank.in.sec"])))[None], 32)
    assert x.shape == (1, 1, int(npz["fbank.out.target_length"]), 128)
    assert (x[0, 0] - _t(npz, "fbank.out.fbank")).abs().max() <= tol
    for seconds, frames in zip(npz["fbank.in.recipe_sec"], npz["fbank.out.recipe_target_length"]):
        assert waves_to_input(torch.zeros(1, clip_samples(float(seconds))), 32).shape[2] == frames


# ----------------------------------------------------------------------------- labels and schedule


def test_class_labels_and_indices_of_real_names(cases, npz):
    cfg = _recipe_cfg()
    for year, info in cases["labels"]["extra"].items():
        records = [parse_clip_name(row["path"]) for row in info["rows"]]
        assert [class_name(r, cfg.label) for r in records] == [row["label"] for row in info["rows"]]
        index = ClassIndex.from_records(records, cfg.label)
        assert index.names == info["classes"] and len(index) == info["num_class"]
        assert [index.index(r) for r in records] == npz[f"labels.out.index_{year}"].tolist()


def test_learning_rate_schedule_is_timm_warmup(cases, npz):
    cfg = _recipe_cfg("--epochs", "25")
    layer = torch.nn.Linear(2, 2)
    optimizer, scheduler = training.make_optimizer(layer, cfg, steps_per_epoch=1750)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 0.01
    assert len(optimizer.param_groups[0]["params"]) == 2  # the bias decays too (DECAY all)
    rtol = cases["lr_schedule"]["tolerance"]["lr"]["rtol"]
    expected = dict(zip(npz["lr_schedule.in.steps"].tolist(), npz["lr_schedule.out.lr"].tolist()))
    for step, lr in expected.items():
        assert cfg.learning_rate * scheduler.lr_lambdas[0](step) == pytest.approx(lr, rel=rtol, abs=0)
    used = []
    for _ in range(3):  # the rate each optimizer step really runs at
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert used == pytest.approx([expected[0], expected[1], expected[2]], rel=rtol, abs=0)


def test_recipe_model_has_drop_path_lora_defaults_and_xavier_centres():
    cfg = _recipe_cfg("--model_size", "tiny")
    model = training.build_model(cfg, 3, show=False)
    blocks = M.base_encoder(model.encoder).blocks
    assert [b.drop_path_rate for b in blocks] == np.linspace(0, 0.1, len(blocks)).tolist()
    assert (
        model.encoder.asd_lora_settings["alpha"] == 8.0 and model.encoder.asd_lora_settings["dropout"] == 0.0
    )
    assert cfg.grad_clip == 0 and not model.head.dynamic and model.head.centre_init == "xavier"
    assert math.isclose(float(model.head.scale), math.sqrt(2) * math.log(3 * 16 - 1), rel_tol=1e-6)


def test_extraction_input_cuts_from_the_start_as_validation_does():
    waves = [torch.randn(16000 * 3), torch.randn(16000 * 1)]
    x = ClipPolicy(2.0).extraction_input(waves)
    assert x.shape == (2, 1, 224, 128)  # 2 s: 198 frames padded to 224
    first = waves_to_input(waves[0][: 2 * 16000][None], 32)
    tiled = waves_to_input(torch.cat([waves[1], waves[1]])[None], 32)
    assert torch.equal(x[0], first[0]) and torch.equal(x[1], tiled[0])
    again, _ = training.fixed_length_input(waves, ClipPolicy(2.0), "cpu")  # validation's path
    assert torch.equal(again, x)
