"""datashape.py on the real samples, on the demo tree and on a folder full of problems."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

import datashape


def run(capsys, *args: str) -> tuple[int, str]:
    code = datashape.main([*args, "--progress", "false"])
    return code, capsys.readouterr().out


def test_dcase2023_samples_pass(samples_dir, capsys):
    code, out = run(capsys, "--data_dir", str(samples_dir / "dcase2023_dev"))
    assert code == 0, out
    assert "no problems found" in out
    assert "== ToyCar ==" in out and "== valve ==" in out
    assert "car = C2, D2 | spd = 31V, 34V | mic = 1" in out
    assert "fbank [1198, 128]" in out and "fbank [998, 128]" in out       # 12 s ToyCar, 10 s others
    assert "domains source:2" in out and "rate 16000:2 Hz" in out


def test_dcase2020_samples_report_missing_train(samples_dir, capsys):
    code, out = run(capsys, "--data_dir", str(samples_dir / "dcase2020_dev"))
    assert code == 1
    problems = out.split("problem(s) found:")[1]
    for machine in ("ToyCar", "ToyConveyor", "fan", "pump", "slider", "valve"):
        assert f"{machine}: no train clips" in problems
    assert "6 problem(s) found" in out
    assert "labels anomaly:3 normal:3" in out and "sections 04:6" in out


def test_demo_tree_passes(tiny_demo_dir, capsys):
    code, out = run(capsys, "--data_dir", str(tiny_demo_dir), "--target_frames", "200")
    assert code == 0, out
    assert "fbank [198, 128] -> model input [1, 200, 128] (pad" in out


def write(path: Path, data, sr: int = 16000, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)


def test_broken_folder_lists_every_problem(tmp_path, capsys):
    tone = 0.2 * np.sin(np.arange(16000) / 7)
    train, test = tmp_path / "fan" / "train", tmp_path / "fan" / "test"
    write(train / "section_00_source_train_normal_0000_m-n_W.wav", tone)
    write(train / "my_recording.wav", tone)                                          # unparseable
    write(train / "section_00_source_train_normal_0001_m-n_W.wav", np.zeros(0))     # empty
    write(train / "section_00_source_train_normal_0002_m-n_W.wav", np.zeros(16000))  # silent
    write(train / "section_00_source_train_normal_0003_m-n_W.wav", tone, sr=44100)  # mixed rate
    nan = tone.copy()
    nan[5] = np.nan
    write(test / "section_00_source_test_normal_0000_m-n_W.wav", nan, subtype="FLOAT")
    truncated = test / "section_00_source_test_anomaly_0000_m-n_W.wav"
    write(truncated, tone)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    (test / "section_00_source_test_anomaly_0001_m-n_W.wav").write_text("not audio")
    write(tmp_path / "pump" / "train" / "section_00_source_train_normal_0000_noAttribute.wav", tone)  # no test/
    code, out = run(capsys, "--data_dir", str(tmp_path))
    assert code == 1
    problems = out.split("problem(s) found:")[1]
    expected = [
        ("my_recording.wav", "no DCASE scheme"),
        ("normal_0001_m-n_W.wav", "empty"),
        ("normal_0002_m-n_W.wav", "silent"),
        ("test_normal_0000_m-n_W.wav", "NaN"),
        ("anomaly_0000_m-n_W.wav", "truncated"),
        ("anomaly_0001_m-n_W.wav", "unreadable"),
        ("pump: no test clips", ""),
        ("mixed sample rates", "16000:"),
    ]
    lines = [line for line in problems.splitlines() if line.strip().startswith("- ")]
    for needle, reason in expected:
        assert any(needle in line and reason in line for line in lines), (needle, problems)
    assert len(lines) == len(expected)


def test_missing_folder_is_reported(tmp_path, capsys):
    code, out = run(capsys, "--data_dir", str(tmp_path / "dev_data"))
    assert code == 1 and "does not exist" in out


def test_frame_count_from_the_header_matches_the_loaded_clip(tmp_path):
    import warnings

    from preprocessing import load_audio, wav_to_fbank

    for sr, samples in ((16000, 16000), (44100, 30871), (22050, 20000)):
        path = tmp_path / f"clip_{sr}.wav"
        write(path, 0.1 * np.sin(np.arange(samples) / 5), sr=sr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = wav_to_fbank(load_audio(path)).shape[0]
        assert datashape.fbank_frames(samples, sr) == frames
