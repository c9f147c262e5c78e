"""The GPU check's in-process measurements (bench/gpu_check.py): its report, fbank throughput, the encoder
rates, the device's idle share while training from a DataLoader, and the baseline autoencoder scorer.

Each measurement takes the check's settings (``cfg``, bench/gpu_check.py's constants) and returns
(text table, numbers) for the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from asd.base.cli import check_script_arguments
from asd.base.files import atomic_write_text
from asd.run import benchmark

_ROOT = Path(__file__).resolve().parents[2]
ENCODER_BENCH = _ROOT / "bench" / "encoder.py"  # its settings are the encoder measurements'


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


def options(**values) -> list[str]:
    """Command-line words ["--name", "value", ...] of ``values``."""
    return [word for name, value in values.items() for word in (f"--{name}", str(value))]


def fbank_throughput(cfg, records: list, device: torch.device) -> tuple[str, dict]:
    """clips/s of the per-clip CPU path in DataLoader workers and of the batched path on ``device``."""
    from torch.utils.data import DataLoader

    from asd.data.dataset import ClipDataset, FixedLengthCollate
    from asd.data.fbank import wavs_to_fbank_batch
    from asd.data.preprocessing import FeatureCache, load_audio

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
        check_script_arguments(ENCODER_BENCH, ["--device", cfg.device, "--frames", str(cfg.frames)])
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

    from asd.base.runtime import tune_cpu_allocator
    from asd.data.clips import ClipPolicy
    from asd.data.dataset import ClipDataset, FixedLengthCollate, LabelIndex
    from asd.data.preprocessing import FeatureCache
    from asd.model.pretrained import build_encoder
    from asd.train.training import WaveDataset, fixed_length_input, wave_batch

    bench_cfg = vars(check_script_arguments(ENCODER_BENCH, ["--device", cfg.device]))
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


def baseline_autoencoder(cfg, records: list, device: torch.device) -> tuple[str, dict]:
    """The baseline autoencoder scorer (asd/backends/baseline_ae.py) per machine type on the synthetic set:
    feature extraction, BASELINE_EPOCHS of training, scoring the test clips by MSE and MAHALA (AUC of
    each), and the DCASE-scale training time from the measured vectors per second."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from asd.backends.baseline_ae import VALIDATION_SHARE, BaselineAE, file_to_vectors
    from asd.embed.embedding_files import Split

    def split_of(rows):
        return Split(np.zeros((len(rows), 1), np.float32), np.zeros((len(rows), 0), np.float32), [], rows)

    file_to_vectors(records[0].path)  # warm-up: librosa's first call compiles
    rows, numbers = [], {}
    for machine_type in sorted({r.machine_type for r in records}):
        train = [r for r in records if r.machine_type == machine_type and r.split == "train"]
        test = [r for r in records if r.machine_type == machine_type and r.split == "test"]
        scorer = BaselineAE(epochs=cfg.baseline_epochs, device=device.type, channels="near")
        _, feature_s = timed(lambda: scorer.clip_vectors(train))  # noqa: B023
        _, fit_s = timed(lambda: scorer.fit(split_of(train)))  # noqa: B023
        labels = [r.label == "anomaly" for r in test]
        aucs = {}
        for score in ("MSE", "MAHALA"):
            scorer.settings["score"] = score
            values, score_s = timed(lambda: scorer.score(split_of(test)))  # noqa: B023
            aucs[score] = float(roc_auc_score(labels, values)) if 0 < sum(labels) < len(labels) else None
        vectors = sum(len(v) for v in scorer.clip_vectors(train[:1])) * len(train) * (1 - VALIDATION_SHARE)
        epoch_rate = vectors * cfg.baseline_epochs / max(fit_s - feature_s, 1e-9)
        numbers[machine_type] = {
            "clips": len(train),
            "feature_s_per_clip": feature_s / len(train),
            "fit_s": fit_s,
            "vectors_per_s": epoch_rate,
            "score_s": score_s,
            "auc": aucs,
        }
        rows.append([machine_type, len(train), feature_s / len(train), fit_s, epoch_rate, aucs["MSE"]])
        rows[-1].append(aucs["MAHALA"])
    rate = float(np.median([n["vectors_per_s"] for n in numbers.values()]))
    vectors = cfg.dcase_train * 309 * (1 - VALIDATION_SHARE)  # 309 vectors per 10 s clip at 16 kHz
    per_type = vectors * 100 / rate
    numbers["dcase_estimate_s_per_machine_type"] = per_type
    text = (
        benchmark.table(
            ["machine type", "train clips", "features s/clip", "fit s", "vectors/s", "AUC MSE", "AUC MAHALA"],
            rows,
        )
        + f"\n{cfg.baseline_epochs} epochs on {device.type} (fit s includes the features); DCASE scale: "
        f"{cfg.dcase_train} clips x 309 vectors x 100 epochs per machine type at the median rate: "
        f"{per_type:.0f} s ({per_type * cfg.dcase_machines / 60:.1f} min for {cfg.dcase_machines} types)"
    )
    return text, numbers
