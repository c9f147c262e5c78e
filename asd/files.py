"""Writes that never leave a half-written file or folder behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A crash or an exception leaves the old file (if any) intact and removes the partial one; a
    kill leaves a hidden ``.<name>.<random>.tmp`` that remove_stale_temp_files() clears. The file
    gets the permissions the umask gives a new file (mkstemp alone would make it 0600).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_folder(build: Callable[[Path], None], final: str | os.PathLike) -> None:
    """Call ``build(folder)`` on a fresh temporary folder beside ``final``, then put it in ``final``'s
    place: an earlier run's files never mix with new ones, and a crash leaves the old folder whole."""
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        build(fresh)
        fresh.chmod(0o777 & ~_umask())
        old = final.parent / f".{final.name}.{os.getpid()}.old.tmp"
        if final.exists():
            os.replace(final, old)
        os.replace(fresh, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.*.tmp`` files of atomic_path and folders of atomic_folder left under ``folder``
    when a process was killed mid-write; call it only when no other process writes there. Returns
    what it removed."""
    import shutil

    stale = sorted(Path(folder).rglob(".*.tmp")) if Path(folder).is_dir() else []
    stale = [p for p in stale if not any(parent in stale for parent in p.parents)]  # a folder goes whole
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a half-written file behind."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
