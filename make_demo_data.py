"""Write a small synthetic DCASE-2023-style data set, so the whole pipeline can run without real data.

    python make_demo_data.py                                  # demo_data/, 10 s clips
    python make_demo_data.py --clip_seconds 4 --source_train 20
    python make_demo_data.py --year_style 2026 --out_dir demo_data_2026   # two-channel clips

Layout: OUT_DIR/<machine>/{train,test}/section_00_{source|target}_{train|test}_{normal|anomaly}_NNNN_<key>_<value>.wav
plus OUT_DIR/<machine>/attributes_00.csv. Each machine type has its own sound (fan: blade-pass
tone and airflow noise; pump: mains hum with piston knocks; gearbox: gear mesh with shaft-rate
sidebands); the attribute value sets the operating speed and load; the target domain is a shifted
operating condition (another speed, louder and differently coloured background). Test anomalies are
bearing whine, rattle, imbalance modulation or an inharmonic frequency shift, at graded strengths
from barely audible to obvious. Deterministic: the same settings give byte-identical files.

YEAR_STYLE 2026 writes DCASE-2026-style two-channel clips: channel 0 (near the machine) holds
exactly the samples of the 2023-style clip, channel 1 (far from it) the same machine sound weaker
(FAR_MACHINE_DB) and a little later, plus an environmental noise the near channel does not hold
(rumble, a murmur of voices and random clatter; FAR_NOISE_DB); the names carry two microphone
attributes as 2026's do (..._vel_6_mic_2_mic_1.wav: the key 'mic' repeats).

EVAL_NAMES writes the test clips as an evaluation set is published: anonymised names
(section_00_0000.wav ..., shuffled: no label, no domain), with the labels and domains in the official
evaluator's ground-truth files, OUT_DIR/ground_truth/ground_truth_{data,domain}/ground_truth_<machine>_section_00_test.csv
(``name,<0|1>``; 1 = anomaly, 1 = target domain). The audio is the same as under the labelled names.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from asd.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import numpy as np
import soundfile as sf
from scipy.signal import oaconvolve
from tqdm import tqdm

from asd.cli import parse_config, print_config
from asd.errors import run_script
from asd.files import atomic_path, atomic_write_text

# where the tree is written
OUT_DIR = "demo_data"
# same seed, same bytes
SEED = 0
# any of: fan, pump, gearbox
MACHINE_TYPES = ["fan", "pump", "gearbox"]
# clip length (DCASE clips are 10 s)
CLIP_SECONDS = 10.0
# Hz
SAMPLE_RATE = 16000
# source-domain training normals per machine type
SOURCE_TRAIN = 40
# target-domain training normals per machine type
TARGET_TRAIN = 6
# test normals per domain and machine type
TEST_NORMAL = 10
# test anomalies per domain and machine type
TEST_ANOMALY = 10
# weakest anomaly (0..1); strengths grade up to MAX_STRENGTH
MIN_STRENGTH = 0.15
# strongest anomaly
MAX_STRENGTH = 1.0
# target domain runs this much faster than the source
TARGET_SPEED_SHIFT = 1.12
# loudness of every written clip (before gain jitter)
CLIP_RMS = 0.05
# "2026": two-channel clips (channel 0 near the machine, channel 1 far) and 2026 names
YEAR_STYLE = "2023"
# 2026 style: level of the machine on the far channel relative to the near one (dB)
FAR_MACHINE_DB = -10.0
# 2026 style: environmental noise on the far channel relative to the near clip (dB)
FAR_NOISE_DB = -3.0
# test clips under anonymised evaluation-set names; labels in OUT_DIR/ground_truth
EVAL_NAMES = False
# show a progress bar
PROGRESS = True
# allowed values of the constants above, checked by asd.cli.parse_config
_LIMITS = {
    "SEED": (0, None),
    "CLIP_SECONDS": (">0", None),
    "SAMPLE_RATE": (1000, None),
    "SOURCE_TRAIN": (1, None),
    "TARGET_TRAIN": (1, None),
    "TEST_NORMAL": (1, None),
    "TEST_ANOMALY": (1, None),
    "MIN_STRENGTH": (0.0, 1.0),
    "MAX_STRENGTH": (0.0, 1.0),
    "TARGET_SPEED_SHIFT": (">0", None),
    "CLIP_RMS": (">0", 1.0),
    "YEAR_STYLE": ("2023", "2026"),
    "FAR_MACHINE_DB": (-60.0, "<0"),
    "FAR_NOISE_DB": (-60.0, 20.0),
}

_MANIFEST = "manifest.json"
_STYLE_2026 = ("year_style", "far_machine_db", "far_noise_db")  # settings only the 2026 style uses
_GROUND_TRUTH = "ground_truth"  # folder of the evaluator's ground-truth files (EVAL_NAMES)
_FAR_DELAY_S = 0.004  # the far microphone hears the machine this much later (about 1.4 m further)
_ANOMALY_KINDS = ("bearing_whine", "rattle", "imbalance", "frequency_shift")

# per machine type: attribute key and values (value -> speed factor, load factor), and its sound
_MACHINES = {
    "fan": dict(
        attr="vel",
        values={"6": (1.0, 1.0), "8": (1.3, 1.25)},
        f0=24.0,
        harmonics=10,
        tilt=1.2,
        boost=(7, 3.0),
        noise=0.9,
        noise_slope=0.6,
        knocks=0.0,
        knock_div=1,
        knock_freq=0.0,
    ),
    "pump": dict(
        attr="load",
        values={"1": (1.0, 1.0), "2": (1.08, 1.6)},
        f0=50.0,
        harmonics=14,
        tilt=0.8,
        boost=(2, 1.5),
        noise=0.5,
        noise_slope=1.0,
        knocks=0.8,
        knock_div=12,
        knock_freq=900.0,
    ),
    "gearbox": dict(
        attr="spd",
        values={"20": (1.0, 1.0), "30": (1.5, 1.3)},
        f0=19.0,
        harmonics=6,
        tilt=1.5,
        boost=(21, 4.0),
        noise=0.4,
        noise_slope=0.3,
        knocks=0.3,
        knock_div=1,
        knock_freq=2500.0,
    ),
}


# -----------------------------------------------------------------------------
# sound building blocks (all vectorised over samples)


def smooth_noise(rng: np.random.Generator, n: int, points: int, scale: float) -> np.ndarray:
    """A slow random curve of ``n`` samples through ``points`` random knots (std ``scale``)."""
    knots = rng.normal(0.0, scale, points)
    return np.interp(np.linspace(0, points - 1, n), np.arange(points), knots)


def coloured_noise(rng: np.random.Generator, n: int, sr: int, slope: float, cutoff: float) -> np.ndarray:
    """Gaussian noise with a 1/f**slope spectrum and a gentle low-pass at ``cutoff`` Hz, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    shape = 1.0 / np.maximum(freqs, 20.0) ** (slope / 2) / np.sqrt(1.0 + (freqs / cutoff) ** 4)
    noise = np.fft.irfft(spectrum * shape, n)
    return noise / (noise.std() + 1e-12)


def harmonic_hum(
    rng, t: np.ndarray, f0: float, count: int, tilt: float, boost: tuple, offset: float = 0.0
) -> np.ndarray:
    """Harmonics of a jittering fundamental; ``offset`` Hz added to every partial makes it inharmonic.

    exp(i*k*phase) comes from repeated complex multiplication (no per-harmonic trigonometry).
    """
    sr = 1.0 / (t[1] - t[0])
    wander = 1.0 + smooth_noise(rng, len(t), 12, 0.004)
    rotor = np.exp(1j * (2 * np.pi * np.cumsum(f0 * wander) / sr))
    amps = np.arange(1, count + 1) ** -tilt * rng.uniform(0.85, 1.15, count)
    if boost[0] <= count:
        amps[boost[0] - 1] *= boost[1]
    amps[np.arange(1, count + 1) * f0 + offset >= sr / 2 - 200] = 0.0  # nothing above Nyquist
    weights = amps * np.exp(1j * rng.uniform(0, 2 * np.pi, count))
    total = np.zeros(len(t), dtype=complex)
    partial = np.ones(len(t), dtype=complex)
    for weight in weights:
        partial *= rotor
        total += weight * partial
    total *= np.exp(1j * 2 * np.pi * offset * t)
    return total.imag / np.sqrt(np.sum(amps**2))


def impacts(
    rng, n: int, sr: int, times: np.ndarray, amps: np.ndarray, freq: float, decay_s: float
) -> np.ndarray:
    """Impulses at ``times`` (s) each ringing a damped resonance at ``freq`` Hz."""
    train = np.zeros(n)
    index = np.clip((times * sr).astype(int), 0, n - 1)
    np.add.at(train, index, amps)
    kt = np.arange(int(decay_s * 5 * sr)) / sr
    kernel = np.exp(-kt / decay_s) * np.sin(2 * np.pi * freq * kt)
    return oaconvolve(train, kernel)[:n]


def normal_sound(
    rng, spec: dict, value: str, domain: str, t: np.ndarray, sr: int, speed_shift: float, offset: float = 0.0
):
    """The machine's normal sound for one attribute value and domain: (signal, rotation rate in Hz)."""
    speed, load = spec["values"][value]
    if domain == "target":
        speed *= speed_shift
    f0 = spec["f0"] * speed * rng.uniform(0.99, 1.01)
    n = len(t)
    hum = harmonic_hum(rng, t, f0, spec["harmonics"], spec["tilt"], spec["boost"], offset) * load
    noise_slope = spec["noise_slope"] + (0.6 if domain == "target" else 0.0)
    noise_level = spec["noise"] * (1.6 if domain == "target" else 1.0) * rng.uniform(0.9, 1.1)
    signal = hum + noise_level * coloured_noise(rng, n, sr, noise_slope, 5000.0)
    if spec["knocks"] > 0:
        rate = f0 / spec["knock_div"]
        beats = np.arange(rng.uniform(0, 1 / rate), n / sr, 1 / rate)
        times = beats + rng.normal(0, 0.002, len(beats))
        amps = spec["knocks"] * load * rng.uniform(0.8, 1.2, len(times))
        signal += impacts(rng, n, sr, times, amps, spec["knock_freq"] * rng.uniform(0.97, 1.03), 0.004) * 6.0
    return signal, f0


# -----------------------------------------------------------------------------
# anomalies


def add_anomaly(
    rng, kind: str, strength: float, normal: np.ndarray, t: np.ndarray, sr: int, rotation: float
) -> np.ndarray:
    """``normal`` with one fault of ``kind`` mixed in; ``strength`` in (0, 1] grades how audible it is.

    (The fourth kind, frequency_shift, changes the machine itself and is made in render_clip.)
    """
    n = len(t)
    level = normal.std() * 10 ** ((-28 + 24 * strength) / 20)  # -28 dB .. -4 dB below the machine
    if kind == "bearing_whine":
        freq = rng.uniform(2500, 5000) * (1 + smooth_noise(rng, n, 8, 0.01))
        whine = np.sin(2 * np.pi * np.cumsum(freq) / sr) * (1 + 0.3 * np.sin(2 * np.pi * rotation * t))
        return normal + level * whine / whine.std()
    if kind == "rattle":
        count = max(1, int(rng.uniform(3, 8) * n / sr))
        times = np.sort(rng.uniform(0, n / sr, count))
        rattle = impacts(rng, n, sr, times, rng.uniform(0.5, 1.0, count), rng.uniform(1200, 3000), 0.003)
        return normal + 2.5 * level * rattle / (rattle.std() + 1e-12)
    if kind == "imbalance":
        depth = 0.15 + 0.6 * strength
        return normal * (1 + depth * np.sin(2 * np.pi * rotation * t + rng.uniform(0, 2 * np.pi)))
    raise ValueError(f"unknown anomaly kind {kind!r}")


# -----------------------------------------------------------------------------
# the tree


def clip_plan(cfg) -> list[dict]:
    """Every clip to write: machine, split, domain, label, index, attribute value, anomaly kind/strength."""
    plan = []
    for machine in cfg.machine_types:
        if machine not in _MACHINES:
            raise ValueError(f"unknown demo machine type {machine!r}; choose from {sorted(_MACHINES)}")
        values = list(_MACHINES[machine]["values"])
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
                    clip["kind"] = _ANOMALY_KINDS[(i // len(values)) % len(_ANOMALY_KINDS)]
                    grade = (i * 0.6180339887) % 1.0
                    clip["strength"] = cfg.min_strength + (cfg.max_strength - cfg.min_strength) * grade
                spec = _MACHINES[machine]
                mics = "_mic_2_mic_1" if cfg.year_style == "2026" else ""
                name = f"section_00_{domain}_{split}_{label}_{i:04d}_{spec['attr']}_{clip['value']}{mics}.wav"
                clip["relpath"] = f"{machine}/{split}/{name}"
                plan.append(clip)
    if cfg.eval_names:
        anonymise_test_names(cfg, plan)
    return plan


def anonymise_test_names(cfg, plan: list[dict]) -> None:
    """Give each machine type's test clips the names section_00_0000.wav ... in a seeded random order."""
    for machine in cfg.machine_types:
        tests = [clip for clip in plan if clip["machine"] == machine and clip["split"] == "test"]
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, sorted(_MACHINES).index(machine), 99]))
        for number, clip in enumerate(rng.permutation(len(tests))):
            tests[clip]["relpath"] = f"{machine}/test/section_00_{number:04d}.wav"


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
            files[f"{_GROUND_TRUTH}/ground_truth_{kind}/ground_truth_{machine}_section_00_test.csv"] = rows
    return files


def render_clip(cfg, clip: dict) -> np.ndarray:
    """The int16-ready float waveform of one planned clip."""
    machine_index = sorted(_MACHINES).index(clip["machine"])
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
    spec = _MACHINES[clip["machine"]]
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


def environmental_noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Unit-RMS background of a workshop: rumble, a murmur of voices (noise in a speech band, slowly
    swelling) and random clatter; nothing of it is in the near channel."""
    rumble = coloured_noise(rng, n, sr, 1.8, 300.0)
    swell = np.clip(1.0 + smooth_noise(rng, n, max(2, int(n / sr * 3)), 0.6), 0.1, None)
    murmur = coloured_noise(rng, n, sr, 0.3, 2500.0) * swell
    count = max(1, int(rng.uniform(1, 4) * n / sr))
    times = np.sort(rng.uniform(0, n / sr, count))
    clatter = impacts(rng, n, sr, times, rng.uniform(0.3, 1.0, count), rng.uniform(400, 1500), 0.02)
    noise = rumble + 0.7 * murmur / murmur.std() + 0.5 * clatter / (clatter.std() + 1e-12)
    return noise / (noise.std() + 1e-12)


def render_far(cfg, clip: dict, near: np.ndarray) -> np.ndarray:
    """The far channel of a 2026-style clip: the near clip weaker and delayed, plus environmental noise.

    Its own random stream, so the near channel is exactly the 2023-style clip.
    """
    keys = [cfg.seed, sorted(_MACHINES).index(clip["machine"]), clip["index"], 2026]
    keys += [("train", "test").index(clip["split"]), ("source", "target").index(clip["domain"])]
    keys += [("normal", "anomaly").index(clip["label"])]
    rng = np.random.default_rng(np.random.SeedSequence(keys))
    delay = int(round(_FAR_DELAY_S * cfg.sample_rate))
    machine = np.concatenate([np.zeros(delay), near[: len(near) - delay]])[: len(near)]
    noise = environmental_noise(rng, len(near), cfg.sample_rate)
    far = machine * 10 ** (cfg.far_machine_db / 20) + noise * near.std() * 10 ** (cfg.far_noise_db / 20)
    return np.clip(far, -0.99, 0.99)


def write_wav(wave: np.ndarray, path: Path, sr: int) -> None:
    with atomic_path(path) as tmp:
        sf.write(str(tmp), wave, sr, format="WAV", subtype="PCM_16")


def attributes_csv(clips: list[dict], year_style: str = "2023") -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    mics = year_style == "2026"
    writer.writerow(["file_name", "d1p", "d1v"] + (["d2p", "d2v", "d3p", "d3v"] if mics else []))
    for clip in clips:
        row = [clip["relpath"], _MACHINES[clip["machine"]]["attr"], clip["value"]]
        writer.writerow(row + (["mic", "2", "mic", "1"] if mics else []))
    return out.getvalue()


def settings_of(cfg) -> dict:
    """The settings that decide the files' bytes, as they read back from JSON (the 2026-only ones only
    in that style, so a 2023-style manifest is what it was before the style existed)."""
    skip = {"out_dir", "progress"} | (set(_STYLE_2026) if cfg.year_style == "2023" else set())
    skip |= set() if cfg.eval_names else {"eval_names"}
    return json.loads(json.dumps({k: v for k, v in vars(cfg).items() if k not in skip}))


def read_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def tree_is_complete(out_dir: Path, settings: dict) -> bool:
    manifest = read_manifest(out_dir)
    return (
        manifest is not None
        and manifest.get("complete")
        and manifest.get("settings") == settings
        and all((out_dir / rel).is_file() for rel in manifest.get("files", []))
    )


def remove_stale_files(out_dir: Path, keep: set[str]) -> None:
    """Delete files an earlier run of this script listed that the new settings do not produce."""
    manifest = read_manifest(out_dir)
    for rel in (manifest or {}).get("files", []):
        if rel not in keep and (out_dir / rel).is_file():
            (out_dir / rel).unlink()


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(globals(), argv, description=__doc__)
    print_config(cfg)
    out_dir = Path(cfg.out_dir)
    settings = settings_of(cfg)
    if tree_is_complete(out_dir, settings):
        print(f"{out_dir}: demo data already complete for these settings")
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and read_manifest(out_dir) is None:
        raise FileExistsError(
            f"{out_dir} exists, is not empty and was not made by make_demo_data.py; choose another --out_dir"
        )
    plan = clip_plan(cfg)
    csv_files = {f"{m}/attributes_00.csv": [c for c in plan if c["machine"] == m] for m in cfg.machine_types}
    truth = ground_truth_files(plan, cfg.machine_types) if cfg.eval_names else {}
    files = [c["relpath"] for c in plan] + list(csv_files) + list(truth)
    remove_stale_files(out_dir, set(files))
    manifest = {"complete": False, "settings": settings, "files": files}
    atomic_write_text(json.dumps(manifest, indent=1), out_dir / _MANIFEST)
    for clip in tqdm(plan, desc="demo clips", disable=not cfg.progress, file=sys.stdout):
        wave = render_clip(cfg, clip)
        if cfg.year_style == "2026":
            wave = np.stack([wave, render_far(cfg, clip, wave)], axis=1)
        write_wav(wave, out_dir / clip["relpath"], cfg.sample_rate)
    for rel, clips in csv_files.items():
        atomic_write_text(attributes_csv(clips, cfg.year_style), out_dir / rel)
    for rel, text in truth.items():
        atomic_write_text(text, out_dir / rel)
    manifest["complete"] = True
    atomic_write_text(json.dumps(manifest, indent=1), out_dir / _MANIFEST)
    print(
        f"wrote {len(plan)} clips of {cfg.clip_seconds:g} s for {len(cfg.machine_types)} machine types to {out_dir}"
    )
    return out_dir


if __name__ == "__main__":
    sys.exit(run_script(main))
