"""Devices, processes (DDP), precision, seeds and the CPU allocator: how a script runs, not what it computes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cpu', 'cuda', 'cuda:1' are taken as given."""
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available")
    return device


def setup_processes(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device): DDP whenever torchrun started the process (one process too), else
    a plain process."""
    import torch
    import torch.distributed as dist

    if "LOCAL_RANK" not in os.environ:
        return 0, 1, resolve_device(device_name)
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), world, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over every process (unchanged without DDP)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op on CPU (CPU bf16 is slower than float32 on most machines)."""
    import torch

    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed python's random, numpy's global generator and torch's (CPU and every CUDA device)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the glibc heap so large activations are not page-faulted in anew every batch.

    glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh pages and unmaps them on
    free, so on CPU each forward pass re-faults its big activations: GELU and the bias copies of the
    linear layers run several times slower. M_MMAP_MAX = 0 plus a high trim threshold keeps the
    memory in the process (its RSS stays at the peak). Linux/glibc only; returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
