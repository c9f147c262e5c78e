"""The lock of a run folder: one writer at a time, run_all's steps writing under run_all's lock.

A run folder is a folder holding a ``.asd_run.lock`` file (run_all makes one in every run folder it uses).
run_all holds the lock for the whole run; every script that writes into a run folder holds it too
(``hold_run_folder_lock``), so a script started by hand never overwrites a file under a running
pipeline or another script. A step run_all starts inherits the holder's token through the environment
(``ASD_LOCK_TOKEN``) and writes under its parent's lock instead of waiting for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

LOCK_NAME = ".asd_run.lock"  # distinctive: other tools (pytest) leave ".lock" files in folders above
# set while a process holds a run folder's lock: its children write under it
TOKEN_ENV = "ASD_LOCK_TOKEN"
_held: dict[Path, IO[str]] = {}  # locks this process holds until it exits


def _take(lock: Path, program: str, token: str) -> IO[str] | None:
    """The open, locked ``lock`` file with this process and ``token`` named in it; None when this
    process or its parent (whose token this process's ``TOKEN_ENV`` carries) holds it already;
    SystemExit naming the holder when someone else has it."""
    if lock.parent.resolve() in _held:
        return None
    handle = open(lock, "a+")  # noqa: SIM115 (held open until released)
    handle.seek(0)
    holder = handle.read().strip()
    inherited = os.environ.get(TOKEN_ENV)
    if inherited and holder.endswith(f"[{inherited}]"):
        handle.close()
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(
            f"{program}: error: {lock.parent} is in use by {holder or 'another process'}; wait for it to "
            "finish (or stop it), then run again"
        ) from None
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    handle.write(f"{program} pid {os.getpid()} on {socket.gethostname()}, started {started} [{token}]")
    handle.flush()
    return handle


@contextlib.contextmanager
def run_folder_lock(run_dir: Path, program: str = "run_all.py") -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (making the folder and its ``.asd_run.lock``); the subprocesses
    started in the block write under it. A second holder stops with a message naming the first."""
    run_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    handle = _take(run_dir / LOCK_NAME, program, token)
    before = os.environ.get(TOKEN_ENV)
    if handle is not None:
        os.environ[TOKEN_ENV] = token
    try:
        yield
    finally:
        if handle is not None:
            os.environ.pop(TOKEN_ENV, None) if before is None else os.environ.update({TOKEN_ENV: before})
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def run_folder_of(path: str | os.PathLike) -> Path | None:
    """The run folder ``path`` lies in (the nearest folder above it holding a ``.asd_run.lock``), or None."""
    here = Path(path).expanduser().resolve()
    return next((folder for folder in (here, *here.parents) if (folder / LOCK_NAME).is_file()), None)


def hold_run_folder_lock(paths: Sequence[str | os.PathLike | None], program: str | None = None) -> None:
    """Hold, until this process exits, the lock of every run folder one of ``paths`` (the files or
    folders a script is about to write) lies in; SystemExit naming the holder when another process has
    one. Only the process that writes takes it: torchrun's ranks other than 0 do not."""
    if os.environ.get("RANK", "0") != "0":
        return
    program = program or Path(sys.argv[0]).name
    folders = {run_folder_of(path) for path in paths if path}  # "" and None: not written
    for folder in sorted(f for f in folders if f is not None and f not in _held):
        handle = _take(folder / LOCK_NAME, program, uuid.uuid4().hex)
        if handle is not None:
            _held[folder] = handle
