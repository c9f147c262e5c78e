"""The synthetic demo data: layout, names, determinism, skipping, and anomalies that are findable but not trivial."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import roc_auc_score

import make_demo_data
from asd.base.years import YEARS, detect_year
from asd.data import demo_data
from asd.data.dataset import discover_clips
from asd.data.names import read_attribute_tables
from asd.data.signal_stats import signal_stats

SMALL = [
    "--clip_seconds",
    "1",
    "--source_train",
    "2",
    "--target_train",
    "1",
    "--test_normal",
    "1",
    "--test_anomaly",
    "2",
    "--progress",
    "false",
]


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_tiny_tree_layout(tiny_demo_dir):
    records = discover_clips(tiny_demo_dir)
    assert {r.machine_type for r in records} == {"fan", "gearbox", "pump"}
    for machine in ("fan", "gearbox", "pump"):
        mine = [r for r in records if r.machine_type == machine]
        counts = Counter((r.split, r.domain, r.label) for r in mine)
        assert counts == {
            ("train", "source", "normal"): 6,
            ("train", "target", "normal"): 2,
            ("test", "source", "normal"): 1,
            ("test", "source", "anomaly"): 1,
            ("test", "target", "normal"): 1,
            ("test", "target", "anomaly"): 1,
        }
        values = {r.attributes for r in mine if r.split == "train"}
        assert len(values) == 2 and all(len(v) == 1 for v in values)
        rows = read_attribute_tables(tiny_demo_dir / machine)
        assert len(rows) == len(mine)
    info = sf.info(str(records[0].path))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 32000, "PCM_16")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = make_demo_data.main(["--out_dir", str(tmp_path / "a"), *SMALL])
    second = make_demo_data.main(["--out_dir", str(tmp_path / "b"), *SMALL])
    other = make_demo_data.main(["--out_dir", str(tmp_path / "c"), "--seed", "1", *SMALL])
    a, b, c = digest(first), digest(second), digest(other)
    assert a == b and len(a) == 3 * 9 + 3 + 1  # clips, attribute CSVs, manifest
    wavs = [k for k in a if k.endswith(".wav")]
    assert all(a[k] != c[k] for k in wavs)


def test_complete_tree_is_skipped_and_changed_settings_rebuild(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    make_demo_data.main(["--out_dir", str(out), *SMALL])
    before = digest(out)

    def fail(*args, **kwargs):
        raise AssertionError("a complete tree must not be rewritten")

    monkeypatch.setattr(make_demo_data, "write_wav", fail)
    make_demo_data.main(["--out_dir", str(out), *SMALL])
    assert "already complete" in capsys.readouterr().out
    monkeypatch.undo()
    make_demo_data.main(["--out_dir", str(out), *SMALL, "--source_train", "1", "--machine_types", "fan"])
    after = digest(out)
    assert len([k for k in after if k.endswith(".wav")]) == 8  # fan only: 1 + 1 train, 6 test
    assert not list((out / "pump").rglob("*.wav"))  # stale clips of the old settings are gone
    assert after != before


def test_refuses_to_write_into_a_foreign_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not made by make_demo_data"):
        make_demo_data.main(["--out_dir", str(tmp_path / "data"), *SMALL])


def test_anomalies_are_detectable_but_not_trivial(tmp_path):
    """A plain nearest-neighbour detector on signal statistics: better than chance, worse than perfect."""
    out = make_demo_data.main(
        [
            "--out_dir",
            str(tmp_path / "demo"),
            "--clip_seconds",
            "1.5",
            "--source_train",
            "10",
            "--target_train",
            "2",
            "--test_normal",
            "4",
            "--test_anomaly",
            "6",
            "--progress",
            "false",
        ]
    )
    records = discover_clips(out)
    stats = {r.path: signal_stats(sf.read(r.path, dtype="float32")[0]) for r in records}
    aucs = []
    for machine in ("fan", "gearbox", "pump"):
        train = np.stack([stats[r.path] for r in records if r.machine_type == machine and r.split == "train"])
        mean, std = train.mean(0), train.std(0) + 1e-6
        test = [r for r in records if r.machine_type == machine and r.split == "test"]
        z = (np.stack([stats[r.path] for r in test]) - mean) / std
        scores = np.linalg.norm(z[:, None] - ((train - mean) / std)[None], axis=-1).min(1)
        aucs.append(roc_auc_score([r.is_anomaly for r in test], scores))
    assert 0.6 < np.mean(aucs) < 0.99, aucs


def test_2026_style_is_two_channel_with_the_machine_weaker_and_the_noise_stronger_far(tmp_path):
    old = make_demo_data.main(["--out_dir", str(tmp_path / "old"), *SMALL])
    new = make_demo_data.main(["--out_dir", str(tmp_path / "new"), "--year_style", "2026", *SMALL])
    again = make_demo_data.main(["--out_dir", str(tmp_path / "again"), "--year_style", "2026", *SMALL])
    assert digest(new) == digest(again)
    assert "year_style" not in (old / "manifest.json").read_text()  # the 2023 manifest is as before
    old_records = discover_clips(old)
    records = discover_clips(new, channels="both")
    assert len(records) == len(old_records) == 27
    gain = 10 ** (make_demo_data.FAR_MACHINE_DB / 20)
    for before, record in zip(old_records, records):
        assert record.file_name == before.file_name.replace(".wav", "_mic_2_mic_1.wav")
        assert record.attributes == (*before.attributes, ("mic", "2"), ("mic", "1"))
        mono, _ = sf.read(before.path, dtype="int16")
        pair, _ = sf.read(record.path, dtype="int16")
        assert pair.shape == (len(mono), 2) and np.array_equal(pair[:, 0], mono)  # channel 0 as before
        near, far = pair.T.astype(float)
        lags = range(0, 200)
        lag = max(lags, key=lambda d: abs(np.dot(far[d:], near[: len(near) - d])))
        shifted = np.concatenate([np.zeros(lag), near[: len(near) - lag]])
        machine_gain = np.dot(far, shifted) / np.dot(shifted, shifted)
        noise = far - machine_gain * shifted
        assert abs(machine_gain - gain) < 0.1, (record.file_name, machine_gain)  # the machine is weaker
        assert noise.std() > 1.5 * (machine_gain * shifted).std()  # the environmental noise dominates
        assert abs(np.corrcoef(noise, near)[0, 1]) < 0.1  # a noise the near channel does not hold


def test_eval_names_anonymise_the_test_clips_and_write_the_evaluator_ground_truth(tmp_path):
    named = make_demo_data.main(["--out_dir", str(tmp_path / "named"), *SMALL])
    anonymous = make_demo_data.main(["--out_dir", str(tmp_path / "anon"), "--eval_names", *SMALL])
    assert "eval_names" not in (named / "manifest.json").read_text()
    by_bytes = {
        hashlib.sha256(Path(r.path).read_bytes()).hexdigest(): r
        for r in discover_clips(named, splits=("test",))
    }
    for machine in ("fan", "gearbox", "pump"):
        tests = discover_clips(anonymous, splits=("test",), machine_types=[machine])
        assert [r.file_name for r in tests] == [f"section_00_{i:04d}.wav" for i in range(6)]
        assert all(r.label is None and r.domain is None for r in tests)
        truth = {}
        for kind in ("data", "domain"):
            path = (
                anonymous
                / "ground_truth"
                / f"ground_truth_{kind}"
                / f"ground_truth_{machine}_section_00_test.csv"
            )
            truth[kind] = dict(line.split(",") for line in path.read_text().splitlines())
        for record in tests:
            original = by_bytes[hashlib.sha256(Path(record.path).read_bytes()).hexdigest()]  # same audio
            assert truth["data"][record.file_name] == str(int(original.label == "anomaly"))
            assert truth["domain"][record.file_name] == str(int(original.domain == "target"))
        order = [by_bytes[hashlib.sha256(Path(r.path).read_bytes()).hexdigest()].file_name for r in tests]
        assert order != sorted(order)  # shuffled: the number says nothing about label or domain
    assert {r.file_name for r in discover_clips(anonymous, splits=("train",))} == {
        r.file_name for r in discover_clips(named, splits=("train",))
    }


def test_year_styles_are_years_of_the_table_and_the_names_are_read_as_that_year(tiny_demo_dir, tmp_path):
    """YEAR_STYLE's allowed values are asd/data/demo_data.py's styles, each a year of asd/base/years.py; the 2026
    names are detected as DCASE 2026. The 2023-style names fit 2023's name patterns and get its metric
    rules, but pump and the demo's attribute keys (fan: vel) are not 2023's, so no year is detected and
    the demo's 10 s clips are not cut to 2023's 18 s."""
    assert make_demo_data._LIMITS["YEAR_STYLE"] == tuple(demo_data.STYLES)
    assert set(demo_data.STYLES) <= set(YEARS)
    mono = discover_clips(tiny_demo_dir)
    assert all(YEARS["2023"].name_fits(Path(r.path).stem) for r in mono)
    found = detect_year(mono, [tiny_demo_dir])
    assert (found.year, found.rules, found.clip_seconds) == (None, YEARS["2023"].rules, None)
    for eval_names in ([], ["--eval_names"]):
        out = make_demo_data.main(
            ["--out_dir", str(tmp_path / f"d{len(eval_names)}"), "--year_style", "2026", *eval_names, *SMALL]
        )
        assert detect_year(discover_clips(out, channels="both"), [out]).year == "2026"


def test_a_style_whose_names_leave_its_year_is_refused(tmp_path, monkeypatch):
    two_mics = demo_data.STYLES["2026"].name_attributes
    monkeypatch.setitem(demo_data.STYLES, "2023", demo_data.DemoStyle(1, two_mics))
    with pytest.raises(ValueError, match="do not fit DCASE 2023"):
        make_demo_data.main(["--out_dir", str(tmp_path / "demo"), *SMALL])
    assert not (tmp_path / "demo").exists()  # refused before anything is written
