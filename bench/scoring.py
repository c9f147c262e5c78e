"""Benchmark of the ensemble scorer's pieces (every constant can be set from the command line).

    python bench/scoring.py --n_test 2000 --n_normal 10000 --dim 768

1. k-NN scoring (normalise, one matrix product, top-k, mean) of N_TEST test embeddings against
   N_NORMAL normal embeddings, timed against one raw matmul of the same shapes in the same run
   (target: within 2x of the matmul).
2. Per-clip cost of the signal statistics (asd/data/signal_stats.py) on CLIP_SECONDS clips.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asd.base.cli import exit_if_help, parse_config, print_config  # noqa: E402

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import numpy as np  # noqa: E402
import torch  # noqa: E402

from asd.backends.knn import knn_distance  # noqa: E402
from asd.data.fbank import SAMPLE_RATE  # noqa: E402
from asd.data.signal_stats import signal_stats  # noqa: E402

# test embeddings
N_TEST = 2000
# normal (memory bank) embeddings
N_NORMAL = 10000
# embedding width (EAT-base)
DIM = 768
# neighbours
K = 1
# timed repetitions (median reported), after one warm-up
REPEATS = 5
# clips timed for the statistics
STATS_CLIPS = 20
# clip length for the statistics
CLIP_SECONDS = 10.0
# torch threads; 0 = torch's default
THREADS = 0
# seed of the random embeddings and clips
SEED = 0
# allowed values of the constants above, checked by asd.base.cli.parse_config
_LIMITS = {
    "N_TEST": (1, None),
    "N_NORMAL": (1, None),
    "DIM": (1, None),
    "K": (1, None),
    "REPEATS": (1, None),
    "STATS_CLIPS": (1, None),
    "CLIP_SECONDS": (">0", None),
    "THREADS": (0, None),
    "SEED": (0, None),
}


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_knn(cfg) -> dict:
    rng = np.random.default_rng(cfg.seed)
    test = rng.standard_normal((cfg.n_test, cfg.dim), dtype=np.float32)
    bank = rng.standard_normal((cfg.n_normal, cfg.dim), dtype=np.float32)
    matmul_s = timed(lambda: test @ bank.T, cfg.repeats)
    knn_s = timed(lambda: knn_distance(test, bank, cfg.k), cfg.repeats)
    return {"matmul_s": matmul_s, "knn_s": knn_s, "ratio": knn_s / matmul_s}


def bench_stats(cfg) -> dict:
    rng = np.random.default_rng(cfg.seed)
    n = int(cfg.clip_seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    clips = [
        (0.1 * rng.normal(size=n) + 0.3 * np.sin(2 * np.pi * rng.uniform(50, 4000) * t)).astype(np.float32)
        for _ in range(cfg.stats_clips)
    ]
    signal_stats(clips[0])  # warm-up
    start = time.perf_counter()
    for clip in clips:
        signal_stats(clip)
    per_clip = (time.perf_counter() - start) / len(clips)
    return {"stats_per_clip_ms": per_clip * 1000}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(globals(), argv, description=__doc__)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    print_config(cfg)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    knn = bench_knn(cfg)
    flops = 2 * cfg.n_test * cfg.n_normal * cfg.dim
    print(
        f"raw matmul [{cfg.n_test}x{cfg.dim}] @ [{cfg.dim}x{cfg.n_normal}]: {knn['matmul_s'] * 1000:.1f} ms "
        f"({flops / knn['matmul_s'] / 1e9:.1f} GFLOP/s)"
    )
    print(
        f"k-NN scoring (k={cfg.k}):                  {knn['knn_s'] * 1000:.1f} ms "
        f"= {knn['ratio']:.2f}x the matmul (target <= 2x: {'met' if knn['ratio'] <= 2 else 'NOT met'})"
    )
    stats = bench_stats(cfg)
    print(
        f"signal statistics on {cfg.clip_seconds:g} s clips: {stats['stats_per_clip_ms']:.1f} ms per clip "
        f"({cfg.stats_clips} clips)"
    )
    return knn | stats


if __name__ == "__main__":
    main()
