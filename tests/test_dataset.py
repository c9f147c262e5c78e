"""DCASE file names, folders, attribute tables, labels, splits and the torch Dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from asd.data.dataset import ClipDataset, FixedLengthCollate, LabelIndex, discover_clips, stratified_split
from asd.data.fbank import PAD_VALUE, wav_to_fbank
from asd.data.names import ClipNameError, ClipRecord, parse_clip_name
from asd.data.preprocessing import AudioError, FeatureCache, load_audio

NAMES = [
    # (file name, split folder) -> section, domain, label, attributes
    ("normal_id_00_00000000.wav", "test", "00", None, "normal", ()),
    ("anomaly_id_04_00000167.wav", "test", "04", None, "anomaly", ()),
    ("normal_id_02_00000001.wav", "train", "02", None, "normal", ()),
    ("id_05_00000012.wav", "test", "05", None, None, ()),
    ("section_00_source_train_normal_0000.wav", "train", "00", "source", "normal", ()),
    ("section_02_target_test_anomaly_0099.wav", "test", "02", "target", "anomaly", ()),
    (
        "section_00_source_train_normal_0835_car_D2_spd_34V_mic_1.wav",
        "train",
        "00",
        "source",
        "normal",
        (("car", "D2"), ("spd", "34V"), ("mic", "1")),
    ),
    (
        "section_01_target_test_normal_0003_car_A1_spd_28V_mic_1_noise_1.wav",
        "test",
        "01",
        "target",
        "normal",
        (("car", "A1"), ("spd", "28V"), ("mic", "1"), ("noise", "1")),
    ),
    ("section_00_source_test_anomaly_0022_m-n_W.wav", "test", "00", "source", "anomaly", (("m-n", "W"),)),
    (
        "section_00_target_test_normal_0013_vel_620_ac_0.08.wav",
        "test",
        "00",
        "target",
        "normal",
        (("vel", "620"), ("ac", "0.08")),
    ),
    ("section_00_source_train_normal_0001_noAttribute.wav", "train", "00", "source", "normal", ()),
    (
        "section_00_source_train_normal_0000_strength_1_ambient.wav",
        "train",
        "00",
        "source",
        "normal",
        (("attribute", "strength_1_ambient"),),
    ),
    # DCASE 2026: a repeated key (two microphones), short attribute tails, evaluation-set names
    (
        "section_00_source_train_normal_0000_car_B1_spd_2_mic_2_mic_1.wav",
        "train",
        "00",
        "source",
        "normal",
        (("car", "B1"), ("spd", "2"), ("mic", "2"), ("mic", "1")),
    ),
    ("section_00_target_test_anomaly_0049_spd_1.wav", "test", "00", "target", "anomaly", (("spd", "1"),)),
    ("section_00_source_train_normal_0990_pro_A.wav", "train", "00", "source", "normal", (("pro", "A"),)),
    ("section_00_target_test_normal_0002_noAttribute.wav", "test", "00", "target", "normal", ()),
    ("section_00_0199.wav", "test", "00", None, None, ()),
    ("section_00_0000.wav", "test", "00", None, None, ()),
    ("section_03_test_0017.wav", "test", "03", None, None, ()),
    ("section_00_source_test_0004.wav", "test", "00", "source", None, ()),
    ("section_00_0007_noAttribute.wav", "test", "00", None, None, ()),
]


@pytest.mark.parametrize("name,split,section,domain,label,attributes", NAMES)
def test_parse_every_naming_scheme(name, split, section, domain, label, attributes):
    record = parse_clip_name(f"data/fan/{split}/{name}")
    assert (
        record.machine_type,
        record.split,
        record.section,
        record.domain,
        record.label,
        record.attributes,
    ) == ("fan", split, section, domain, label, attributes)
    assert record.file_name == name
    assert record.is_anomaly == {"normal": False, "anomaly": True, None: None}[label]


@pytest.mark.parametrize(
    "machine",
    ["ToyCar", "ToyCarEmu", "bearingEmu", "fan", "gearboxEmu", "sliderEmu", "valveEmu"]
    + ["ToyDrone", "ToothBrush", "SewingMachine", "BlowerDustCollector", "Sander"],
)
def test_dcase2026_machine_types_parse(machine):
    record = parse_clip_name(
        f"dev/{machine}/train/section_00_source_train_normal_0000_car_B1_spd_2_mic_2_mic_1.wav"
    )
    assert record.machine_type == machine and record.attribute_string == "car_B1_spd_2_mic_2_mic_1"
    assert record.class_name == f"{machine}/section_00/car_B1_spd_2_mic_2_mic_1"
    unlabelled = parse_clip_name(f"eval/{machine}/test/section_00_0000.wav")
    assert (unlabelled.label, unlabelled.domain, unlabelled.is_anomaly) == (None, None, None)


def test_unlabelled_record_round_trips_and_old_unknown_reads_as_none():
    record = parse_clip_name("eval/Sander/test/section_00_0007.wav")
    assert ClipRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    old = {**record.to_dict(), "label": "unknown"}  # embedding files written before label None
    assert ClipRecord.from_dict(old).label is None


def test_record_properties_and_round_trip(tmp_path):
    record = parse_clip_name("d/ToyCar/train/section_00_source_train_normal_0835_car_D2_spd_34V_mic_1.wav")
    assert record.attribute_string == "car_D2_spd_34V_mic_1"
    assert record.class_name == "ToyCar/section_00/car_D2_spd_34V_mic_1"
    bare = parse_clip_name("d/fan/test/anomaly_id_06_00000002.wav")
    assert bare.attribute_string == "noAttribute" and bare.class_name == "fan/section_06/noAttribute"
    torch.save([record.to_dict(), bare.to_dict()], tmp_path / "records.pt")
    loaded = torch.load(tmp_path / "records.pt", weights_only=True)  # plain str/list only
    assert [ClipRecord.from_dict(d) for d in loaded] == [record, bare]


@pytest.mark.parametrize(
    "path,message",
    [
        ("d/fan/train/recording_1.wav", "no DCASE scheme"),
        ("d/fan/train/section_00_source_train_normal.wav", "no DCASE scheme"),
        ("d/fan/test/section_00_source_train_normal_0000.wav", "split 'train'"),
        ("d/fan/train/section_00_source_train_anomaly_0000.wav", "train folder"),
        ("d/fan/eval/section_00_0000.wav", "split"),
        ("d/fan/train/section_00_0000.wav", "without a label"),
        ("d/fan/train/section_00_source_train_0000.wav", "without a label"),
        ("d/fan/train/id_00_00000000.wav", "without a label"),
        ("d/fan/train/section_00_source_train_normal_0000.flac", "not a .wav"),
    ],
)
def test_bad_names_raise_naming_the_file(path, message):
    with pytest.raises(ClipNameError, match=message) as info:
        parse_clip_name(path)
    assert Path(path).name in str(info.value)


def test_all_real_sample_clips_parse(samples_dir):
    new = discover_clips(samples_dir / "dcase2023_dev")
    old = discover_clips(samples_dir / "dcase2020_dev")
    assert len(new) == 28 and len(old) == 36
    assert [r.path for r in new] == sorted(r.path for r in new)
    by_name = {r.file_name: r for r in new + old}
    slider = by_name["section_00_target_test_normal_0013_vel_620_ac_0.08.wav"]
    assert (slider.machine_type, slider.domain, slider.split, slider.label) == (
        "slider",
        "target",
        "test",
        "normal",
    )
    assert slider.attributes == (("vel", "620"), ("ac", "0.08"))
    fan = by_name["section_00_source_test_anomaly_0022_m-n_W.wav"]
    assert fan.attributes == (("m-n", "W"),) and fan.is_anomaly
    car = by_name["section_00_source_train_normal_0362_car_C2_spd_31V_mic_1.wav"]
    assert car.class_name == "ToyCar/section_00/car_C2_spd_31V_mic_1" and car.split == "train"
    gear = by_name["section_00_source_train_normal_0073_volt_1.5_wt_0.wav"]
    assert gear.attributes == (("volt", "1.5"), ("wt", "0"))
    pump = by_name["anomaly_id_04_00000055.wav"]
    assert (pump.machine_type, pump.section, pump.domain, pump.label, pump.attributes) == (
        "pump",
        "04",
        None,
        "anomaly",
        (),
    )
    conveyor = by_name["normal_id_01_00000481.wav"]
    assert (conveyor.machine_type, conveyor.section, conveyor.label) == ("ToyConveyor", "01", "normal")
    assert all(r.domain in ("source", "target") and r.attributes for r in new)
    assert {r.machine_type for r in new} == {
        "ToyCar",
        "ToyTrain",
        "bearing",
        "fan",
        "gearbox",
        "slider",
        "valve",
    }
    assert sum(r.split == "train" for r in new) == 14 and not any(r.split == "train" for r in old)
    assert sum(r.label == "anomaly" for r in old) == 18


def test_discover_filters_and_clear_errors(samples_dir, tmp_path):
    only = discover_clips(samples_dir / "dcase2023_dev", splits=("train",), machine_types=["fan", "valve"])
    assert {(r.machine_type, r.split) for r in only} == {("fan", "train"), ("valve", "train")} and len(
        only
    ) == 4
    with pytest.raises(FileNotFoundError, match="nowhere"):
        discover_clips(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="drill"):
        discover_clips(samples_dir / "dcase2023_dev", machine_types=["drill"])
    (tmp_path / "empty" / "fan" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no .wav clips"):
        discover_clips(tmp_path / "empty")


# -----------------------------------------------------------------------------
# attributes_XX.csv


def make_tree(root: Path, names: dict[str, list[str]], csv_text: str | None = None) -> Path:
    tone = 0.1 * np.sin(np.arange(1600) / 10)
    for split, files in names.items():
        (root / "ToyCar" / split).mkdir(parents=True, exist_ok=True)
        for name in files:
            sf.write(str(root / "ToyCar" / split / name), tone, 16000, subtype="PCM_16")
    if csv_text is not None:
        (root / "ToyCar" / "attributes_00.csv").write_text(csv_text)
    return root


def test_attributes_csv_fills_names_without_attributes(tmp_path):
    root = make_tree(
        tmp_path,
        {
            "train": ["section_00_source_train_normal_0000_car_A1_spd_28V.wav"],
            "test": ["section_00_0000.wav", "section_00_0001.wav"],
        },
        (
            "file_name,d1p,d1v,d2p,d2v,domain\n"
            "ToyCar/train/section_00_source_train_normal_0000_car_A1_spd_28V.wav,car,A1,spd,28V,\n"
            "ToyCar/test/section_00_0000.wav,car,B2,spd,31V,target\n"
            "ToyCar/test/section_00_0001.wav,noAttribute,,,,\n"
            "ToyCar/test/section_00_0999.wav,car,C1,spd,1V,source\n"
        ),
    )  # rows without a clip are fine
    records = {r.file_name: r for r in discover_clips(root)}
    filled = records["section_00_0000.wav"]
    assert filled.attributes == (("car", "B2"), ("spd", "31V")) and filled.domain == "target"
    assert filled.label is None
    assert records["section_00_0001.wav"].attributes == () and records["section_00_0001.wav"].domain is None
    assert records["section_00_source_train_normal_0000_car_A1_spd_28V.wav"].attributes == (
        ("car", "A1"),
        ("spd", "28V"),
    )


def test_attributes_csv_disagreement_is_an_error(tmp_path):
    root = make_tree(
        tmp_path,
        {"train": ["section_00_source_train_normal_0000_car_A1_spd_28V.wav"]},
        (
            "file_name,d1p,d1v,d2p,d2v\n"
            "ToyCar/train/section_00_source_train_normal_0000_car_A1_spd_28V.wav,car,A1,spd,30V\n"
        ),
    )
    with pytest.raises(ValueError, match="disagree") as info:
        discover_clips(root)
    assert "section_00_source_train_normal_0000_car_A1_spd_28V.wav" in str(info.value)
    assert "attributes_00.csv:2" in str(info.value)


def test_attributes_csv_domain_disagreement_is_an_error(tmp_path):
    root = make_tree(
        tmp_path,
        {"test": ["section_00_source_test_normal_0000.wav"]},
        ("file_name,d1p,d1v,domain\nToyCar/test/section_00_source_test_normal_0000.wav,car,A1,target\n"),
    )
    with pytest.raises(ValueError, match="domain"):
        discover_clips(root)


# -----------------------------------------------------------------------------
# labels and splits


def synthetic_records(per_class: int = 10) -> list[ClipRecord]:
    records = []
    for machine in ("fan", "pump"):
        for value in ("A", "B", "C"):
            for i in range(per_class):
                domain = "target" if i % 2 else "source"
                name = f"section_00_{domain}_train_normal_{i:04d}_x_{value}.wav"
                records.append(parse_clip_name(f"d/{machine}/train/{name}"))
    return records


def test_label_index_is_stable_and_saved(tmp_path):
    records = synthetic_records(3)
    index = LabelIndex.from_records(records)
    assert index.names == sorted({r.class_name for r in records}) and len(index) == 6
    assert LabelIndex.from_records(records[::-1]) == index
    assert index.index(records[0]) == index.names.index("fan/section_00/x_A")
    loaded = LabelIndex.from_dict(json.loads(json.dumps(index.to_dict())))  # as saved in the model file
    assert loaded == index and [loaded.index(r) for r in records] == [index.index(r) for r in records]
    stranger = parse_clip_name("d/fan/test/section_00_target_test_normal_0000_x_Z.wav")
    assert index.get(stranger) == -1 and stranger not in index
    with pytest.raises(KeyError, match="x_Z"):
        index.index(stranger)


def test_stratified_split_keeps_every_class_in_training():
    records = synthetic_records(10) + [
        parse_clip_name("d/pump/train/section_01_source_train_normal_0000_x_Q.wav")
    ]
    train, val = stratified_split(records, 0.2, seed=0)
    assert sorted(r.path for r in train + val) == sorted(r.path for r in records)
    assert not {r.path for r in train} & {r.path for r in val}
    assert {r.class_name for r in train} == {r.class_name for r in records}  # the lone clip too
    assert len(val) == 6 * 2
    for name in {r.class_name for r in val}:
        assert sum(r.class_name == name for r in val) == 2
    assert any(r.domain == "target" for r in val)
    assert stratified_split(records, 0.2, seed=0) == (train, val)
    assert stratified_split(records, 0.2, seed=1)[1] != val
    assert stratified_split(records, 0.0, seed=0) == (sorted(records, key=lambda r: r.path), [])


# -----------------------------------------------------------------------------
# torch


def test_clip_dataset_and_fixed_length_collate(tiny_demo_dir, tmp_path):
    records = [r for r in discover_clips(tiny_demo_dir, machine_types=["fan"]) if r.split == "train"]
    index = LabelIndex.from_records(records)
    data = ClipDataset(records, index, FeatureCache(tmp_path / "cache"))
    fbank, label, record = data[0]
    assert fbank.shape == (198, 128) and record == records[0] and label == index.index(records[0])
    assert torch.equal(fbank, wav_to_fbank(load_audio(record.path)))
    loader = DataLoader(data, batch_size=3, shuffle=False, collate_fn=FixedLengthCollate(256))
    x, y, recs = next(iter(loader))
    assert x.shape == (3, 1, 256, 128) and y.dtype == torch.long
    assert y.tolist() == [index.index(r) for r in records[:3]] and recs == records[:3]
    assert torch.equal(x[0, 0, :198], fbank) and (x[0, 0, 198:] == PAD_VALUE).all()
    x_short, _, _ = FixedLengthCollate(100)([data[0]])
    assert torch.equal(x_short[0, 0], fbank[:100])
    torch.manual_seed(0)
    crops = [FixedLengthCollate(100, random_crop=True)([data[0]])[0][0, 0] for _ in range(5)]
    assert any(not torch.equal(c, fbank[:100]) for c in crops)
    assert all(any(torch.equal(c, fbank[s : s + 100]) for s in range(99)) for c in crops)
    unlabelled = ClipDataset(records[:1])
    assert unlabelled[0][1] == -1


# -----------------------------------------------------------------------------
# bad attribute tables and clips the encoder cannot hear whole


def test_non_utf8_attributes_csv_names_the_file(tmp_path):
    root = make_tree(tmp_path, {"train": ["section_00_source_train_normal_0000_car_A1.wav"]})
    csv_path = root / "ToyCar" / "attributes_00.csv"
    csv_path.write_bytes("file_name,d1p,d1v\nToyCar/train/x.wav,caf\u00e9,A1\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8") as info:
        discover_clips(root)
    assert str(csv_path) in str(info.value) and not isinstance(info.value, UnicodeDecodeError)


def write_silence(path: Path, samples: int, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros((samples, channels), dtype=np.int16), 16000, subtype="PCM_16")


def test_clips_longer_than_the_encoder_reach_are_refused_before_anything_runs(tmp_path):
    from asd.data.fbank import ENCODER_MAX_FRAMES, num_frames

    fits = 400 + (ENCODER_MAX_FRAMES - 1) * 160  # exactly ENCODER_MAX_FRAMES fbank frames
    assert num_frames(fits) == ENCODER_MAX_FRAMES and num_frames(fits + 160) == ENCODER_MAX_FRAMES + 1
    train = tmp_path / "data" / "fan" / "train"
    write_silence(train / "section_00_source_train_normal_0000_a_1.wav", fits)
    assert len(discover_clips(tmp_path / "data")) == 1
    long_clip = train / "section_00_source_train_normal_0001_a_1.wav"
    write_silence(long_clip, fits + 160)
    with pytest.raises(AudioError, match="longer than the encoder's reach") as info:
        discover_clips(tmp_path / "data")
    assert str(long_clip) in str(info.value) and "0000" not in str(info.value)
    assert len(discover_clips(tmp_path / "data", max_frames=None)) == 2  # a caller that windows them


def test_two_channel_modes_on_mono_clips_are_refused_at_discovery(tmp_path):
    clip = tmp_path / "data" / "fan" / "test" / "section_00_0000.wav"
    write_silence(clip, 16000)
    for mode in ("near", "mix"):
        assert len(discover_clips(tmp_path / "data", channels=mode)) == 1
    for mode in ("far", "residual", "both"):
        with pytest.raises(AudioError, match="second") as info:
            discover_clips(tmp_path / "data", channels=mode)
        assert str(clip) in str(info.value)
    write_silence(clip, 16000, channels=2)
    assert len(discover_clips(tmp_path / "data", channels="both")) == 1
