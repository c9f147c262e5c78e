"""Writes that never leave a half-written file or folder behind, and say so plainly when the disk is full."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(final: Path) -> str:
    """Temporary names carry the writer's pid (``.<name>.<pid>.<random>.tmp``), so cleanup can tell a
    live writer's file from a killed one's."""
    return f".{final.name}.{os.getpid()}."


def _is_disk_full(error: BaseException) -> bool:
    """ENOSPC, or torch's way of saying it when its zip writer cannot write ("unexpected pos ...")."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, RuntimeError) and (
        "unexpected pos" in str(error) or "No space left" in str(error)
    )


def _disk_full(final: Path) -> OSError:
    return OSError(errno.ENOSPC, f"no space left on device while writing {final} (any earlier file is kept)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A crash or an exception leaves the old file (if any) intact and removes the partial one; a full
    disk is an OSError "no space left on device" naming the file; a kill leaves a hidden
    ``.<name>.<pid>.<random>.tmp`` that remove_stale_temp_files() clears once its process is gone.
    The file gets the permissions the umask gives a new file (mkstemp alone would make it 0600).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_prefix(final), suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, final)
    except (OSError, RuntimeError) as error:
        if _is_disk_full(error):
            raise _disk_full(final) from error
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_folder(build: Callable[[Path], None], final: str | os.PathLike) -> None:
    """Call ``build(folder)`` on a fresh temporary folder beside ``final``, then put it in ``final``'s
    place: an earlier run's files never mix with new ones, and a crash leaves the old folder whole."""
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=_prefix(final), suffix=".tmp", dir=final.parent))
    try:
        build(fresh)
        fresh.chmod(0o777 & ~_umask())
        old = final.parent / f".{final.name}.{os.getpid()}.old.tmp"
        if final.exists():
            os.replace(final, old)
        os.replace(fresh, final)
        shutil.rmtree(old, ignore_errors=True)
    except (OSError, RuntimeError) as error:
        if _is_disk_full(error):
            raise _disk_full(final) from error
        raise
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def _owner_alive(path: Path) -> bool:
    """Whether the process whose pid a temporary name carries is still running (names without a pid,
    from before pids were recorded, count as dead)."""
    parts = path.name.split(".")
    if len(parts) < 4 or not parts[-3].isdigit():
        return False
    try:
        os.kill(int(parts[-3]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.*.tmp`` files of atomic_path and folders of atomic_folder left under ``folder``
    by a killed process; a temporary file whose writer is still alive is left alone. Returns what it
    removed."""
    import shutil

    found = sorted(Path(folder).rglob(".*.tmp")) if Path(folder).is_dir() else []
    found = [p for p in found if not any(parent in found for parent in p.parents)]  # a folder goes whole
    stale = [p for p in found if not _owner_alive(p)]
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


def unpickling_reason(error: BaseException) -> str:
    """Why torch's weights-only reader refused a file, in one line, without its advice to load the file
    unsafely instead (never given: a file users pass may run code when unpickled)."""
    text = str(error).split("WeightsUnpickler error:")[-1]
    parts = [part.strip() for part in text.split("\n\n") if part.strip()]
    kept = [part for part in parts if "weights_only" not in part and "Weights only" not in part]
    return " ".join((kept[0] if kept else type(error).__name__).split())


def load_plain(path: str | os.PathLike, what: str = "file") -> Any:
    """``torch.load`` of tensors and plain data only (nothing is unpickled that could run code); any
    failure is a one-line ValueError "cannot read <what> <path>: <why>"."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = f"it holds more than tensors and plain data ({unpickling_reason(error)})"
    except Exception as error:  # missing, truncated, not a torch file at all
        reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
    raise ValueError(f"cannot read {what} {path}: {reason}")
