"""Devices, precision, seeds and the CPU allocator: how a script runs, not what it computes."""

from __future__ import annotations

import contextlib
import ctypes
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


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op on CPU (CPU bf16 is slower than float32 on most machines)."""
    import torch

    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
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
