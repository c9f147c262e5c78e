"""The prepared GPU check: how fast every stage of the pipeline runs on one GPU, in one script.

    bench/gpu_check.sh --wheels .gpu_wheels --out_dir runs/gpu_check     # on the GPU machine (under 8 minutes)
    python bench/gpu_check.py --cpu_smoke true --out_dir /tmp/gpu_check  # CPU dry run, tiny sizes

On a scaled synthetic DCASE-2023-style set (make_demo_data.py: fan, pump, gearbox; 10 s clips; the dry
run: two-channel 2026 style, so train.py and extraction hear the near channel of stereo clips) it
measures, and writes to OUT_DIR/gpu_check.txt (tables) and OUT_DIR/gpu_check.json (numbers), with
everything bulky (data, caches, models, logs) under WORK_DIR:
  1. fbank throughput: CPU DataLoader workers (read + kaldi fbank per clip) against the batched
     path asd.data.fbank.wavs_to_fbank_batch on the GPU;
  2. EAT encoder forward and LoRA training clips/s at each of BATCH_SIZES, the published recipe's
     training step (bench/encoder.py, each in its own process), MFU against this run's measured
     bf16 matmul rate and against the card's datasheet peak, and peak GPU memory;
  3. the GPU's idle share while training from a DataLoader (time waiting for a batch / total),
     on the first epoch (fbanks computed and cached) and on a later one (read from the cache);
  4. `torchrun --nproc_per_node 1 train.py` with the published recipe (asdkit-eat-lora: waveforms
     tiled/cropped to TRAIN_CLIP_SECONDS, DCASE 2023's 18 s) for TRAIN_EPOCHS, and (DDP_CHECK) a
     2-process CPU (gloo) torchrun of the tiny encoder: train.py only wraps the model in DDP with 2+
     processes;
  5. extract_embeddings.py clips/s (the recipe's fixed-length extraction: read, crop, fbank, statistics,
     embedding) and the two scorers' wall times;
  6. (MODES_CHECK) this project's other modes end to end through run_all.py on a small DCASE-2026-style
     two-channel set with the tiny encoder: each of CHANNEL_MODES (a noise-aware one, residual), the
     recipe's fixed-length crops in training and extraction, ASDKit's four back ends, and run_all
     --seeds over MODE_SEEDS (mean +- std table);
  7. (BASELINE_CHECK) the DCASE baseline autoencoder scorer per machine type: features, training for
     BASELINE_EPOCHS on the device, MSE and MAHALA scores of the test clips;
and from those rates estimates the whole DCASE 2023 development pipeline (DCASE_MACHINES machine
types x DCASE_TRAIN training + DCASE_TEST test clips, DCASE_EPOCHS epochs of the recipe, both
scorers). The scaled set keeps every per-clip cost of the real one (same crop length, same model), so
the per-clip rates carry over; fixed costs (process start, model load) are reported apart.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from asd.base.cli import exit_if_help  # noqa: E402

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import torch  # noqa: E402

from asd.base.cli import parse_config, print_config  # noqa: E402
from asd.base.runtime import resolve_device  # noqa: E402
from asd.data import preprocessing  # noqa: E402
from asd.run.gpu_bench import Report, baseline_autoencoder, encoder_rates, fbank_throughput, idle_share  # noqa: E402
from asd.run.gpu_runs import estimate, make_data, modes, pipeline  # noqa: E402

# gpu_check.txt (tables) and gpu_check.json (numbers) go here
OUT_DIR = "runs/gpu_check"
# synthetic data, caches, trained files and logs; "" = OUT_DIR/work
WORK_DIR = ""
# CPU dry run with tiny sizes (tiny encoder, 2 s clips, few clips): checks the script
CPU_SMOKE = False
# "auto" (CUDA when present), "cpu", "cuda"
DEVICE = "auto"
# random-init encoder size (speed only; no checkpoint needed)
MODEL_SIZE = "base"
# synthetic source-domain training normals per machine type (3 types)
SOURCE_TRAIN = 60
# synthetic target-domain training normals per machine type
TARGET_TRAIN = 10
# synthetic test normals and as many anomalies, per domain and machine type
TEST_CLIPS = 10
# synthetic clip length (DCASE 2023: 10 s)
CLIP_SECONDS = 10.0
# synthetic set's style: "2023" (mono) or "2026" (two channels; train.py and extraction hear channel 0, near)
YEAR_STYLE = "2023"
# fbank frames per clip fed to the encoder
FRAMES = 1024
# encoder forward / LoRA training batch sizes measured
BATCH_SIZES = [8, 16, 32]
# CPU DataLoader worker counts measured for the fbank
FBANK_WORKERS = [4, 12]
# batch of the DataLoader-fed training, train.py and extraction
TRAIN_BATCH_SIZE = 16
# DataLoader workers while training (idle share, train.py)
NUM_WORKERS = 8
# epochs of the torchrun train.py run (the last one's measured time gives the training rate)
TRAIN_EPOCHS = 2
# train.py's fixed-length crop in seconds (the recipe's CLIP_SECONDS auto gives 18 for DCASE 2023)
TRAIN_CLIP_SECONDS = 18.0
# also a 2-process CPU torchrun of train.py (tiny encoder): the DDP wrapper
DDP_CHECK = True
# run_all.py on a small two-channel DCASE-2026-style set: channel modes, crops, ASDKit back ends, seeds
MODES_CHECK = True
# channel modes run there (the first with MODE_SEEDS); the dry run's main set covers near (YEAR_STYLE 2026)
CHANNEL_MODES = ["residual"]
# seeds of the first channel mode's run_all --seeds (two or more: mean +- std)
MODE_SEEDS = [0, 1]
# train and score the DCASE baseline autoencoder (asd/backends/baseline_ae.py) on the synthetic set
BASELINE_CHECK = True
# its training epochs (the baseline's 100)
BASELINE_EPOCHS = 100
# dense bf16 peak in TFLOP/s; 0 = by the card's name (H100/H200 SXM: 989)
DATASHEET_TFLOPS = 0.0
# estimate: machine types of the DCASE 2023 development set
DCASE_MACHINES = 7
# estimate: training clips per machine type
DCASE_TRAIN = 1000
# estimate: test clips per machine type
DCASE_TEST = 200
# estimate: training epochs (the published recipe's 25)
DCASE_EPOCHS = 25
# allowed values of the constants above, checked by asd.base.cli.parse_config
_LIMITS = {
    "DEVICE": ("auto", "cpu", "cuda"),
    "MODEL_SIZE": ("tiny", "base", "large"),
    "SOURCE_TRAIN": (1, None),
    "TARGET_TRAIN": (1, None),
    "TEST_CLIPS": (1, None),
    "CLIP_SECONDS": (">0", None),
    "YEAR_STYLE": ("2023", "2026"),
    "FRAMES": (16, None),
    "BATCH_SIZES": (1, None),
    "FBANK_WORKERS": (0, None),
    "TRAIN_BATCH_SIZE": (1, None),
    "NUM_WORKERS": (0, None),
    "TRAIN_EPOCHS": (1, None),
    "TRAIN_CLIP_SECONDS": (0.025, None),
    "CHANNEL_MODES": preprocessing.CHANNEL_MODES,
    "MODE_SEEDS": (0, None),
    "BASELINE_EPOCHS": (1, None),
    "DATASHEET_TFLOPS": (0.0, None),
    "DCASE_MACHINES": (1, None),
    "DCASE_TRAIN": (1, None),
    "DCASE_TEST": (1, None),
    "DCASE_EPOCHS": (1, None),
}

_SMOKE = {
    "device": "cpu",
    "model_size": "tiny",
    "source_train": 4,
    "target_train": 2,
    "test_clips": 1,
    "clip_seconds": 2.0,
    "year_style": "2026",
    "frames": 128,
    "batch_sizes": [2],
    "fbank_workers": [1],
    "train_batch_size": 4,
    "num_workers": 1,
    "train_clip_seconds": 1.0,
    "baseline_epochs": 2,
}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(globals(), argv, description=__doc__)
    print_config(cfg)
    if cfg.cpu_smoke:
        for key, value in _SMOKE.items():
            setattr(cfg, key, value)
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out_dir).resolve()
    work_dir = Path(cfg.work_dir).resolve() if cfg.work_dir else out_dir / "work"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )

    from asd.data.dataset import discover_clips

    data_dir = work_dir / "data"
    data_seconds = make_data(cfg, data_dir)
    records = discover_clips(data_dir)
    train = [r for r in records if r.split == "train"]
    counts = {"train": len(train), "test": len(records) - len(train)}
    report.add(
        "setup",
        f"device: {name}; torch {torch.__version__}; python {sys.version.split()[0]}; "
        f"{os.cpu_count()} CPUs\nsynthetic data: {counts['train']} training + {counts['test']} test "
        f"clips of {cfg.clip_seconds} s, {cfg.year_style} style, in {data_dir} ({data_seconds:.1f} s to write)",
        {"device": name, "counts": counts, "smoke": cfg.cpu_smoke},
    )
    report.add("fbank throughput", *fbank_throughput(cfg, train, device))
    text, encoder = encoder_rates(cfg, device)
    report.add("encoder", text, encoder)
    text, idle = idle_share(cfg, train, device, work_dir / "idle_cache")
    report.add("GPU idle share while training from the DataLoader", text, idle)
    text, steps = pipeline(cfg, data_dir, work_dir / "pipeline", counts)
    report.add("pipeline steps", text, steps)
    report.add("estimate", *estimate(cfg, counts, steps))
    if cfg.baseline_check:
        report.add("baseline autoencoder", *baseline_autoencoder(cfg, records, device))
    if cfg.modes_check:
        report.add("channel modes, crops, back ends, seeds (run_all)", *modes(cfg, work_dir / "modes"))
    total = time.perf_counter() - report.started
    report.add(
        "done", f"gpu_check took {total:.0f} s; tables in {out_dir / 'gpu_check.txt'}", {"seconds": total}
    )
    return report.numbers


if __name__ == "__main__":
    main()
