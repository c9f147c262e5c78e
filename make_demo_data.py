"""Write a small synthetic DCASE-2023-style data set, so the whole pipeline can run without real data.

    python make_demo_data.py                                  # demo_data/, 10 s clips
    python make_demo_data.py --clip_seconds 4 --source_train 20
    python make_demo_data.py --year_style 2026 --out_dir demo_data_2026   # two-channel clips

Layout: OUT_DIR/<machine>/{train,test}/section_00_{source|target}_{train|test}_{normal|anomaly}_NNNN_<key>_<value>.wav
plus OUT_DIR/<machine>/attributes_00.csv. Each machine type has its own sound, the attribute value sets
its operating speed and load, the target domain is a shifted operating condition, and test anomalies
(bearing whine, rattle, imbalance, frequency shift) come at graded strengths from barely audible to
obvious (asd/data/demo_sounds.py; the files: asd/data/demo_data.py). Deterministic: the same settings give
byte-identical files.

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

import json
import sys
from pathlib import Path

from asd.base.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

from tqdm import tqdm

from asd.base.cli import parse_config, print_config
from asd.base.errors import run_script
from asd.base.files import atomic_write_text
from asd.data.demo_data import STYLES, attributes_csv, clip_plan, ground_truth_files, render_wave, write_wav

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
# allowed values of the constants above, checked by asd.base.cli.parse_config
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
_STYLE_2026 = ("year_style", "far_machine_db", "far_noise_db")  # settings only two-channel styles use


def settings_of(cfg) -> dict:
    """The settings that decide the files' bytes, as they read back from JSON (the 2026-only ones only
    in a two-channel style, so a 2023-style manifest is what it was before the style existed)."""
    mono = STYLES[cfg.year_style].channels == 1
    skip = {"out_dir", "progress"} | (set(_STYLE_2026) if mono else set())
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
        write_wav(render_wave(cfg, clip), out_dir / clip["relpath"], cfg.sample_rate)
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
