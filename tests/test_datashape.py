"""datashape.py on the real samples, on the demo tree and on a folder full of problems."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

import datashape
from asd.report.data_check import fbank_frames


def run(capsys, *args: str) -> tuple[int, str]:
    code = datashape.main([*args, "--progress", "false"])
    return code, capsys.readouterr().out


def test_dcase2023_samples_pass(samples_dir, capsys):
    code, out = run(capsys, "--data_dir", str(samples_dir / "dcase2023_dev"))
    assert code == 0, out
    assert "no problems found" in out
    assert "== ToyCar ==" in out and "== valve ==" in out
    assert "car = C2, D2 | spd = 31V, 34V | mic = 1" in out
    assert "fbank [1198, 128]" in out and "fbank [998, 128]" in out  # 12 s ToyCar, 10 s others
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
    code, out = run(capsys, "--data_dir", str(tiny_demo_dir))
    assert code == 0, out
    assert "fbank [198, 128] -> model input [1, 224, 128] (pad; 1 window" in out  # whole, padded to 32


def write(path: Path, data, sr: int = 16000, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)


def _reported(out: str, heading: str) -> list[str]:
    """The '- ...' lines of one list datashape prints ('problem(s) found:' or 'warning(s)')."""
    if heading not in out:
        return []
    block = out.split(heading, 1)[1].split("\n\n", 1)[0]
    return [line for line in block.splitlines() if line.strip().startswith("- ")]


def test_broken_folder_lists_every_problem(tmp_path, capsys):
    tone = 0.2 * np.sin(np.arange(16000) / 7)
    train, test = tmp_path / "fan" / "train", tmp_path / "fan" / "test"
    write(train / "section_00_source_train_normal_0000_m-n_W.wav", tone)
    write(train / "my_recording.wav", tone)  # unparseable
    write(train / "section_00_source_train_normal_0001_m-n_W.wav", np.zeros(0))  # no samples
    write(train / "section_00_source_train_normal_0002_m-n_W.wav", np.zeros(16000))  # silent: a warning
    write(train / "section_00_source_train_normal_0003_m-n_W.wav", tone, sr=44100)  # other rate: a warning
    write(train / "section_00_source_train_normal_0004_m-n_W.wav", tone[:2000])  # 11 frames < one patch
    (train / "section_00_source_train_normal_0005_m-n_W.wav").write_bytes(b"")  # 0 bytes
    nan = tone.copy()
    nan[5] = np.nan
    write(test / "section_00_source_test_normal_0000_m-n_W.wav", nan, subtype="FLOAT")
    truncated = test / "section_00_source_test_anomaly_0000_m-n_W.wav"
    write(truncated, tone)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    (test / "section_00_source_test_anomaly_0001_m-n_W.wav").write_text("not audio")
    write(
        tmp_path / "pump" / "train" / "section_00_source_train_normal_0000_noAttribute.wav", tone
    )  # no test/
    code, out = run(capsys, "--data_dir", str(tmp_path))
    assert code == 1
    expected_problems = [
        ("my_recording.wav", "no DCASE scheme"),
        ("normal_0001_m-n_W.wav", "empty audio file (0 samples)"),
        ("normal_0004_m-n_W.wav", "too short (0.125 s = 11 fbank frames; EAT needs at least 16)"),
        ("normal_0005_m-n_W.wav", "empty (0 bytes)"),
        ("test_normal_0000_m-n_W.wav", "NaN"),
        ("anomaly_0000_m-n_W.wav", "truncated"),
        ("anomaly_0001_m-n_W.wav", "unreadable"),
        ("pump: no test clips", ""),
    ]
    expected_warnings = [
        ("normal_0002_m-n_W.wav", "WARNING: "),
        ("mixed sample rates: 1 clip(s) at 44100 Hz", "normal_0003_m-n_W.wav"),
    ]
    for heading, expected in (("problem(s) found:", expected_problems), ("warning(s)", expected_warnings)):
        lines = _reported(out, heading)
        for needle, reason in expected:
            assert any(needle in line and reason in line for line in lines), (needle, heading, out)
        assert len(lines) == len(expected), (heading, lines)


def test_warnings_alone_exit_zero(tmp_path, capsys):
    tone = 0.2 * np.sin(np.arange(16000) / 7)
    for split in ("train", "test"):
        write(tmp_path / "fan" / split / f"section_00_source_{split}_normal_0000_m-n_W.wav", tone)
    write(tmp_path / "fan" / "test" / "section_00_source_test_normal_0001_m-n_W.wav", np.zeros(16000))
    write(tmp_path / "fan" / "test" / "section_00_source_test_anomaly_0000_m-n_W.wav", tone, sr=22050)
    code, out = run(capsys, "--data_dir", str(tmp_path))
    assert code == 0, out
    lines = _reported(out, "warning(s)")
    assert len(lines) == 2 and "all silent" in lines[0] and "test_anomaly_0000_m-n_W.wav" in lines[1]
    assert "no problems found (see the warnings above)" in out


def test_missing_folder_is_reported(tmp_path, capsys):
    code, out = run(capsys, "--data_dir", str(tmp_path / "dev_data"))
    assert code == 1 and "does not exist" in out


def test_frame_count_from_the_header_matches_the_loaded_clip(tmp_path):
    import warnings

    from asd.data.fbank import wav_to_fbank
    from asd.data.preprocessing import load_audio

    for sr, samples in ((16000, 16000), (44100, 30871), (22050, 20000)):
        path = tmp_path / f"clip_{sr}.wav"
        write(path, 0.1 * np.sin(np.arange(samples) / 5), sr=sr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = wav_to_fbank(load_audio(path)).shape[0]
        assert fbank_frames(samples, sr) == frames


def test_channel_counts_and_supported_modes(samples_dir, tmp_path, capsys):
    _, out = run(capsys, "--data_dir", str(samples_dir / "dcase2023_dev"))
    assert "channels 1:4 -> modes near, mix" in out  # per machine type: 2 train + 2 test mono clips
    assert "channel modes every clip supports: near, mix" in out
    tone = 0.2 * np.sin(np.arange(16000) / 7)
    stereo = np.stack([tone, 0.5 * tone], axis=1)
    for split in ("train", "test"):
        write(tmp_path / "fanEmu" / split / f"section_00_source_{split}_normal_0000_spd_1.wav", stereo)
        write(tmp_path / "Sander" / split / f"section_00_source_{split}_normal_0000_pro_A.wav", stereo)
    write(tmp_path / "Sander" / "test" / "section_00_0000.wav", tone)  # one mono clip
    code, out = run(capsys, "--data_dir", str(tmp_path))
    assert code == 0, out
    assert "channels 2:2 -> modes near, far, mix, residual, both" in out
    assert "channels 1:1 2:2 -> modes near, mix" in out
    assert "channel modes every clip supports: near, mix" in out
    assert "labels normal:1 unlabelled:1" in out
    code, out = run(capsys, "--data_dir", str(tmp_path), "--channels", "residual")
    lines = _reported(out, "problem(s) found:")
    assert code == 1 and len(lines) == 1 and "Sander: CHANNELS='residual' needs two channels" in lines[0]
    code, _ = run(capsys, "--data_dir", str(tmp_path), "--channels", "mix")
    assert code == 0


def test_clips_beyond_the_encoder_reach_and_unlabelled_training_clips_are_problems(tmp_path, capsys):
    from asd.data.fbank import ENCODER_MAX_FRAMES

    tone = 0.2 * np.sin(np.arange(16000) / 7)
    long_samples = 400 + ENCODER_MAX_FRAMES * 160  # one frame more than the encoder's reach
    write(tmp_path / "fan" / "train" / "section_00_source_train_normal_0000_a_1.wav", tone)
    write(tmp_path / "fan" / "train" / "section_00_0001.wav", tone)
    write(tmp_path / "fan" / "test" / "section_00_source_test_normal_0000_a_1.wav", np.zeros(long_samples))
    code, out = run(capsys, "--data_dir", str(tmp_path), "--decode", "false")
    lines = _reported(out, "problem(s) found:")
    assert code == 1 and len(lines) == 2, out
    assert any("section_00_0001.wav" in line and "without a label" in line for line in lines)
    assert any(
        "test_normal_0000_a_1.wav" in line and "longer than the encoder's reach" in line for line in lines
    )


def test_dcase2026_folder_of_6_10_and_16_s_two_channel_clips(tmp_path, capsys):
    for i, seconds in enumerate((6, 10, 16)):
        tone = 0.2 * np.sin(np.arange(seconds * 16000) / 7)
        pair = np.stack([tone, 0.3 * tone[::-1]], axis=1)
        for split in ("train", "test"):
            name = f"section_00_source_{split}_normal_{i:04d}_car_B1_spd_2_mic_2_mic_1.wav"
            write(tmp_path / "ToyCarEmu" / split / name, pair)
    code, out = run(capsys, "--data_dir", str(tmp_path), "--channels", "both")
    assert code == 0, out
    assert "duration 10.67 s (min 6.00, max 16.00)" in out and "channels 2:3" in out
    assert "(clips span 598..1598 frames)" in out  # 6 s .. 16 s at 100 frames per second
    assert "car = B1 | spd = 2 | mic = 1, 2" in out
    assert "channel modes every clip supports: near, far, mix, residual, both" in out


def test_recipe_report_over_folders_and_an_evaluation_list(samples_dir, tmp_path, capsys):
    """Year, clip seconds, classes and fixed scale as train.py computes them, over a development folder
    and an anonymised evaluation folder named through the evaluation list; sections missing a label flagged."""
    import math

    from asd.data.ground_truth import read_evaluation_list

    labels = Path(__file__).resolve().parent / "fixtures" / "asdkit_fixture" / "labels"
    rows = read_evaluation_list(labels / "eval_data_list_2023.csv")[("bandsaw", "00")]
    clip = next((samples_dir / "dcase2023_dev" / "fan" / "train").glob("*.wav")).read_bytes()
    evaluation = tmp_path / "eval_data"
    for folder, name in [("train", "section_00_source_train_normal_0000_vel_13.wav")] + [
        ("test", anonymised) for anonymised in sorted(rows)
    ]:
        (evaluation / "bandsaw" / folder).mkdir(parents=True, exist_ok=True)
        (evaluation / "bandsaw" / folder / name).write_bytes(clip)
    folders = f"{samples_dir / 'dcase2023_dev'},{evaluation}"
    code, without = run(capsys, "--data_dir", folders)
    code_list, out = run(
        capsys, "--data_dir", folders, "--eval_list", str(labels / "eval_data_list_2023.csv")
    )
    assert code == code_list == 0, out
    assert "DCASE 2023" in out and "clip seconds 18.0" in out
    classes = {o[o.index("_vel_") :] + o.split("_")[2] for o in rows.values()}  # bandsaw's vel x domain pairs
    count = lambda text: int(text.split(" classes (")[0].split()[-1])  # noqa: E731
    assert count(out) == count(without) + len(classes - {"_vel_13.wavsource"})
    assert f"fixed scale {math.sqrt(2) * math.log(16 * count(out) - 1):.4f}" in out
    assert "ToyCar section 00: no anomaly labelled test clips" in out
    assert "bandsaw section 00: no" not in out
