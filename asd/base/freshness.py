"""The one freshness helper: content keys of files and of settings, and what changed between two records.

Every "is this output still current?" check of the project (run stamps, embedding files, the tuned
model, the feature cache, resumes, the demo tree) records keys made here and compares them with
``changes``. A file's key is a hash of its bytes, so an in-place edit that keeps size and mtime is
still seen; within one process a file is hashed once per (size, mtime, ctime, inode): any write
or utime changes the ctime, so the memo never hides an edit.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_DIGEST_SIZE = 20
_CHUNK = 1 << 20
_memo: dict[tuple, str] = {}


def file_key(path: str | os.PathLike) -> str:
    """blake2b of the file's bytes (hex); FileNotFoundError naming the file when it is missing."""
    path = Path(path)
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    if memo_key not in _memo:
        digest = hashlib.blake2b(digest_size=_DIGEST_SIZE)
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        _memo[memo_key] = digest.hexdigest()
    return _memo[memo_key]


def files_key(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """One key for a set of files: their names (relative to ``root`` when given) and contents."""
    entries = []
    for path in paths:
        name = str(Path(path).relative_to(root)) if root is not None else str(Path(path).resolve())
        entries.append([name, file_key(path)])
    return settings_key(sorted(entries))


def settings_key(value: Any) -> str:
    """A key for JSON-like data (dict order does not matter; other objects by their str)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=_DIGEST_SIZE).hexdigest()


def changes(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between a saved record and the current one (all keys when
    nothing was saved); an empty list means the saved output is current."""
    if saved is None:
        return sorted(current)
    return [key for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
