"""Benchmark the EAT encoder on this machine: matmul rate, forward throughput and model FLOP
utilisation (MFU), LoRA training throughput and peak memory.

    python bench/encoder.py                              # base + tiny, batch 8, 10 s clips
    python bench/encoder.py --sizes tiny --forward_iters 5

MFU = achieved FLOP/s of the forward pass (FLOPs counted analytically: patch conv, per block the
qkv/proj/MLP matmuls and attention's QK^T and AV, 2 FLOPs per multiply-add) over the best measured
rate of large square matmuls in the same precision (float32 on CPU, bf16 on CUDA). Training FLOPs
are counted as 2x forward (input gradients only: the backbone's weights are frozen; LoRA is tiny).
Each (size, mode) runs in a fresh process so that its peak memory (CPU: peak RSS; CUDA:
torch.cuda.max_memory_allocated) is its own. Targets: CPU base forward MFU >= 0.6; GPU bf16 >= 0.4.

Mode "recipe" is the published recipe's training step: LoRA rank RECIPE_LORA_RANK on the qkv
matmuls only, RECIPE_BATCH_SIZE clips of RECIPE_FRAMES frames. Its projection head and SCAdaCos
loss are stood in for by a Linear(D -> PROJECTION_DIM) projection and a cross-entropy over those
outputs (their cost is negligible next to the encoder's).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asd.base.cli import exit_if_help, parse_config, print_config  # noqa: E402

exit_if_help(globals())  # --help from this file's source, before the heavy imports

import torch  # noqa: E402

from asd.base.runtime import resolve_device  # noqa: E402
from asd.run.benchmark import format_rows, matmul_dtype, matmul_rate, run_isolated  # noqa: E402

# encoder presets to measure
SIZES = ["base", "tiny"]
# clips per forward / training step
BATCH_SIZE = 8
# frames per clip (10.24 s at 100 frames/s)
FRAMES = 1024
# timed forward batches per size (after WARMUP_ITERS)
FORWARD_ITERS = 3
# timed LoRA training steps per size (after WARMUP_ITERS)
TRAIN_ITERS = 2
# untimed batches first (allocator, kernels, caches)
WARMUP_ITERS = 1
# square matmul side for the peak rate; 0 = 2048 on CPU, 8192 on CUDA
MATMUL_SIZE = 0
# timed matmuls; the best one counts
MATMUL_REPEATS = 5
# "auto" (CUDA when present), "cpu", "cuda"
DEVICE = "auto"
# bf16 autocast on CUDA (matmul rate then measured in bf16); no effect on CPU
AMP = True
# torch CPU threads; 0 = torch's default
THREADS = 0
# also measure LoRA training steps
TRAIN = True
# CPU: asd.base.runtime.tune_cpu_allocator() (no page faults on big activations), as train.py does
TUNE_ALLOCATOR = True
# LoRA rank for the training measurement
LORA_RANK = 8
# also measure the published recipe's training step (mode "recipe")
MEASURE_RECIPE = True
# recipe: LoRA rank, on blocks.*.attn.qkv only
RECIPE_LORA_RANK = 64
# recipe: clips per training step
RECIPE_BATCH_SIZE = 8
# recipe: frames per clip (12.16 s)
RECIPE_FRAMES = 1216
# recipe: Linear(D -> PROJECTION_DIM) before the SCAdaCos head
PROJECTION_DIM = 256

# allowed values of the constants above, checked by asd.base.cli.parse_config
_LIMITS = {
    "BATCH_SIZE": (1, None),
    "FRAMES": (16, None),
    "FORWARD_ITERS": (1, None),
    "TRAIN_ITERS": (1, None),
    "WARMUP_ITERS": (0, None),
    "MATMUL_SIZE": (0, None),
    "MATMUL_REPEATS": (1, None),
    "THREADS": (0, None),
    "LORA_RANK": (1, None),
    "RECIPE_LORA_RANK": (1, None),
    "RECIPE_BATCH_SIZE": (1, None),
    "RECIPE_FRAMES": (16, None),
    "PROJECTION_DIM": (1, None),
}


def run_modes(cfg) -> list[str]:
    return ["forward"] + (["train"] if cfg.train else []) + (["recipe"] if cfg.measure_recipe else [])


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(globals(), argv, description=__doc__)
    print_config(cfg)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dtype = matmul_dtype(device, cfg.amp)
    side = cfg.matmul_size or (8192 if device.type == "cuda" else 2048)
    peak = matmul_rate(device, dtype, side, cfg.matmul_repeats)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {name}; torch {torch.__version__}")
    print(
        f"matmul rate ({side}x{side}, {str(dtype).replace('torch.', '')}): {peak / 1e9:.1f} GFLOP/s "
        f"(best of {cfg.matmul_repeats})"
    )
    cfg_dict = vars(cfg)
    rows = []
    for size in cfg.sizes:
        for mode in run_modes(cfg):
            row = run_isolated(size, mode, cfg_dict)
            rows.append(row)
            print(
                f"  measured {size} {mode}: {row['clips_per_s']:.2f} clips/s "
                f"(matmul rate there {row['matmul_rate'] / 1e9:.1f} GFLOP/s)",
                flush=True,
            )
    peak = max([peak] + [r["matmul_rate"] for r in rows])
    for row in rows:
        row["mfu"] = row["flop_per_s"] / peak
    print(f"best matmul rate in the run: {peak / 1e9:.1f} GFLOP/s (the MFU denominator)")
    precision = "bf16 autocast" if device.type == "cuda" and cfg.amp else "float32"
    print(
        f"\nEAT encoder ({precision}; best of {cfg.forward_iters} forward / {cfg.train_iters} train iterations)"
    )
    print(format_rows(rows))
    print(
        "peak mem: "
        + (
            "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "peak RSS of the measuring process (includes the Python/torch runtime)"
        )
    )
    print(
        "train/recipe MFU counts 2x forward FLOPs (frozen backbone: no weight gradients; LoRA FLOPs not counted)"
    )
    print(
        f"train: LoRA rank {cfg.lora_rank} on qkv+proj, ArcFace head; recipe: LoRA rank {cfg.recipe_lora_rank} "
        f"on qkv only, Linear(D->{cfg.projection_dim}) + SCAdaCos (16 sub-clusters), the recipe's step"
    )
    return rows


if __name__ == "__main__":
    main()
