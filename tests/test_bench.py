"""bench/: the analytic FLOP count, the recipe's training step and the prepared GPU check's CPU dry run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import asd.model.pretrained as P
from asd.base.cli import check_script_arguments
from asd.embed.embedding_files import read_feature_file
from asd.run import benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_forward_flops_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    encoder = P.build_encoder(None, "tiny", verbose=False).eval()
    frames = 96
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # explicit attention: its matmuls count
        encoder(torch.randn(2, 1, frames, 128), explicit_attention=True)
    counted = counter.get_total_flops()
    analytic = 2 * benchmark.forward_flops(encoder.config, frames)
    assert abs(analytic - counted) / counted < 0.02


def test_recipe_step_trains_lora_on_qkv_only():
    argv = ["--device", "cpu", "--recipe_lora_rank", "4", "--projection_dim", "16"]
    cfg = vars(check_script_arguments(ROOT / "bench" / "encoder.py", argv))
    torch.manual_seed(0)
    encoder = P.build_encoder(None, "tiny", verbose=False)
    step, classes = benchmark.training_step(encoder, "recipe", cfg, torch.device("cpu"))
    assert classes == benchmark.HEAD_CLASSES
    lora = {n: p for n, p in encoder.named_parameters() if "lora_" in n}
    assert lora and all(".attn.qkv." in n for n in lora)
    assert all(p.shape[0] == 4 or p.shape[1] == 4 for p in lora.values())
    frozen = {n: p.detach().clone() for n, p in encoder.named_parameters() if "lora_" not in n}
    before = {n: p.detach().clone() for n, p in lora.items() if "lora_A" in n}
    x, labels = torch.randn(2, 1, 64, 128), torch.tensor([1, 7])
    step(x, labels)
    step(x, labels)
    assert any(not torch.equal(before[n], lora[n]) for n in before)
    assert all(torch.equal(p, dict(encoder.named_parameters())[n]) for n, p in frozen.items())
    assert (
        benchmark.mode_shape("recipe", cfg) == (cfg["recipe_batch_size"], cfg["recipe_frames"]) == (8, 1216)
    )


def test_datasheet_peak_is_known_for_h100_and_h200_only_unless_given():
    assert benchmark.datasheet_flops("NVIDIA H200", 0.0) == benchmark.datasheet_flops(
        "NVIDIA H100 80GB HBM3", 0.0
    )
    assert benchmark.datasheet_flops("NVIDIA H200", 0.0) == 989e12
    assert benchmark.datasheet_flops("NVIDIA A100-SXM4-80GB", 0.0) is None
    assert benchmark.datasheet_flops(benchmark.card_name(torch.device("cpu")), 0.0) is None
    assert benchmark.datasheet_flops(None, 500.0) == benchmark.datasheet_flops("NVIDIA H200", 500.0) == 500e12


@pytest.mark.end_to_end
def test_gpu_check_cpu_smoke_end_to_end(tmp_path):
    """The prepared GPU check's CPU dry run: every section on a two-channel 2026-style set (channel
    near), the published recipe's fixed-length crops in train.py and extraction, and run_all on another
    two-channel set for a noise-aware channel mode with ASDKit's four back ends and two seeds."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    numbers = gpu_check.main(
        ["--cpu_smoke", "true", "--out_dir", str(tmp_path), "--work_dir", str(tmp_path / "w")]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.txt", "w"]
    text = (tmp_path / "gpu_check.txt").read_text()
    modes_title = "channel modes, crops, back ends, seeds (run_all)"
    for title in (
        "setup",
        "fbank throughput",
        "encoder",
        "GPU idle share",
        "pipeline steps",
        "estimate",
        "baseline autoencoder",
        modes_title,
        "done",
    ):
        assert f"== {title}" in text
    assert json.loads((tmp_path / "gpu_check.json").read_text()).keys() == numbers.keys()
    counts = numbers["setup"]["counts"]
    assert counts == {"train": 3 * 6, "test": 3 * 4}
    rows = numbers["encoder"]["rows"]
    assert [(r["mode"], r["batch"]) for r in rows] == [("forward", 2), ("train", 2), ("recipe", 2)]
    assert all(r["clips_per_s"] > 0 and r["peak_bytes"] > 0 and r["mfu_datasheet"] is None for r in rows)
    assert "datasheet peak: n/a" in text
    idle = numbers["GPU idle share while training from the DataLoader"]
    assert all(0.0 <= v["idle_share"] <= 1.0 and v["clips_per_s"] > 0 for v in idle.values())
    steps = numbers["pipeline steps"]
    assert set(steps["seconds"]) == {"train", "ddp", "extract", "svdd_train", "svdd_eval", "ensemble"}
    assert len(steps["epoch_seconds"]) == 2 and all(t > 0 for t in steps["epoch_seconds"])
    work = tmp_path / "w" / "pipeline"
    assert (work / "best_encoder_model.pth").is_file() and (work / "ddp" / "best.pth").is_file()
    for scorer in ("deepsvdd", "ensemble"):
        assert (work / "results" / scorer / "summary.json").is_file()
    # the recipe's crops: trained on 1 s crops, extracted the same way (float32)
    extracted = read_feature_file(work / "embeddings" / "normal_embeddings.pt")["fingerprint"]
    assert extracted["settings"]["clip_seconds"] == 1.0 and extracted["precision"] == "fp32"
    assert extracted["settings"]["channels"]["channels"] == "near"
    assert "2026 style" in text
    estimate = numbers["estimate"]
    assert estimate["total_seconds"] == pytest.approx(sum(part[2] for part in estimate["parts"]))
    assert len(estimate["parts"]) == 6 and all(part[2] >= 0 for part in estimate["parts"])
    assert estimate["parts"][0][0] == "training, 25 epochs (train.py, asdkit-eat-lora)"
    baseline = numbers["baseline autoencoder"]  # 2 epochs per machine type on the near channel, both scores
    assert {"fan", "gearbox", "pump"} <= set(baseline) and baseline["dcase_estimate_s_per_machine_type"] > 0
    assert all(
        baseline[m]["fit_s"] > 0 and set(baseline[m]["auc"]) == {"MSE", "MAHALA"} for m in ("fan", "pump")
    )
    modes = numbers[modes_title]
    assert list(modes) == ["residual"]
    assert modes["residual"]["seeds"] == [0, 1] and len(modes["residual"]["seed_tables"]) == 1
    assert len(modes["residual"]["runs"]) == 2
    for mode, result in modes.items():
        for run in result["runs"]:
            assert run["channels"]["channels"] == mode
            assert run["clip_seconds"] == 1.0
            assert run["backends"] == ["kmeans", "knn", "rescale", "smote_knn"]
            assert {"deepsvdd", "ensemble"} <= set(run["scorers"])
