"""Small helpers every script shares: command-line constants, atomic writes, devices, seeds."""
from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import json
import os
import random
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

_CONFIG_TYPES = (bool, int, float, str, type(None), list, tuple)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the script's docstring as written and shows every default."""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_optional(text: str) -> Any:
    """For constants whose default is None: 'none' stays None, numbers become numbers."""
    if text.strip().lower() in {"none", "null", ""}:
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _parser_for(default: Any) -> Callable[[str], Any]:
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if default is None:
        return _parse_optional
    if isinstance(default, (list, tuple)):
        item_parser = _parser_for(default[0]) if default else _parse_optional
        return lambda text: [item_parser(part) for part in text.split(",") if part.strip()]
    return str


@functools.lru_cache(maxsize=None)
def _assigned_at_top_level(source_file: str) -> dict[str, str]:
    """{name: trailing comment} for the names a module assigns itself (``X = ...  # comment``),
    so constants it imports are left out and each option's help is the constant's comment."""
    source = Path(source_file).read_text()
    lines = source.splitlines()
    names: dict[str, str] = {}
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        line = lines[node.end_lineno - 1]
        comment = line.split("#", 1)[1].strip() if "#" in line else ""
        names.update((t.id, comment) for t in targets if isinstance(t, ast.Name))
    return names


def config_constants(module_globals: dict[str, Any]) -> dict[str, Any]:
    """The UPPER_CASE constants a script defines itself, in the order they are defined."""
    source_file = module_globals.get("__file__")
    own_names = _assigned_at_top_level(source_file) if source_file else None
    return {
        name: value
        for name, value in module_globals.items()
        if name.isupper() and not name.startswith("_") and isinstance(value, _CONFIG_TYPES)
        and (own_names is None or name in own_names)
    }


def parse_config(
    module_globals: dict[str, Any],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    aliases: dict[str, str] | None = None,
) -> SimpleNamespace:
    """Turn a script's UPPER_CASE constants into command-line options and parse ``argv``.

    ``EPOCHS = 10`` becomes ``--epochs 10`` (``--EPOCHS`` works too); booleans take
    true/false; lists take comma-separated values; ``aliases`` maps extra flags such as
    ``-k`` onto a constant name. Returns a namespace with lower-case attribute names and
    leaves the module's globals untouched, so tests can call ``main([...])`` repeatedly.
    """
    constants = config_constants(module_globals)
    source_file = module_globals.get("__file__")
    comments = _assigned_at_top_level(source_file) if source_file else {}
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    extra_flags: dict[str, list[str]] = {}
    for flag, name in (aliases or {}).items():
        extra_flags.setdefault(name, []).append(flag)
    for name, default in constants.items():
        flags = [f"--{name.lower()}"]
        if "_" in name:
            flags.append(f"--{name.lower().replace('_', '-')}")
        flags.append(f"--{name}")
        flags += extra_flags.get(name, [])
        parser.add_argument(
            *dict.fromkeys(flags), dest=name.lower(), type=_parser_for(default), default=default,
            metavar=name, help=comments.get(name) or f"constant {name}",
        )
    args = parser.parse_args(list(argv) if argv is not None else None)
    return SimpleNamespace(**vars(args))


def config_to_dict(cfg: SimpleNamespace) -> dict[str, Any]:
    """A JSON-friendly copy of a parsed config (saved next to results and in checkpoints)."""
    return json.loads(json.dumps(vars(cfg), default=str))


def print_config(cfg: SimpleNamespace, title: str = "settings") -> None:
    width = max((len(k) for k in vars(cfg)), default=0)
    print(f"--- {title} ---")
    for key, value in vars(cfg).items():
        print(f"  {key.upper():<{width}} = {value}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A crash or an exception leaves the old file (if any) intact and removes the partial one.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a half-written file behind."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cpu', 'cuda', 'cuda:1' are taken as given."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available")
    return device


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op on CPU (CPU bf16 is slower than float32 on most machines)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
