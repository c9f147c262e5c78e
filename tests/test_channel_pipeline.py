"""CHANNELS end to end on the DCASE 2026 two-channel demo: train.py -> extract_embeddings.py ->
evaluate.py / train_deepSVDD.py / evaluate_deepSVDD.py in every mode; a two-channel copy scores
exactly as its mono channel-0 original under the default; a mismatch of modes is refused naming the
files and the modes."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evaluate  # noqa: E402
import evaluate_deepSVDD  # noqa: E402
import extract_embeddings  # noqa: E402
import make_demo_data  # noqa: E402
import score_clips  # noqa: E402
import train  # noqa: E402
import train_deepSVDD  # noqa: E402
from asd.data.preprocessing import FeatureCache  # noqa: E402
from asd.data.signal_stats import STAT_NAMES  # noqa: E402
from asd.embed import embedding_files  # noqa: E402
from asd.train import training  # noqa: E402
from eat_checkpoint_support import write_eat_checkpoint  # noqa: E402

DEMO = ["--machine_types", "fan", "--clip_seconds", "1.5", "--source_train", "6", "--target_train", "2"]
DEMO += ["--test_normal", "2", "--test_anomaly", "2", "--progress", "false"]
MODES = [("near", "concat"), ("far", "concat"), ("mix", "concat"), ("residual", "concat")]
MODES += [("both", "concat"), ("both", "residual")]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A 2026-style two-channel demo (data26), a tiny EAT checkpoint (eat)."""
    root = tmp_path_factory.mktemp("channels")
    make_demo_data.main(["--out_dir", str(root / "data26"), "--year_style", "2026", *DEMO])
    write_eat_checkpoint(root / "eat")
    return root


def _train(root: Path, data: Path, out: Path, *extra: str) -> dict:
    return train.main(
        ["--data_dir", str(data), "--eat_checkpoint", str(root / "eat"), "--epochs", "1"]
        + [
            "--batch_size",
            "8",
            "--clip_seconds",
            "1.28",
            "--num_workers",
            "0",
            "--lora_rank",
            "2",
            "--projection_dim",
            "16",
        ]
        + ["--feature_cache", str(root / "cache"), "--output", str(out), "--resume", "false"]
        + ["--last_checkpoint", str(out.with_suffix(".last.pth")), "--val_fraction", "0.25", *extra]
    )


def _extract(data: Path, model: Path, embed: Path, *extra: str, cache: str = "none") -> dict:
    return extract_embeddings.main(
        ["--data_dir", str(data), "--model_path", str(model), "--embed_dir", str(embed)]
        + ["--feature_cache", cache, "--embed_batch_size", "8", *extra]
    )


def _scorers(run: Path) -> tuple[dict, dict]:
    quiet = ["--plots", "false", "--report", "false"]
    ensemble = evaluate.main(
        ["--embed_dir", str(run), "--results_dir", str(run / "results" / "ensemble"), *quiet]
    )
    svdd_dir = str(run / "svdd_models_per_type")
    train_deepSVDD.main(
        ["--embed_dir", str(run), "--svdd_dir", svdd_dir, "--use_stats", "true", "--svdd_epochs", "2"]
        + ["--hidden_neurons", "16,4"]
    )
    svdd = evaluate_deepSVDD.main(
        [
            "--embed_dir",
            str(run),
            "--svdd_dir",
            svdd_dir,
            "--results_dir",
            str(run / "results" / "deepsvdd"),
            *quiet,
        ]
    )
    return ensemble, svdd


@pytest.mark.parametrize("mode,combine", MODES)
def test_every_channel_mode_runs_end_to_end(root, mode, combine, capsys):
    run = root / f"run_{mode}_{combine}"
    settings = ["--channels", mode, "--channel_combine", combine]
    model = run / "best.pth"
    _train(root, root / "data26", model, *settings)
    recorded = torch.load(model, weights_only=True)["settings"]
    assert (recorded["channels"], recorded["residual_weight"], recorded["channel_combine"]) == (
        mode,
        0.5,
        combine,
    )
    out = _extract(root / "data26", model, run, *settings, cache=str(root / "cache"))
    width = 16  # --projection_dim
    (normal_emb, normal_stats), (test_emb, test_stats) = out["train"], out["test"]
    assert test_stats["matrix"].shape[1] == normal_stats["matrix"].shape[1]
    expected_width = 2 * width if (mode, combine) == ("both", "concat") else width
    assert normal_emb["matrix"].shape == (8, expected_width) and test_emb["matrix"].shape == (
        8,
        expected_width,
    )
    stat_width = len(STAT_NAMES) * (2 if mode == "both" else 1)
    assert normal_stats["matrix"].shape == (8, stat_width) and len(normal_stats["columns"]) == stat_width
    record = normal_emb["fingerprint"]["settings"]["channels"]
    assert record["channels"] == mode and ("combine" in record) == (mode == "both")
    assert normal_stats["fingerprint"]["features"]["channels"] == mode
    ensemble, svdd = _scorers(run)
    for summary in (ensemble, svdd):
        assert summary["complete"] and np.isfinite(summary["official_score"]), summary
    for scorer in ("ensemble", "deepsvdd"):
        rows = list(csv.reader(open(run / "results" / scorer / "anomaly_score_fan_section_00_test.csv")))
        assert len(rows) == 8 and all(np.isfinite(float(r[1])) for r in rows)
    # score_clips with the run's channel settings gives a test clip the evaluator's score
    clip = Path(test_emb["records"][0]["path"])
    expected = dict(
        (r[0], float(r[1]))
        for r in csv.reader(open(run / "results" / "ensemble" / "anomaly_score_fan_section_00_test.csv"))
    )
    rows = score_clips.main(
        ["--run", str(run), "--machine_type", "fan", "--output", str(run / "clips.csv"), *settings, str(clip)]
    )
    assert rows[0][1] == pytest.approx(expected[clip.name], rel=1e-3, abs=1e-4)


def test_both_trains_on_each_clips_near_and_far_channel(root):
    cfg = train.parse_config(
        vars(train), ["--data_dir", str(root / "data26"), "--channels", "both", "--feature_cache", ""]
    )
    records = training.training_records(cfg)[:3]
    sources = training.feature_sources(cfg, [r.path for r in records], False)
    dataset = training.clip_dataset(records, None, sources)
    assert len(dataset) == 2 * len(records)
    near, far = FeatureCache(None, channels="near"), FeatureCache(None, channels="far")
    for i, record in enumerate(records):
        assert torch.equal(dataset[i][0], near.fbank(record.path))
        assert torch.equal(dataset[len(records) + i][0], far.fbank(record.path))
        assert dataset[i][2] is dataset[len(records) + i][2] is record
    assert not torch.equal(dataset[0][0], dataset[len(records)][0])


def test_a_two_channel_copy_scores_exactly_as_its_mono_original(root, tmp_path):
    """Issue 18's done-when, on a tiny folder: the same tuned model, extraction and evaluation with
    the default settings give bit-identical embeddings, statistics and scores."""
    mono = tmp_path / "mono"
    make_demo_data.main(["--out_dir", str(mono), *DEMO])
    stereo = tmp_path / "stereo"
    shutil.copytree(mono, stereo)
    rng = np.random.default_rng(0)
    for clip in stereo.rglob("*.wav"):
        near, sr = sf.read(str(clip), dtype="int16")
        far = rng.integers(-3000, 3000, size=near.shape, dtype=np.int16)
        sf.write(str(clip), np.stack([near, far], axis=1), sr, subtype="PCM_16")
        assert sf.info(str(clip)).channels == 2
    model = tmp_path / "best.pth"
    _train(root, mono, model)
    outputs, scores = [], []
    for data in (mono, stereo):
        run = tmp_path / f"run_{data.name}"
        outputs.append(_extract(data, model, run))
        quiet = ["--plots", "false", "--report", "false"]
        evaluate.main(["--embed_dir", str(run), "--results_dir", str(run / "results"), *quiet])
        scores.append(
            sorted(
                p.read_bytes() for p in (run / "results").glob("*_test.csv") if p.name.startswith("anomaly")
            )
        )
    for split in ("train", "test"):
        for a, b in zip(outputs[0][split], outputs[1][split]):
            assert torch.equal(a["matrix"], b["matrix"])
    assert scores[0] and scores[0] == scores[1]


def test_a_mismatch_of_modes_is_refused_naming_files_and_modes(root, tmp_path):
    model = tmp_path / "near.pth"
    _train(root, root / "data26", model)
    with pytest.raises(
        ValueError, match=rf"{model}.*channels='near'.*extraction into {tmp_path / 'x'}.*channels='far'"
    ):
        _extract(root / "data26", model, tmp_path / "x", "--channels", "far")
    assert not (tmp_path / "x" / "normal_embeddings.pt").exists()
    run = tmp_path / "run"
    _extract(root / "data26", model, run)
    evaluate.main(
        [
            "--embed_dir",
            str(run),
            "--results_dir",
            str(run / "results" / "ensemble"),
            "--plots",
            "false",
            "--report",
            "false",
        ]
    )
    # score_clips with another mode than the run's
    clip = next((root / "data26" / "fan" / "test").glob("*.wav"))
    with pytest.raises(
        ValueError,
        match=r"normal_embeddings.pt was made with channels='near'.*score_clips.py.*channels='both'",
    ):
        score_clips.main(["--run", str(run), "--machine_type", "fan", "--channels", "both", str(clip)])
    # statistics of other channels than their embeddings: refused
    stats_file = run / "normal_stats.pt"
    payload = torch.load(stats_file, weights_only=True)
    payload["fingerprint"]["features"]["channels"] = "far"
    torch.save(payload, stats_file)
    with pytest.raises(ValueError, match="train statistics were computed from other channels"):
        evaluate.main(["--embed_dir", str(run), "--results_dir", str(tmp_path / "res"), "--plots", "false"])
    # embedding files that say they were made with 'far' from a model tuned on 'near': the scorers refuse
    for name in embedding_files.EMBEDDING_FILE_NAMES:
        payload = torch.load(run / name, weights_only=True)
        if "settings" in payload["fingerprint"]:
            payload["fingerprint"]["settings"]["channels"] = {"channels": "far"}
        else:
            payload["fingerprint"]["features"]["channels"] = "far"
        torch.save(payload, run / name)
    with pytest.raises(
        ValueError,
        match=rf"{model} was made with channels='near'.*the embeddings .*normal_embeddings.pt reads the clips with channels='far'",
    ):
        evaluate.main(["--embed_dir", str(run), "--results_dir", str(tmp_path / "res"), "--plots", "false"])
    # mono clips in a mode that needs the far microphone: refused naming a clip before training
    mono = tmp_path / "mono"
    make_demo_data.main(["--out_dir", str(mono), *DEMO])
    with pytest.raises(Exception, match=r"\.wav: CHANNELS='residual' needs a second"):
        _train(root, mono, tmp_path / "m.pth", "--channels", "residual")
