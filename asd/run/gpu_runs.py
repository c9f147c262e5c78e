"""The GPU check's whole-script runs (bench/gpu_check.py): the synthetic data, train.py under torchrun,
extraction and both scorers, the DCASE-scale estimate, and run_all.py in other channel modes.

Scripts run as subprocesses (scripts never import scripts); each returns (text table, numbers).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from asd.run import benchmark
from asd.run.gpu_bench import options, timed
from asd.train.history import history_path, read_history

_ROOT = Path(__file__).resolve().parents[2]

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
    "baseline.baseline_epochs=2",  # the baseline autoencoder has its own section of the check
    "baseline.plots=false",
    "baseline.report=false",
]


def make_data(cfg, data_dir: Path) -> float:
    """Seconds make_demo_data.py takes (run as a script: scripts do not import scripts)."""
    counts = options(source_train=cfg.source_train, target_train=cfg.target_train)
    counts += options(test_normal=cfg.test_clips, test_anomaly=cfg.test_clips, progress="false")
    argv = [sys.executable, str(_ROOT / "make_demo_data.py"), "--out_dir", str(data_dir)]
    argv += options(clip_seconds=cfg.clip_seconds, year_style=cfg.year_style) + counts
    _, seconds = timed(lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL))
    return seconds


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
    from asd.embed.embedding_files import read_feature_file

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
