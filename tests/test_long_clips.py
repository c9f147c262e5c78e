"""score_clips.py on long recordings (issue 19): consecutive windows, a per-window table, the stated
aggregate, a timeline plot, and bounded memory (no fbank or read larger than one window)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evaluate  # noqa: E402
import extract_embeddings  # noqa: E402
import make_demo_data  # noqa: E402
import score_clips  # noqa: E402
import train  # noqa: E402
from asd.data import preprocessing  # noqa: E402
from asd.data.clips import window_spans  # noqa: E402
from asd.data.signal_stats import STAT_NAMES  # noqa: E402
from asd.embed import long_clips  # noqa: E402
from eat_checkpoint_support import write_eat_checkpoint  # noqa: E402
from helpers import extract_args  # noqa: E402

DEMO = ["--machine_types", "fan", "--clip_seconds", "1.5", "--source_train", "6", "--target_train", "2"]
DEMO += ["--test_normal", "2", "--test_anomaly", "2", "--progress", "false"]
MINUTES = 10
WINDOW, HOP = 5, 20  # seconds; windows with gaps keep the test fast (the cost is the audio covered)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run folder in run_all's layout (tuned model, embeddings, ensemble results)."""
    root = tmp_path_factory.mktemp("long")
    data = make_demo_data.main(["--out_dir", str(root / "data"), *DEMO])
    write_eat_checkpoint(root / "eat")
    model = root / "best.pth"
    train.main(
        [
            "--data_dir",
            str(data),
            "--eat_checkpoint",
            str(root / "eat"),
            "--epochs",
            "1",
            "--num_workers",
            "0",
        ]
        + ["--target_frames", "128", "--clip_seconds", "whole", "--mixup", "batch_fbank"]
        + ["--lora_rank", "2", "--projection_dim", "16", "--feature_cache", ""]
        + ["--output", str(model), "--last_checkpoint", str(root / "last.pth"), "--val_fraction", "0.25"]
    )
    run = root / "run"
    extract_embeddings.main(extract_args(data, model, run))
    evaluate.main(
        ["--embed_dir", str(run), "--results_dir", str(run / "results" / "ensemble")]
        + ["--plots", "false", "--report", "false"]
    )
    return run


def _long_recording(path: Path, source: Path, minutes: float, rng) -> Path:
    """A recording of ``minutes`` made of the source clip repeated with a little noise, written in blocks."""
    clip, sr = sf.read(str(source), dtype="int16")
    total = int(minutes * 60 * sr)
    with sf.SoundFile(str(path), "w", sr, 1, subtype="PCM_16") as out:
        for start in range(0, total, 60 * sr):
            n = min(60 * sr, total - start)
            block = np.resize(clip, n).astype(np.int32) + rng.integers(-200, 200, n)
            out.write(np.clip(block, -32768, 32767).astype(np.int16))
    return path


def test_window_spans_cover_the_recording_and_end_at_its_end():
    spans = window_spans(600 * 16000, 16000, 10.0, 7.0)
    assert spans[0] == (0, 160000) and spans[-1] == (600 * 16000 - 160000, 600 * 16000)
    assert len(spans) == 86 and all(b - a == 160000 for a, b in spans)
    assert [a for a, _ in spans[:-1]] == list(range(0, 588 * 16000 + 1, 7 * 16000))
    assert window_spans(100, 16000, 10.0, 5.0) == [(0, 100)]
    assert (
        long_clips.aggregate([1.0, 3.0, 2.0], "max") == 3.0
        and long_clips.aggregate([1.0, 3.0, 2.0], "mean") == 2.0
    )


def test_a_long_recording_is_scored_as_windows_within_bounded_memory(run, tmp_path, monkeypatch):
    data = Path(run.parent / "data")
    source = sorted((data / "fan" / "test").glob("*normal*.wav"))[0]
    long = _long_recording(tmp_path / "line 3, all morning.wav", source, MINUTES, np.random.default_rng(0))
    assert sf.info(str(long)).duration > long_clips.ENCODER_REACH_SECONDS
    # the first and the last window as clips of their own, to compare with the windows' scores
    sr = sf.info(str(long)).samplerate
    first, last = tmp_path / "first.wav", tmp_path / "last.wav"
    sf.write(
        str(first), sf.read(str(long), start=0, stop=WINDOW * sr, dtype="int16")[0], sr, subtype="PCM_16"
    )
    sf.write(
        str(last),
        sf.read(str(long), start=(MINUTES * 60 - WINDOW) * sr, dtype="int16")[0],
        sr,
        subtype="PCM_16",
    )

    biggest = {"fbank": 0}
    real_fbank, real_load = long_clips.wav_to_fbank, preprocessing.load_audio

    def counting_fbank(wav):
        biggest["fbank"] = max(biggest["fbank"], wav.numel())
        return real_fbank(wav)

    def refusing_load(path, *args, **kwargs):
        assert Path(path) != long, "the long recording was read whole"
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(long_clips, "wav_to_fbank", counting_fbank)
    monkeypatch.setattr(preprocessing, "load_audio", refusing_load)
    out, table, timelines = tmp_path / "scores.csv", tmp_path / "windows.csv", tmp_path / "plots"
    rows = score_clips.main(
        ["--run", str(run), "--machine_type", "fan", "--output", str(out), "--window_output", str(table)]
        + ["--timeline_dir", str(timelines), "--hop_seconds", str(HOP), "--window_seconds", str(WINDOW)]
        + ["--embed_batch_size", "8"]
        + [str(first), str(long), str(last), str(source)]
    )
    assert biggest["fbank"] == WINDOW * 16000  # one window at a time, never the recording's fbank

    windows = list(csv.DictReader(open(table)))
    count = (MINUTES * 60 - WINDOW) // HOP + 1 + 1  # the hops, and the tail window ending at the end
    assert len(windows) == count and {w["file"] for w in windows} == {long.name}
    assert [int(w["window"]) for w in windows] == list(range(count))
    assert float(windows[-2]["start_s"]) == (count - 2) * HOP
    assert float(windows[0]["start_s"]) == 0 and float(windows[-1]["end_s"]) == MINUTES * 60
    scores = [float(w["score"]) for w in windows]
    assert len(set(scores)) > 1 and np.isfinite(scores).all()
    names = [r[0] for r in rows]
    assert names == ["first.wav", long.name, "last.wav", source.name]
    # the recording's row: the max of its windows, judged by the clips' threshold
    assert rows[1][1] == pytest.approx(max(scores), rel=1e-6)
    threshold = _threshold(run)
    assert rows[1][2] == int(max(scores) > threshold)
    assert [int(w["decision"]) for w in windows] == [int(s > threshold) for s in scores]
    # a window is scored like a clip of its samples
    assert scores[0] == pytest.approx(rows[0][1], rel=1e-4, abs=1e-5)
    assert scores[-1] == pytest.approx(rows[2][1], rel=1e-4, abs=1e-5)
    assert list(csv.reader(open(out)))[0] == ["file", "score", "decision"]
    png = timelines / f"{long.stem}_timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (timelines / "first_timeline.png").exists()


def test_windows_default_to_the_training_clips_length(run, tmp_path):
    """Without WINDOW_SECONDS a long recording's windows are as long as the run's training clips (1.5 s
    here), so each is heard as a training clip was; a run whose clips cannot be read asks for the length."""
    data = Path(run.parent / "data")
    source = sorted((data / "fan" / "test").glob("*normal*.wav"))[0]
    long = _long_recording(tmp_path / "shift.wav", source, 0.2, np.random.default_rng(1))  # 12 s
    table = tmp_path / "windows.csv"
    score_clips.main(
        ["--run", str(run), "--machine_type", "fan", "--output", str(tmp_path / "scores.csv")]
        + ["--window_output", str(table), "--timeline_dir", str(tmp_path), "--long_seconds", "4"]
        + ["--hop_seconds", "4", str(long)]
    )
    windows = list(csv.DictReader(open(table)))
    assert [(float(w["start_s"]), float(w["end_s"])) for w in windows] == [
        (0.0, 1.5),
        (4.0, 5.5),
        (8.0, 9.5),
        (10.5, 12.0),
    ]
    with pytest.raises(
        FileNotFoundError, match="cannot read the run's training clips .* give WINDOW_SECONDS"
    ):
        long_clips.training_clip_seconds([tmp_path / "moved.wav"])


def _threshold(run: Path) -> float:
    """The decision threshold score_clips printed, recomputed from the run's training normals."""
    import json

    from asd.backends.registry import backend_factory
    from asd.embed.embedding_files import load_features
    from asd.score.scoring import score_by_group
    from asd.score.thresholds import threshold_info

    features = load_features(run, splits=("train",))
    settings = json.loads((run / "results" / "ensemble" / "summary.json").read_text())["settings"]
    _, train_scores = score_by_group(
        features.normal, features.normal.rows([0]), *backend_factory("ensemble", settings)
    )
    return threshold_info(train_scores[("fan", "00")])["threshold"]  # the evaluation's default location


def test_a_fixed_length_model_embeds_a_window_as_a_clip_of_its_samples(tmp_path, tiny_demo_dir):
    """A model trained with --clip_seconds 1 (train.py's default recipe records no long_clip): each window
    is tiled or cut to 1 s like a clip, so the first window embeds as the same samples saved as a clip."""
    import torch

    from asd.data.names import ClipRecord
    from asd.embed.embed import (
        embed_records,
        embedding_settings,
        feature_caches,
        tuned_model,
        with_clip_settings,
    )
    from helpers import tiny_train_args

    train.main(
        tiny_train_args(
            tmp_path, tiny_demo_dir, "--clip_seconds", "1", "--batch_size", "16", "--feature_cache", "none"
        )
    )
    model_path = tmp_path / "best.pth"
    rng = np.random.default_rng(1)
    sr = 16000
    wave = (0.1 * rng.standard_normal(6 * sr)).astype(np.float32)
    long, first = tmp_path / "long.wav", tmp_path / "first.wav"
    sf.write(long, wave, sr)
    sf.write(first, wave[: 2 * sr], sr)
    settings = with_clip_settings(embedding_settings("windows", None, True), model_path)
    assert settings["long_clip"] is None and settings["clip_seconds"] == 1.0
    model, _, trained = tuned_model(model_path, torch.device("cpu"))
    record = ClipRecord(str(long), "fan", "00", None, "test", "unknown")
    spans = window_spans(6 * sr, sr, 2.0, 2.0)
    columns = list(STAT_NAMES)
    windows = long_clips.embed_windows(
        str(long), record, spans, model, trained, settings, torch.device("cpu"), 2, columns
    )
    caches = feature_caches(None, settings["channels"])
    clip = embed_records(
        [ClipRecord(str(first), "fan", "00", None, "test", "unknown")],
        model, trained, settings, torch.device("cpu"), 1, caches,
    )  # fmt: skip
    assert windows.embeddings.shape == (3, clip.shape[1])
    np.testing.assert_allclose(windows.embeddings[0], clip[0].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(windows.embeddings[0], windows.embeddings[1])
