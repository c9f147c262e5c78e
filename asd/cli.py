"""The command-line engine: every script's UPPER_CASE constants become its options.

Command line. Every UPPER_CASE constant a script assigns itself is an option: ``EPOCHS = 10  # passes``
becomes ``--epochs 10`` with help "passes"; booleans work bare (``--sweep``) or with a value
(``--sweep false``); lists take commas; ``none`` means None. A script may declare, right after its
constants, ``_LIMITS = {"EPOCHS": (1, None), "LEARNING_RATE": (">0", None), "HEAD": ("arcface", "linear")}``:
a number's (low, high) bounds are inclusive, ``">x"``/``"<x"`` make one exclusive, None leaves a side
open; a text constant's tuple lists its allowed values. ``parse_config`` rejects a value outside its
limits in argparse's style (``train.py: error: --epochs must be >= 1, got 0``).

``--help`` answers without importing torch & co: each script calls ``exit_if_help(globals())``
before its heavy imports. That builds the same parser from the script's *source* (``ast``: the
constants' literal values, their trailing comments, ``_LIMITS`` and the ``aliases=`` of its
``parse_config`` call), prints the help and exits; on any other command line it does nothing.
``check_script_arguments`` uses the same source parser so run_all can validate a step's options
before running anything. This module itself imports torch only inside the functions that need it.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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


_NOT_LITERAL = object()


def _literal(node: ast.AST | None) -> Any:
    """The value of a literal expression, or _NOT_LITERAL."""
    try:
        return ast.literal_eval(node) if node is not None else _NOT_LITERAL
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


@functools.cache
def _script_source(source_file: str) -> SimpleNamespace:
    """What a script's source says about its options: the names it assigns itself at top level
    with their trailing comments and literal values, its docstring, and the ``aliases=`` of its
    ``parse_config`` call. Constants a script imports are left out."""
    source = Path(source_file).read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    comments: dict[str, str] = {}
    values: dict[str, Any] = {}
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else ([node.target] if isinstance(node, ast.AnnAssign) else [])
        )
        line = lines[node.end_lineno - 1]
        comment = line.split("#", 1)[1].strip() if "#" in line else ""
        for target in (t for t in targets if isinstance(t, ast.Name)):
            comments[target.id] = comment
            values[target.id] = _literal(node.value)
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_config":
            aliases = next((_literal(k.value) for k in node.keywords if k.arg == "aliases"), aliases)
    return SimpleNamespace(
        comments=comments, values=values, doc=ast.get_docstring(tree, clean=False), aliases=aliases
    )


def _is_constant(name: str, value: Any) -> bool:
    return name.isupper() and not name.startswith("_") and isinstance(value, _CONFIG_TYPES)


def config_constants(module_globals: dict[str, Any]) -> dict[str, Any]:
    """The UPPER_CASE constants a script defines itself, in the order they are defined."""
    source_file = module_globals.get("__file__")
    own_names = _script_source(source_file).comments if source_file else None
    return {
        name: value
        for name, value in module_globals.items()
        if _is_constant(name, value) and (own_names is None or name in own_names)
    }


def source_constants(source_file: str | os.PathLike) -> dict[str, Any]:
    """config_constants() of a script read from its source, without running it."""
    values = _script_source(str(source_file)).values
    return {name: value for name, value in values.items() if _is_constant(name, value)}


# ----------------------------------------------------------------------------- limits


def _bound(bound: Any, side: str) -> tuple[str, float] | None:
    """(comparison, number) of one side of a range: 1 -> ('>=', 1); '>0' -> ('>', 0.0)."""
    if bound is None:
        return None
    if isinstance(bound, str):
        return bound[0], float(bound[1:])
    return (">=" if side == "low" else "<="), bound


def _is_range(limit: tuple) -> bool:
    return len(limit) == 2 and all(
        b is None
        or (isinstance(b, (int, float)) and not isinstance(b, bool))
        or (isinstance(b, str) and b[:1] in "<>")
        for b in limit
    )


def _describe_limit(limit: tuple) -> str:
    if not _is_range(limit):
        return "one of " + ", ".join(str(v) if v != "" else '""' for v in limit)
    sides = [_bound(b, side) for b, side in zip(limit, ("low", "high"))]
    return " and ".join(f"{op} {number:g}" for op, number in filter(None, sides))


def _within(value: Any, limit: tuple) -> bool:
    if not _is_range(limit):
        return value in limit
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    compare = {">=": value.__ge__, ">": value.__gt__, "<=": value.__le__, "<": value.__lt__}
    sides = [_bound(b, side) for b, side in zip(limit, ("low", "high"))]
    return all(compare[op](number) for op, number in filter(None, sides))


def limit_violation(value: Any, limit: tuple) -> str | None:
    """Why ``value`` (or an item of a list value) breaks ``limit``, or None; None values pass."""
    for item in value if isinstance(value, list) else [value]:
        if item is not None and not _within(item, limit):
            return f"must be {_describe_limit(limit)}, got {item!r}"
    return None


# ----------------------------------------------------------------------------- parsing

_POSITIONAL = "positional_"


def _build_parser(
    prog: str | None,
    description: str | None,
    constants: dict[str, Any],
    comments: dict[str, str],
    limits: dict[str, tuple],
    aliases: dict[str, str],
) -> argparse.ArgumentParser:
    unknown = sorted(set(limits) - set(constants))
    if unknown:
        raise ValueError(f"{prog}: _LIMITS names {unknown}, which are not constants of the script")
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=_HelpFormatter, allow_abbrev=False
    )
    extra_flags: dict[str, list[str]] = {}
    for flag, name in aliases.items():
        if flag.startswith("-"):
            extra_flags.setdefault(name, []).append(flag)
        else:  # a bare word: the script's positional arguments, added to that list constant
            parser.add_argument(
                f"{_POSITIONAL}{name.lower()}",
                nargs="*",
                default=[],
                metavar=flag,
                help=f"added to --{name.lower()}",
            )
    for name, default in constants.items():
        text = comments.get(name) or f"constant {name}"
        if name in limits:
            text += f" [{_describe_limit(limits[name])}]"
        bare = {"nargs": "?", "const": True} if isinstance(default, bool) else {}
        parser.add_argument(
            *dict.fromkeys([f"--{name.lower()}", *extra_flags.get(name, [])]),
            dest=name.lower(),
            type=_parser_for(default),
            default=default,
            metavar=name,
            help=text.replace("%", "%%"),
            **bare,
        )
    return parser


def _parse(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, limits: dict[str, tuple]
) -> SimpleNamespace:
    args = vars(parser.parse_args(list(argv) if argv is not None else None))
    for key in [k for k in args if k.startswith(_POSITIONAL)]:
        name = key.removeprefix(_POSITIONAL)
        args[name] = list(args[name] or []) + args.pop(key)
    for name, limit in limits.items():
        problem = limit_violation(args[name.lower()], limit)
        if problem:
            parser.error(f"--{name.lower()} {problem}")
    return SimpleNamespace(**args)


def parse_config(
    module_globals: dict[str, Any],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    aliases: dict[str, str] | None = None,
) -> SimpleNamespace:
    """Turn a script's UPPER_CASE constants into command-line options and parse ``argv``.

    ``EPOCHS = 10`` becomes ``--epochs 10``; ``aliases`` maps extra flags such as ``-k`` onto a
    constant name, and a bare word (``{"clips": "CLIPS"}``) makes the positional arguments extend
    that list constant; values outside the script's ``_LIMITS`` are rejected. Returns a namespace with
    lower-case attribute names and leaves the module's globals untouched, so tests can call
    ``main([...])`` repeatedly.
    """
    source_file = module_globals.get("__file__")
    comments = _script_source(source_file).comments if source_file else {}
    limits = module_globals.get("_LIMITS", {})
    parser = _build_parser(
        Path(source_file).name if source_file else None,
        description,
        config_constants(module_globals),
        comments,
        limits,
        aliases or {},
    )
    return _parse(parser, argv, limits)


def check_script_arguments(script: str | os.PathLike, argv: Sequence[str]) -> SimpleNamespace:
    """Parse ``argv`` as ``script`` would, from its source, without importing it (argparse's
    error and exit when an option is unknown or out of range)."""
    source = _script_source(str(script))
    limits = source.values.get("_LIMITS", {})
    parser = _build_parser(
        Path(script).name, source.doc, source_constants(script), source.comments, limits, source.aliases
    )
    return _parse(parser, argv, limits)


def exit_if_help(module_globals: dict[str, Any]) -> None:
    """Answer ``-h``/``--help`` of a script run as ``__main__`` from its source, then exit; call it
    before the heavy imports. Does nothing otherwise."""
    if module_globals.get("__name__") == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
        check_script_arguments(module_globals["__file__"], sys.argv[1:])


def config_to_dict(cfg: SimpleNamespace) -> dict[str, Any]:
    """A JSON-friendly copy of a parsed config (saved next to results and in checkpoints)."""
    return json.loads(json.dumps(vars(cfg), default=str))


def print_config(cfg: SimpleNamespace, title: str = "settings") -> None:
    width = max((len(k) for k in vars(cfg)), default=0)
    print(f"--- {title} ---")
    for key, value in vars(cfg).items():
        print(f"  {key.upper():<{width}} = {value}")
