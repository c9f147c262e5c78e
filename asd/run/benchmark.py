"""The EAT encoder measurements behind bench/encoder.py and bench/gpu_check.py: matmul rate, analytic
forward FLOPs, the training steps of the benchmark's modes, and one measurement per fresh process.

``cfg_dict`` is bench/encoder.py's settings as a dict (``vars`` of its parse_config, or
check_script_arguments of its source).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from collections.abc import Callable

import torch

from asd.base.runtime import autocast, resolve_device, tune_cpu_allocator

HEAD_CLASSES = 64  # classes of the training modes' heads
_DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense, SXM, by a substring of the card's name


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
    Linear(D -> PROJECTION_DIM) and the SCAdaCos loss (16 sub-clusters). Both over HEAD_CLASSES."""
    from asd.model import heads
    from asd.model import model as M

    if mode == "recipe":
        rank = cfg_dict["recipe_lora_rank"]
        wrapped = M.add_lora(encoder, rank, 2.0 * rank, 0.1, targets=("qkv",))
        head = heads.make_head(
            "scadacos", encoder.embed_dim, HEAD_CLASSES, projection_dim=cfg_dict["projection_dim"]
        )
    else:
        wrapped = M.add_lora(encoder, cfg_dict["lora_rank"], 2.0 * cfg_dict["lora_rank"], 0.1)
        head = heads.make_head("arcface", encoder.embed_dim, HEAD_CLASSES)
    model = M.ASDModel(wrapped, head).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(x: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast(device, cfg_dict["amp"]):
            loss = model.head.loss(model.embed(x), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, HEAD_CLASSES


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
    from asd.model.pretrained import build_encoder

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


def card_name(device: torch.device) -> str | None:
    """The GPU's name (torch.cuda.get_device_name), None on CPU."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def datasheet_flops(card: str | None, override_tflops: float) -> float | None:
    """A card's dense bf16 peak in FLOP/s from its name, or None when unknown (CPU, other cards);
    ``override_tflops`` (when not 0) wins."""
    if override_tflops:
        return override_tflops * 1e12
    return next((t * 1e12 for key, t in _DATASHEET_BF16_TFLOPS.items() if key in (card or "")), None)


def table(header: list[str], rows: list[list]) -> str:
    """A plain text table; floats with 3 significant decimals."""
    cells = [
        [f"{v:.3f}" if isinstance(v, float) else ("n/a" if v is None else str(v)) for v in row]
        for row in rows
    ]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
    return "\n".join(lines)


def timed_pass(loader, to_input, step, classes: int, device: torch.device) -> dict:
    """One pass over ``loader``: clips/s and the share of the time spent waiting for a batch (the rest:
    ``to_input`` of the batch on ``device`` and the training ``step``, synchronised)."""
    waiting = computing = 0.0
    clips = 0
    batches = iter(loader)
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        fetched = time.perf_counter()
        if batch is None:
            break
        x = to_input(batch)
        step(x, torch.randint(0, classes, (x.shape[0],), device=device))
        synchronize(device)
        waiting += fetched - start
        computing += time.perf_counter() - fetched
        clips += x.shape[0]
    return {"clips_per_s": clips / (waiting + computing), "idle_share": waiting / (waiting + computing)}
