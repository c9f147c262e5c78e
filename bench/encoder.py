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

import multiprocessing as mp
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asd.cli import exit_if_help, parse_config, print_config  # noqa: E402
from asd.runtime import (
    autocast,
    resolve_device,
    tune_cpu_allocator,  # noqa: E402
)

exit_if_help(globals())  # --help from this file's source, before the heavy imports

import torch  # noqa: E402

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
# CPU: asd.runtime.tune_cpu_allocator() (no page faults on big activations), as train.py does
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

_HEAD_CLASSES = 64  # classes of the training modes' heads
# allowed values of the constants above, checked by asd.cli.parse_config
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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_dtype(device: torch.device, amp: bool) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" and amp else torch.float32


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """Best FLOP/s of ``size``-square matmuls."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_memory(device: torch.device) -> float:
    """Peak bytes: CUDA allocations, else this process's peak resident set size."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Linux reports KiB


def forward_flops(cfg, frames: int) -> int:
    """Analytic FLOPs (2 per multiply-add) of one clip's forward pass through an encoder with
    model.EATConfig ``cfg``: the patch convolution and per block the qkv, proj and MLP matmuls
    and attention's QK^T and AV (the matmuls that dominate)."""
    D, hidden = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    patches = (frames // cfg.patch_size) * cfg.freq_patches
    n = patches + 1
    conv = patches * cfg.in_chans * cfg.patch_size**2 * D
    per_block = n * D * 3 * D + n * D * D + 2 * n * D * hidden + 2 * n * n * D  # qkv, proj, mlp, QK^T + AV
    return 2 * (conv + cfg.depth * per_block)


def mode_shape(mode: str, cfg_dict: dict) -> tuple[int, int]:
    """(clips per batch, frames per clip) of a mode: the recipe has its own."""
    if mode == "recipe":
        return cfg_dict["recipe_batch_size"], cfg_dict["recipe_frames"]
    return cfg_dict["batch_size"], cfg_dict["frames"]


def training_step(
    encoder: torch.nn.Module, mode: str, cfg_dict: dict, device: torch.device
) -> tuple[Callable[[torch.Tensor, torch.Tensor], None], int]:
    """(step(x, labels), number of classes) for LoRA training of ``encoder`` (an EATEncoder): one
    AdamW step over the trainable parameters. Mode "train": LoRA rank LORA_RANK on qkv and proj
    + ArcFace head; mode "recipe": the asdkit-eat-lora step, rank RECIPE_LORA_RANK on qkv only,
    Linear(D -> PROJECTION_DIM) and the SCAdaCos loss (16 sub-clusters). Both over _HEAD_CLASSES."""
    import model as M

    if mode == "recipe":
        rank = cfg_dict["recipe_lora_rank"]
        wrapped = M.add_lora(encoder, rank, 2.0 * rank, 0.1, targets=("qkv",))
        head = M.make_head(
            "scadacos", encoder.embed_dim, _HEAD_CLASSES, projection_dim=cfg_dict["projection_dim"]
        )
    else:
        wrapped = M.add_lora(encoder, cfg_dict["lora_rank"], 2.0 * cfg_dict["lora_rank"], 0.1)
        head = M.make_head("arcface", encoder.embed_dim, _HEAD_CLASSES)
    model = M.ASDModel(wrapped, head).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(x: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast(device, cfg_dict["amp"]):
            loss = model.head.loss(model.embed(x), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, _HEAD_CLASSES


def time_calls(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Best seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure(size: str, mode: str, cfg_dict: dict, queue) -> None:
    """One (size, mode) measurement in its own process; puts a result dict on ``queue``."""
    from asd.checkpoints import build_encoder

    device = resolve_device(cfg_dict["device"])
    if cfg_dict["threads"]:
        torch.set_num_threads(cfg_dict["threads"])
    if device.type == "cpu" and cfg_dict["tune_allocator"]:
        tune_cpu_allocator()
    # the machine's matmul rate right here too: MFU is taken against the best rate seen in the run
    side = cfg_dict["matmul_size"] or (8192 if device.type == "cuda" else 2048)
    rate = matmul_rate(device, matmul_dtype(device, cfg_dict["amp"]), side, cfg_dict["matmul_repeats"])
    torch.manual_seed(0)
    encoder = build_encoder(None, size, verbose=False).to(device)
    params = sum(p.numel() for p in encoder.parameters())
    batch, frames = mode_shape(mode, cfg_dict)
    x = torch.randn(batch, 1, frames, 128, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if mode == "forward":
        encoder.eval()

        def step() -> None:
            with torch.inference_mode(), autocast(device, cfg_dict["amp"]):
                encoder(x)

        seconds = time_calls(step, device, cfg_dict["warmup_iters"], cfg_dict["forward_iters"])
    else:
        train_step, classes = training_step(encoder, mode, cfg_dict, device)
        labels = torch.randint(0, classes, (batch,), device=device)
        seconds = time_calls(
            lambda: train_step(x, labels), device, cfg_dict["warmup_iters"], cfg_dict["train_iters"]
        )
    flops = forward_flops(encoder.config, frames) * batch * (1 if mode == "forward" else 2)
    queue.put(
        {
            "size": size,
            "mode": mode,
            "batch": batch,
            "frames": frames,
            "seconds": seconds,
            "matmul_rate": rate,
            "clips_per_s": batch / seconds,
            "flop_per_s": flops / seconds,
            "peak_bytes": peak_memory(device),
            "params": params,
        }
    )


def run_isolated(size: str, mode: str, cfg_dict: dict) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(size, mode, cfg_dict, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def format_rows(rows: list[dict]) -> str:
    """The measured rows as a text table (rows need "mfu" set)."""
    header = (
        f"{'size':<6} {'mode':<7} {'batch':>5} {'frames':>6} {'params':>8} {'s/batch':>8} {'clips/s':>8} "
        f"{'GFLOP/s':>9} {'MFU':>6} {'peak mem':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['size']:<6} {r['mode']:<7} {r['batch']:>5} {r['frames']:>6} {r['params'] / 1e6:>7.1f}M "
            f"{r['seconds']:>8.3f} {r['clips_per_s']:>8.2f} {r['flop_per_s'] / 1e9:>9.1f} {r['mfu']:>6.2f} "
            f"{r['peak_bytes'] / 2**30:>7.2f}GB"
        )
    return "\n".join(lines)


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
