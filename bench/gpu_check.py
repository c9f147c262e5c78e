"""The prepared GPU check: how fast every stage of the pipeline runs on one GPU, in one script.

    bench/gpu_check.sh --wheels .gpu_wheels --out_dir runs/gpu_check     # on the GPU machine (under 8 minutes)
    python bench/gpu_check.py --cpu_smoke true --out_dir /tmp/gpu_check  # CPU dry run, tiny sizes

On a scaled synthetic DCASE-2023-style set (make_demo_data.py: fan, pump, gearbox; 10 s clips; the dry
run: two-channel 2026 style, so train.py and extraction hear the near channel of stereo clips) it
measures, and writes to OUT_DIR/gpu_check.txt (tables) and OUT_DIR/gpu_check.json (numbers), with
everything bulky (data, caches, models, logs) under WORK_DIR:
  1. fbank throughput: CPU DataLoader workers (read + kaldi fbank per clip) against the batched
     path asd.fbank.wavs_to_fbank_batch on the GPU;
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
and from those rates estimates the whole DCASE 2023 development pipeline (DCASE_MACHINES machine
types x DCASE_TRAIN training + DCASE_TEST test clips, DCASE_EPOCHS epochs of the recipe, both
scorers). The scaled set keeps every per-clip cost of the real one (same crop length, same model), so
the per-clip rates carry over; fixed costs (process start, model load) are reported apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_ENCODER_BENCH = _ROOT / "bench" / "encoder.py"  # its settings are the encoder measurements'
sys.path.insert(0, str(_ROOT))

from asd.cli import exit_if_help  # noqa: E402

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import torch  # noqa: E402

from asd import benchmark  # noqa: E402
from asd.cli import check_script_arguments, parse_config, print_config  # noqa: E402
from asd.files import atomic_write_text  # noqa: E402
from asd.history import history_path, read_history  # noqa: E402
from asd.runtime import resolve_device  # noqa: E402

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
# allowed values of the constants above, checked by asd.cli.parse_config
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
    "CHANNEL_MODES": ("near", "far", "mix", "residual", "both"),
    "MODE_SEEDS": (0, None),
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
}
# the two-channel set of MODES_CHECK: one machine type, enough rows for ASDKit's back ends per type
# (k-means: 16 source rows, SMOTE 0.2 with 2 neighbours: 0.2 x source > target, also in the
# out-of-fold fits of the thresholds (min(5, target rows) folds): 4 target rows, 30 source rows)
_MODES_DATA = {
    "year_style": "2026",
    "machine_types": "fan",
    "clip_seconds": 1.0,
    "source_train": 30,
    "target_train": 4,
    "test_normal": 1,
    "test_anomaly": 1,
}
# run_all step overrides of MODES_CHECK: the tiny encoder, one short epoch, no plots
_MODES_OVERRIDES = [
    "train.epochs=1",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.lora_rank=4",
    "train.num_workers=0",
    "train_deepSVDD.svdd_epochs=5",
    "evaluate.plots=false",
    "evaluate.report=false",
    "evaluate_deepSVDD.plots=false",
    "evaluate_deepSVDD.report=false",
]


# -----------------------------------------------------------------------------
# helpers


def timed(fn):
    """(result, seconds) of ``fn()``."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


class Report:
    """Sections of text and a dict of numbers, written out after every section (a crash keeps the rest)."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.sections, self.numbers = out_dir, [], {}
        self.started = self.last = time.perf_counter()

    def add(self, title: str, text: str, numbers: dict) -> None:
        now = time.perf_counter()
        self.sections.append(
            f"== {title} ({now - self.last:.0f} s; {now - self.started:.0f} s in) ==\n{text}\n"
        )
        self.last = now
        self.numbers[title] = numbers
        print(self.sections[-1], flush=True)
        atomic_write_text("\n".join(self.sections), self.out_dir / "gpu_check.txt")
        atomic_write_text(json.dumps(self.numbers, indent=2, default=str), self.out_dir / "gpu_check.json")


# -----------------------------------------------------------------------------
# the measurements


def options(**values) -> list[str]:
    """Command-line words ["--name", "value", ...] of ``values``."""
    return [word for name, value in values.items() for word in (f"--{name}", str(value))]


def make_data(cfg, data_dir: Path) -> float:
    """Seconds make_demo_data.py takes (run as a script: scripts do not import scripts)."""
    counts = options(source_train=cfg.source_train, target_train=cfg.target_train)
    counts += options(test_normal=cfg.test_clips, test_anomaly=cfg.test_clips, progress="false")
    argv = [sys.executable, str(_ROOT / "make_demo_data.py"), "--out_dir", str(data_dir)]
    argv += options(clip_seconds=cfg.clip_seconds, year_style=cfg.year_style) + counts
    _, seconds = timed(lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL))
    return seconds


def fbank_throughput(cfg, records: list, device: torch.device) -> tuple[str, dict]:
    """clips/s of the per-clip CPU path in DataLoader workers and of the batched path on ``device``."""
    from torch.utils.data import DataLoader

    from asd.fbank import wavs_to_fbank_batch
    from dataset import ClipDataset, FixedLengthCollate
    from preprocessing import FeatureCache, load_audio

    rows, numbers = [], {}
    for workers in cfg.fbank_workers:
        loader = DataLoader(
            ClipDataset(records, None, FeatureCache(None)),
            batch_size=cfg.train_batch_size,
            num_workers=workers,
            collate_fn=FixedLengthCollate(cfg.frames),
        )
        _, seconds = timed(lambda loader=loader: sum(len(batch[2]) for batch in loader))
        rows.append([f"CPU DataLoader, {workers} workers (read + fbank)", len(records) / seconds])
        numbers[f"cpu_workers_{workers}"] = len(records) / seconds
    wavs, read_seconds = timed(lambda: torch.stack([load_audio(r.path) for r in records]))
    wavs_to_fbank_batch(wavs[:2], device)  # warm-up (kernels, mel banks)
    _, fbank_seconds = timed(lambda: wavs_to_fbank_batch(wavs, device))  # returns CPU tensors: synchronised
    rows.append(["read, 1 process", len(records) / read_seconds])
    rows.append([f"batched fbank on {device.type} (wavs_to_fbank_batch)", len(records) / fbank_seconds])
    rows.append([f"read + batched fbank on {device.type}", len(records) / (read_seconds + fbank_seconds)])
    numbers.update(
        read=len(records) / read_seconds,
        batched=len(records) / fbank_seconds,
        read_and_batched=len(records) / (read_seconds + fbank_seconds),
    )
    return benchmark.table(["path", "clips/s"], rows), numbers


_ENCODER_COLUMNS = [
    "mode", "batch", "frames", "clips/s", "TFLOP/s", "MFU (measured)", "MFU (datasheet)", "peak GiB",
]  # fmt: skip


def encoder_rates(cfg, device: torch.device) -> tuple[str, dict]:
    """bench/encoder.py's isolated measurements at every batch size, and the recipe step."""
    bench_cfg = vars(
        check_script_arguments(_ENCODER_BENCH, ["--device", cfg.device, "--frames", str(cfg.frames)])
    )
    if cfg.cpu_smoke:
        bench_cfg.update(
            matmul_size=512, forward_iters=1, train_iters=1, recipe_frames=160, recipe_batch_size=2
        )
    rows = []
    for batch in cfg.batch_sizes:
        for mode in ("forward", "train"):
            rows.append(benchmark.run_isolated(cfg.model_size, mode, {**bench_cfg, "batch_size": batch}))
            print(f"  {mode} batch {batch}: {rows[-1]['clips_per_s']:.1f} clips/s", flush=True)
    rows.append(benchmark.run_isolated(cfg.model_size, "recipe", bench_cfg))
    measured = max(r["matmul_rate"] for r in rows)
    datasheet = benchmark.datasheet_flops(benchmark.card_name(device), cfg.datasheet_tflops)
    lines = []
    for r in rows:
        r["mfu"] = r["flop_per_s"] / measured
        r["mfu_datasheet"] = r["flop_per_s"] / datasheet if datasheet else None
        lines.append([r["mode"], r["batch"], r["frames"], r["clips_per_s"], r["flop_per_s"] / 1e12])
        lines[-1] += [r["mfu"], r["mfu_datasheet"], r["peak_bytes"] / 2**30]
    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    text = (
        f"EAT-{cfg.model_size} (random init), {precision}; best matmul rate measured: {measured / 1e12:.1f} "
        f"TFLOP/s; datasheet peak: {'n/a' if datasheet is None else f'{datasheet / 1e12:.0f} TFLOP/s'}\n"
        + benchmark.table(_ENCODER_COLUMNS, lines)
        + f"\ntrain: LoRA rank {bench_cfg['lora_rank']} on qkv+proj + ArcFace; recipe: LoRA rank "
        f"{bench_cfg['recipe_lora_rank']} on qkv only + Linear(D->{bench_cfg['projection_dim']}) + SCAdaCos "
        "(16 sub-clusters); training FLOPs = 2x forward; "
        "peak = " + ("torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS")
    )
    return text, {"matmul_rate": measured, "datasheet": datasheet, "rows": rows}


def idle_share(cfg, records: list, device: torch.device, cache_dir: Path) -> tuple[str, dict]:
    """LoRA training fed by a DataLoader: clips/s and the share of time the device waits for data.
    The fbank path (arcface-v1: fbanks from the feature cache, FRAMES each) on a first pass (fbanks
    computed and written to the cache) and a second (read from it); the published recipe's path
    (asdkit-eat-lora: waveforms from the workers, cropped to TRAIN_CLIP_SECONDS, fbank on the device)."""
    import numpy as np
    from torch.utils.data import DataLoader

    from asd.checkpoints import build_encoder
    from asd.clips import ClipPolicy
    from asd.runtime import tune_cpu_allocator
    from asd.training import WaveDataset, fixed_length_input, wave_batch
    from dataset import ClipDataset, FixedLengthCollate, LabelIndex
    from preprocessing import FeatureCache

    bench_cfg = vars(check_script_arguments(_ENCODER_BENCH, ["--device", cfg.device]))
    if device.type == "cpu":
        tune_cpu_allocator()  # as train.py does
    loader_options = {
        "batch_size": cfg.train_batch_size,
        "shuffle": True,
        "num_workers": cfg.num_workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": cfg.num_workers > 0,
    }
    torch.manual_seed(0)
    step, classes = benchmark.training_step(
        build_encoder(None, cfg.model_size, verbose=False).to(device), "train", bench_cfg, device
    )
    loader = DataLoader(
        ClipDataset(records, None, FeatureCache(cache_dir)),
        collate_fn=FixedLengthCollate(cfg.frames, True),
        **loader_options,
    )
    to_input = lambda batch: batch[0].to(device, non_blocking=True)  # noqa: E731
    numbers = {
        name: benchmark.timed_pass(loader, to_input, step, classes, device)
        for name in ("first epoch (fbank + cache write)", "later epoch (cache read)")
    }
    # the recipe's path (its step is slow on CPU: the dry run times one batch)
    recipe_records = records[: cfg.train_batch_size] if cfg.cpu_smoke else records
    step, classes = benchmark.training_step(
        build_encoder(None, cfg.model_size, verbose=False).to(device), "recipe", bench_cfg, device
    )
    waves = DataLoader(
        WaveDataset(recipe_records, LabelIndex.from_records(recipe_records)),
        collate_fn=wave_batch,
        **loader_options,
    )
    policy, rng = ClipPolicy(cfg.train_clip_seconds), np.random.default_rng(0)
    to_input = lambda batch: fixed_length_input(batch[0], policy, device, rng)[0]  # noqa: E731
    recipe_name = f"recipe: waveforms, {cfg.train_clip_seconds:g} s crops, fbank on {device.type}"
    numbers[recipe_name] = benchmark.timed_pass(waves, to_input, step, classes, device)
    rows = [[name, v["clips_per_s"], v["idle_share"]] for name, v in numbers.items()]
    text = (
        benchmark.table(["pass", "clips/s", "idle share"], rows)
        + f"\nbatch {cfg.train_batch_size}, {cfg.num_workers} workers; fbank path: {cfg.frames} frames, "
        f"{len(records)} clips, LoRA + ArcFace step; recipe path: {len(recipe_records)} clips, the recipe's "
        "step; idle share = time waiting for the next batch / total"
    )
    return text, numbers


def run_logged(argv: list[str], log: Path) -> float:
    """Run a command with its output in ``log``; seconds; a failure raises with the log's tail."""
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=_ROOT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{' '.join(argv)} failed (exit {result.returncode}); end of {log}:\n{tail}")
    return seconds


def torchrun(nproc: int, args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(_ROOT / "train.py"),
        *args,
    ]


def pipeline(cfg, data_dir: Path, work: Path, counts: dict) -> tuple[str, dict]:
    """torchrun train.py (1 process; and 2 CPU processes for DDP), then extract_embeddings.py and both
    scorers in this process (their main(); warm imports, so no start-up in their times)."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    model_path = work / "best_encoder_model.pth"
    train_args = options(
        data_dir=data_dir, model_size=cfg.model_size, clip_seconds=f"{cfg.train_clip_seconds:g}",
        batch_size=cfg.train_batch_size, num_workers=cfg.num_workers, feature_cache=work / "train_cache",
        last_checkpoint=work / "last_encoder_model.pth", device=cfg.device, epochs=cfg.train_epochs,
        output=model_path,
    )  # fmt: skip
    seconds = {"train": run_logged(torchrun(1, train_args), logs / "train.log")}
    epochs = [float(row["seconds"]) for row in read_history(history_path(model_path))]
    rows = [
        [
            "torchrun --nproc_per_node 1 train.py (asdkit-eat-lora)",
            f"{cfg.train_epochs} epoch(s), {counts['train']} clips, {cfg.train_clip_seconds:g} s crops",
            seconds["train"],
            cfg.train_epochs * counts["train"] / seconds["train"],
        ],
        *(
            [f"  train.py epoch {i}", f"{counts['train']} clips", t, counts["train"] / t]
            for i, t in enumerate(epochs, 1)
        ),
    ]
    if cfg.ddp_check:
        ddp_dir = work / "ddp"
        ddp_args = options(
            data_dir=data_dir, model_size="tiny", device="cpu", clip_seconds=1, batch_size=4, num_workers=0,
            epochs=1, feature_cache="none", output=ddp_dir / "best.pth", last_checkpoint=ddp_dir / "last.pth",
        )  # fmt: skip
        seconds["ddp"] = run_logged(torchrun(2, ddp_args), logs / "train_ddp_cpu.log")
        rows.append(
            [
                "torchrun --nproc_per_node 2 train.py (CPU, gloo, tiny)",
                "1 epoch, DDP wrapper",
                seconds["ddp"],
                None,
            ]
        )
    embed_dir = work / "embeddings"
    # the dry run skips the scorers' plots and report (tested elsewhere; slow on 2 CPU cores)
    quiet = ["--plots", "false", "--report", "false"] if cfg.cpu_smoke else []
    steps = {
        "extract": ["extract_embeddings"]
        + options(data_dir=data_dir, model_path=model_path, device=cfg.device, feature_cache="none")
        + options(embed_batch_size=cfg.train_batch_size),
        "svdd_train": ["train_deepSVDD", "--svdd_dir", str(work / "svdd")],
        "svdd_eval": ["evaluate_deepSVDD", "--svdd_dir", str(work / "svdd")]
        + options(results_dir=work / "results" / "deepsvdd")
        + quiet,
        "ensemble": ["evaluate", "--results_dir", str(work / "results" / "ensemble"), *quiet],
    }
    clips = {
        "extract": counts["train"] + counts["test"],
        "svdd_train": counts["train"],
        "svdd_eval": counts["test"],
        "ensemble": counts["test"],
    }
    for name, (module_name, *extra) in steps.items():
        argv = ["--embed_dir", str(embed_dir), *extra]
        command = [sys.executable, str(_ROOT / f"{module_name}.py"), *argv]
        seconds[name] = run_logged(command, logs / f"{name}.log")
        rows.append([f"{module_name}.py", f"{clips[name]} clips", seconds[name], clips[name] / seconds[name]])
    text = (
        benchmark.table(["step", "work", "seconds", "clips/s"], rows)
        + "\nevery row: a whole process (start-up and imports, model load, fbank of every clip, saving); "
        f"logs in {logs}"
    )
    return text, {"seconds": seconds, "clips": clips, "epoch_seconds": epochs}


def estimate(cfg, counts: dict, steps: dict) -> tuple[str, dict]:
    """Whole DCASE 2023 development pipeline time from the measured per-clip rates: training at the
    rate of train.py's last measured epoch (the published recipe, no held-out clips), its start-up and
    saving once, then extraction and both scorers."""
    train_total, test_total = cfg.dcase_machines * cfg.dcase_train, cfg.dcase_machines * cfg.dcase_test
    rate = counts["train"] / steps["epoch_seconds"][-1]
    overhead = steps["seconds"]["train"] - sum(steps["epoch_seconds"])
    parts = [
        [
            f"training, {cfg.dcase_epochs} epochs (train.py, asdkit-eat-lora)",
            f"{cfg.dcase_epochs * train_total} clips at {rate:.1f}/s",
            cfg.dcase_epochs * train_total / rate,
        ],
        ["train.py start-up, saving (measured, once)", "", max(overhead, 0.0)],
    ]
    for name, total, label in (
        ("extract", train_total + test_total, "extract_embeddings.py"),
        ("svdd_train", train_total, "train_deepSVDD.py"),
        ("svdd_eval", test_total, "evaluate_deepSVDD.py"),
        ("ensemble", test_total, "evaluate.py"),
    ):
        step_rate = steps["clips"][name] / steps["seconds"][name]
        parts.append([label, f"{total} clips at {step_rate:.1f}/s", total / step_rate])
    total_seconds = sum(p[2] for p in parts)
    text = (
        f"DCASE 2023 dev: {cfg.dcase_machines} machine types x ({cfg.dcase_train} train + {cfg.dcase_test} test) "
        f"clips, {cfg.dcase_epochs} epochs, EAT-{cfg.model_size}, {cfg.train_clip_seconds:g} s crops\n"
        + benchmark.table(["stage", "work", "seconds"], parts)
        + f"\ntotal: {total_seconds:.0f} s ({total_seconds / 60:.1f} min); each scorer's and the extraction's "
        "fixed cost (model load, fitting set-up) is scaled with the clips, so those rows err high"
    )
    return text, {"parts": parts, "total_seconds": total_seconds}


def modes(cfg, work: Path) -> tuple[str, dict]:
    """run_all.py end to end on a small two-channel DCASE-2026-style set for each of CHANNEL_MODES (the
    first with --seeds MODE_SEEDS): the asdkit-eat-lora recipe's fixed-length crops in training and
    extraction, ASDKit's four back ends beside both scorers; what each run wrote is checked."""
    from asd.embedding_files import read_feature_file

    data_dir, logs = work / "data_2026", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data_args = [item for key, value in _MODES_DATA.items() for item in (f"--{key}", str(value))]
    run_logged(
        [sys.executable, str(_ROOT / "make_demo_data.py"), "--out_dir", str(data_dir), "--progress", "false"]
        + data_args,
        logs / "make_demo_data_2026.log",
    )
    rows, numbers = [], {}
    for index, mode in enumerate(cfg.channel_modes):
        seeds = cfg.mode_seeds if index == 0 else []
        runs_dir = work / f"runs_{mode}"
        argv = [sys.executable, str(_ROOT / "run_all.py"), "--data_dir", str(data_dir)]
        argv += ["--runs_dir", str(runs_dir), "--model_size", "tiny", "--device", cfg.device]
        argv += ["--recipe", "asdkit-eat-lora", "--channels", mode]
        argv += (["--seeds", ",".join(map(str, seeds))] if seeds else []) + _MODES_OVERRIDES
        seconds = run_logged(argv, logs / f"run_all_{mode}.log")
        run_dirs = sorted(p for p in runs_dir.iterdir() if p.is_dir())
        checked = []
        for run_dir in run_dirs:
            settings = read_feature_file(run_dir / "normal_embeddings.pt")["fingerprint"]["settings"]
            backends = sorted(
                p.parent.name for p in (run_dir / "results" / "backends").glob("*/summary.json")
            )
            scorers = sorted(p.parent.name for p in (run_dir / "results").glob("*/summary.json"))
            checked.append(
                {"run_dir": str(run_dir), "clip_seconds": settings.get("clip_seconds"), "backends": backends}
            )
            checked[-1].update(channels=settings.get("channels"), scorers=scorers)
        seed_tables = sorted(str(p) for p in runs_dir.glob("*-seeds.csv"))
        numbers[mode] = {"seconds": seconds, "seeds": seeds, "runs": checked, "seed_tables": seed_tables}
        first = checked[0]
        rows.append([mode, ",".join(map(str, seeds)) or "-", len(run_dirs), first["clip_seconds"]])
        rows[-1] += [" ".join(first["backends"]), seconds]
    text = (
        benchmark.table(["channels", "seeds", "run folders", "crop s", "ASDKit back ends", "seconds"], rows)
        + f"\nrun_all.py --recipe asdkit-eat-lora on {data_dir} (two-channel, tiny encoder, device "
        f"{cfg.device}); logs in {logs}"
    )
    return text, numbers


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

    from dataset import discover_clips

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
    if cfg.modes_check:
        report.add("channel modes, crops, back ends, seeds (run_all)", *modes(cfg, work_dir / "modes"))
    total = time.perf_counter() - report.started
    report.add(
        "done", f"gpu_check took {total:.0f} s; tables in {out_dir / 'gpu_check.txt'}", {"seconds": total}
    )
    return report.numbers


if __name__ == "__main__":
    main()
