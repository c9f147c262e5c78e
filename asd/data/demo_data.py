"""The demo data set's files (make_demo_data.py): which clips, their names in a DCASE year's style, their
waveforms, the attribute CSVs and, for anonymised evaluation names, the evaluator's ground-truth files.

    plan = clip_plan(cfg)                   # every clip: machine, split, domain, label, value, anomaly, relpath
    wave = render_wave(cfg, plan[0])        # its samples (two channels in a two-channel style)

A style is a DCASE year of asd/base/years.py (STYLES); every name the plan gives must fit that year's name
patterns. The sounds themselves are asd/data/demo_sounds.py's. Deterministic: each clip draws from its own
seeded random stream, so the same settings give the same samples.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile as sf

from asd.base.files import atomic_path
from asd.base.years import YEARS
from asd.data.demo_sounds import ANOMALY_KINDS, MACHINES, add_anomaly, environmental_noise, normal_sound


@dataclass(frozen=True)
class DemoStyle:
    """How the demo writes the clips of one DCASE year."""

    channels: int  # 2: channel 0 near the machine, channel 1 far from it
    name_attributes: tuple[tuple[str, str], ...] = ()  # (key, value) pairs after the machine's attribute


STYLES = {  # year (a key of asd.base.years.YEARS) -> style; make_demo_data.py's YEAR_STYLE values
    "2023": DemoStyle(1),
    "2026": DemoStyle(2, (("mic", "2"), ("mic", "1"))),  # 2026 names both microphones: 'mic' repeats
}

_SECTION = "00"  # the demo's one section per machine type
_GROUND_TRUTH = "ground_truth"  # folder of the evaluator's ground-truth files (anonymised test names)
_FAR_DELAY_S = 0.004  # the far microphone hears the machine this much later (about 1.4 m further)


def clip_name(year_style: str, domain: str, split: str, label: str, index: int, attr: str, value: str) -> str:
    """A labelled clip name of ``year_style``: section_00_<domain>_<split>_<label>_NNNN_<attr>_<value>..."""
    tail = "".join(f"_{k}_{v}" for k, v in STYLES[year_style].name_attributes)
    return f"section_{_SECTION}_{domain}_{split}_{label}_{index:04d}_{attr}_{value}{tail}.wav"


def clip_plan(cfg: SimpleNamespace) -> list[dict]:
    """Every clip to write: machine, split, domain, label, index, attribute value, anomaly kind/strength."""
    plan = []
    for machine in cfg.machine_types:
        if machine not in MACHINES:
            raise ValueError(f"unknown demo machine type {machine!r}; choose from {sorted(MACHINES)}")
        values = list(MACHINES[machine]["values"])
        groups = [
            ("train", "source", "normal", cfg.source_train),
            ("train", "target", "normal", cfg.target_train),
        ]
        for domain in ("source", "target"):
            groups += [
                ("test", domain, "normal", cfg.test_normal),
                ("test", domain, "anomaly", cfg.test_anomaly),
            ]
        for split, domain, label, count in groups:
            for i in range(count):
                clip = dict(
                    machine=machine,
                    split=split,
                    domain=domain,
                    label=label,
                    index=i,
                    value=values[i % len(values)],
                    kind=None,
                    strength=0.0,
                )
                if label == "anomaly":
                    # kinds rotate over attribute-value pairs; strengths follow a golden-ratio sequence
                    # so every kind and value gets weak and strong cases
                    clip["kind"] = ANOMALY_KINDS[(i // len(values)) % len(ANOMALY_KINDS)]
                    grade = (i * 0.6180339887) % 1.0
                    clip["strength"] = cfg.min_strength + (cfg.max_strength - cfg.min_strength) * grade
                attr = MACHINES[machine]["attr"]
                name = clip_name(cfg.year_style, domain, split, label, i, attr, clip["value"])
                clip["relpath"] = f"{machine}/{split}/{name}"
                plan.append(clip)
    if cfg.eval_names:
        anonymise_test_names(cfg, plan)
    check_names(plan, cfg.year_style)
    return plan


def check_names(plan: list[dict], year_style: str) -> None:
    """Stop when a planned name does not fit ``year_style``'s name patterns in asd/base/years.py."""
    year = YEARS[year_style]
    wrong = [c["relpath"] for c in plan if not year.name_fits(Path(c["relpath"]).stem)]
    if wrong:
        raise ValueError(
            f"demo names {wrong[:3]} do not fit DCASE {year_style}'s name patterns (asd/base/years.py)"
        )


def anonymise_test_names(cfg: SimpleNamespace, plan: list[dict]) -> None:
    """Give each machine type's test clips the names section_00_0000.wav ... in a seeded random order."""
    for machine in cfg.machine_types:
        tests = [clip for clip in plan if clip["machine"] == machine and clip["split"] == "test"]
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, sorted(MACHINES).index(machine), 99]))
        for number, clip in enumerate(rng.permutation(len(tests))):
            tests[clip]["relpath"] = f"{machine}/test/section_{_SECTION}_{number:04d}.wav"


def ground_truth_files(plan: list[dict], machines: list[str]) -> dict[str, str]:
    """The evaluator's ground-truth CSVs of the anonymised test clips: relative path -> text."""
    files = {}
    for machine in machines:
        tests = sorted(
            (c for c in plan if c["machine"] == machine and c["split"] == "test"), key=lambda c: c["relpath"]
        )
        for kind, positive in (
            ("data", lambda c: c["label"] == "anomaly"),
            ("domain", lambda c: c["domain"] == "target"),
        ):
            rows = "".join(f"{Path(c['relpath']).name},{int(positive(c))}\n" for c in tests)
            name = f"ground_truth_{machine}_section_{_SECTION}_test.csv"
            files[f"{_GROUND_TRUTH}/ground_truth_{kind}/{name}"] = rows
    return files


def render_clip(cfg: SimpleNamespace, clip: dict) -> np.ndarray:
    """The int16-ready float waveform of one planned clip (one channel: near the machine)."""
    machine_index = sorted(MACHINES).index(clip["machine"])
    keys = [
        cfg.seed,
        machine_index,
        ("train", "test").index(clip["split"]),
        ("source", "target").index(clip["domain"]),
        ("normal", "anomaly").index(clip["label"]),
        clip["index"],
    ]
    rng = np.random.default_rng(np.random.SeedSequence(keys))
    sr = cfg.sample_rate
    t = np.arange(int(round(cfg.clip_seconds * sr))) / sr
    spec = MACHINES[clip["machine"]]
    offset = 0.0
    if clip["kind"] == "frequency_shift":
        offset = (3.0 + 12.0 * clip["strength"]) * rng.choice([-1.0, 1.0])
    signal, rotation = normal_sound(
        rng, spec, clip["value"], clip["domain"], t, sr, cfg.target_speed_shift, offset
    )
    if clip["kind"] not in (None, "frequency_shift"):
        signal = add_anomaly(rng, clip["kind"], clip["strength"], signal, t, sr, rotation)
    gain = cfg.clip_rms * 10 ** (rng.uniform(-1.5, 1.5) / 20)
    return np.clip(signal / (signal.std() + 1e-12) * gain, -0.99, 0.99)


def render_far(cfg: SimpleNamespace, clip: dict, near: np.ndarray) -> np.ndarray:
    """The far channel of a two-channel clip: the near clip weaker and delayed, plus environmental noise.

    Its own random stream, so the near channel is exactly the one-channel clip.
    """
    keys = [cfg.seed, sorted(MACHINES).index(clip["machine"]), clip["index"], 2026]
    keys += [("train", "test").index(clip["split"]), ("source", "target").index(clip["domain"])]
    keys += [("normal", "anomaly").index(clip["label"])]
    rng = np.random.default_rng(np.random.SeedSequence(keys))
    delay = int(round(_FAR_DELAY_S * cfg.sample_rate))
    machine = np.concatenate([np.zeros(delay), near[: len(near) - delay]])[: len(near)]
    noise = environmental_noise(rng, len(near), cfg.sample_rate)
    far = machine * 10 ** (cfg.far_machine_db / 20) + noise * near.std() * 10 ** (cfg.far_noise_db / 20)
    return np.clip(far, -0.99, 0.99)


def render_wave(cfg: SimpleNamespace, clip: dict) -> np.ndarray:
    """The samples of one planned clip in ``cfg.year_style``: (samples,) or (samples, 2) near and far."""
    near = render_clip(cfg, clip)
    if STYLES[cfg.year_style].channels == 1:
        return near
    return np.stack([near, render_far(cfg, clip, near)], axis=1)


def write_wav(wave: np.ndarray, path: Path, sr: int) -> None:
    """``wave`` as 16-bit PCM at ``path``, written atomically."""
    with atomic_path(path) as tmp:
        sf.write(str(tmp), wave, sr, format="WAV", subtype="PCM_16")


def attributes_csv(clips: list[dict], year_style: str) -> str:
    """attributes_00.csv of one machine type's ``clips``: file_name, then d1p, d1v, d2p, ... per attribute."""
    extra = STYLES[year_style].name_attributes
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file_name"] + [f"d{n}{part}" for n in range(1, len(extra) + 2) for part in "pv"])
    for clip in clips:
        pairs = ((MACHINES[clip["machine"]]["attr"], clip["value"]), *extra)
        writer.writerow([clip["relpath"], *(item for pair in pairs for item in pair)])
    return out.getvalue()
