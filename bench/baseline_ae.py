"""Benchmark of the baseline autoencoder scorer (asd/backends/baseline_ae.py): training time and feature extraction rate.

    python bench/baseline_ae.py --threads 2                    # 100 epochs on 1,000 clips' worth of vectors
    python bench/baseline_ae.py --timed_epochs 3 --threads 2   # 3 epochs timed, 100 extrapolated

1. Training with the baseline's recipe (Adam 1e-3, batch 256 shuffled, MSE, the scorer's own loop) on
   N_CLIPS x VECTORS_PER_CLIP synthetic random 640-dim vectors (random numbers: the timing does not
   depend on the values), 10 % held out for the per-epoch validation loss, then the covariance pass.
2. Feature extraction (soundfile + librosa, asd.backends.baseline_ae.file_to_vectors) per clip on a real clip.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asd.base.cli import exit_if_help, parse_config, print_config  # noqa: E402

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import torch  # noqa: E402

from asd.backends import baseline_ae, baseline_network  # noqa: E402
from asd.base.runtime import resolve_device  # noqa: E402

# training clips of one machine type (a DCASE development set has 1,000 per machine type)
N_CLIPS = 1000
# vectors per clip (a 10 s clip at 16 kHz gives 309)
VECTORS_PER_CLIP = 309
# epochs of the recipe
EPOCHS = 100
# epochs actually timed (0 = all EPOCHS); the total is extrapolated from them
TIMED_EPOCHS = 0
# batch size of the recipe
BATCH_SIZE = 256
# torch threads (2 = the 2-core machine the issue names); 0 = torch's default
THREADS = 2
# device of the training: auto (CUDA when present), cpu, cuda
DEVICE = "cpu"
# the real clip whose feature extraction is timed
CLIP = "tests/fixtures/dcase_samples/dcase2023_dev/valve/train/section_00_source_train_normal_0095_pat_01.wav"
# timed feature extractions of that clip (after one warm-up)
FEATURE_REPEATS = 10
# seed of the random vectors and the training
SEED = 13711
# allowed values of the constants above, checked by asd.base.cli.parse_config
_LIMITS = {
    "N_CLIPS": (2, None),
    "VECTORS_PER_CLIP": (1, None),
    "EPOCHS": (1, None),
    "TIMED_EPOCHS": (0, None),
    "BATCH_SIZE": (2, None),
    "THREADS": (0, None),
    "DEVICE": ["auto", "cpu", "cuda"],
    "FEATURE_REPEATS": (1, None),
    "SEED": (0, None),
}


def bench_training(cfg, device: torch.device) -> dict:
    """Seconds of the timed epochs and of the covariance pass on random vectors; the 100-epoch total."""
    generator = torch.Generator().manual_seed(cfg.seed)
    n = cfg.n_clips * cfg.vectors_per_clip
    vectors = (10 * torch.randn(n, baseline_ae.INPUT_DIM, generator=generator) - 40).to(device)
    n_valid = round(baseline_ae.VALIDATION_SHARE * n)
    train, valid = vectors[n_valid:], vectors[:n_valid]
    timed = cfg.timed_epochs or cfg.epochs
    settings = {"epochs": timed, "batch_size": cfg.batch_size, "learning_rate": 1e-3}
    torch.manual_seed(cfg.seed)
    model = baseline_network.AENet(baseline_ae.INPUT_DIM, baseline_ae.N_MELS).to(device)
    start = time.perf_counter()
    baseline_network.train_network(model, train, valid, settings, generator, "bench")
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    is_target = torch.zeros(len(train), dtype=torch.bool, device=device)
    baseline_network.covariance_pass(model, train, is_target, torch.randperm(len(train)), cfg.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    cov_s = time.perf_counter() - start
    return {
        "vectors": n,
        "timed_epochs": timed,
        "seconds_per_epoch": train_s / timed,
        "covariance_s": cov_s,
        "total_s": train_s / timed * cfg.epochs + cov_s,
    }


def bench_features(cfg) -> dict:
    baseline_ae.file_to_vectors(cfg.clip)  # warm-up: librosa's first call compiles
    start = time.perf_counter()
    for _ in range(cfg.feature_repeats):
        baseline_ae.file_to_vectors(cfg.clip)
    return {"feature_s_per_clip": (time.perf_counter() - start) / cfg.feature_repeats}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(globals(), argv, description=__doc__)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    print_config(cfg)
    device = resolve_device(cfg.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, load average {load:.1f}")
    features = bench_features(cfg)
    print(f"features: {features['feature_s_per_clip'] * 1000:.0f} ms per clip ({cfg.clip})")
    training = bench_training(cfg, device)
    how = "measured" if training["timed_epochs"] == cfg.epochs else f"from {training['timed_epochs']} epochs"
    print(
        f"training on {training['vectors']} random vectors: {training['seconds_per_epoch']:.1f} s per epoch, "
        f"covariance pass {training['covariance_s']:.1f} s; {cfg.epochs} epochs: "
        f"{training['total_s'] / 60:.1f} min ({how})"
    )
    return features | training | {"load_average": load}


if __name__ == "__main__":
    main()
