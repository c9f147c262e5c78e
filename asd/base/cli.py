"""The command-line engine: every UPPER_CASE constant at the top of a script becomes its option.

Settings. Every UPPER_CASE name a script assigns itself at top level (not starting with ``_``) is a
setting and an option: ``EPOCHS = 10`` becomes ``--epochs 10``. Its help is the comment block directly
above it (or a trailing comment on a one-line statement). Its value must be a literal (a number, text,
a boolean, None or a list of those), so that ``--help`` and run_all can read it without running the
script; anything else is an error naming the constant and the file. A setting shared by several
scripts is written once, in the library module that uses it, and a script takes it over with
``FEATURE_CACHE = preprocessing.FEATURE_CACHE`` (value and help are read from that module).

Precedence, lowest first (print_config shows where each value came from)::

    constant at the top of the file < recipe < value given to run_all.py < command-line flag

A script with a ``RECIPE`` constant gets the values its recipe sets for it (asd/base/recipes.py, keyed by
the script's name), whether RECIPE is set at the top of the file or by ``--recipe``. run_all.py marks
its steps' options with the environment variable ``ASD_OPTIONS_GIVEN_TO``.

Command line: booleans work bare (``--sweep``) or with a value (``--sweep false``); lists take commas;
``none`` means None. A script may declare, right after its constants, ``_LIMITS = {"EPOCHS": (1, None),
"LEARNING_RATE": (">0", None), "HEAD": ("arcface", "linear")}``: a number's (low, high) bounds are
inclusive, ``">x"``/``"<x"`` make one exclusive, None leaves a side open; a text constant's tuple lists
its allowed values. A value outside its limits is rejected in argparse's style (``train.py: error:
--epochs must be >= 1, got 0``).

``--help`` answers without importing torch & co: each script calls ``exit_if_help(globals())``
before its heavy imports, which builds the same parser from the script's *source* (read by
asd/base/settings_source.py with ``ast`` and ``tokenize``). ``check_script_arguments`` uses that source
parser too, so run_all can validate a step's options (and know its effective settings) before running
anything. This module imports nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from asd.base.recipes import recipe as recipe_values
from asd.base.settings_source import check_settings_source, config_constants, script_source, source_constants

GIVEN_TO_ENV = "ASD_OPTIONS_GIVEN_TO"  # run_all.py sets it to "run_all.py" for its steps
PRECEDENCE = "constant at the top of the file < recipe < value given to run_all.py < command-line flag"
_UNSET = object()


class Settings(SimpleNamespace):
    """A parsed configuration: lower-case attributes (what ``vars()`` gives and checkpoints save), and
    where each value came from (``sources``, kept out of ``vars()``)."""

    __slots__ = ("_sources",)

    @property
    def sources(self) -> dict[str, str]:
        return getattr(self, "_sources", {})


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
    return _parse_text


def _parse_text(text: str) -> str | None:
    """Text options: "none" (any case) is None, the one spelling of "off" for every setting."""
    return None if text.strip().lower() == "none" else text


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


def _named_recipe(argv: Sequence[str], default: str) -> str:
    """The recipe of the last --recipe NAME / --recipe=NAME in ``argv``, else ``default``."""
    name = default
    for i, arg in enumerate(argv):
        flag, has_value, value = arg.partition("=")
        if flag == "--recipe" and (has_value or i + 1 < len(argv)):
            name = value if has_value else argv[i + 1]
    return name


def _apply_recipe(
    parser: argparse.ArgumentParser, constants: dict, argv: Sequence[str], script: str
) -> tuple:
    """Make the recipe named by RECIPE (the file's or --recipe's) the defaults; (name, its values)."""
    if not isinstance(constants.get("RECIPE"), str):
        return "", {}
    name = _named_recipe(argv, constants["RECIPE"])
    if not name:
        return "", {}
    try:
        values = recipe_values(name, script)
    except ValueError as error:
        parser.error(f"--recipe: {error}")
    unknown = sorted(set(values) - set(constants))
    if unknown:
        parser.error(f"recipe {name} sets {', '.join(unknown)}, which are not constants of this script")
    parser.set_defaults(**{key.lower(): value for key, value in values.items()})
    return name, values


def _given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations ``argv`` sets explicitly (parsed again with every default a sentinel)."""
    saved = {action.dest: action.default for action in parser._actions if action.dest != "help"}
    parser.set_defaults(**dict.fromkeys(saved, _UNSET))
    try:
        parsed = vars(parser.parse_args(list(argv)))
    finally:
        parser.set_defaults(**saved)
    return {key.removeprefix(_POSITIONAL) for key, value in parsed.items() if value is not _UNSET}


def _settings(
    prog: str | None,
    description: str | None,
    constants: dict[str, Any],
    source: SimpleNamespace | None,
    limits: dict[str, tuple],
    aliases: dict[str, str],
    argv: Sequence[str],
) -> Settings:
    """Parse ``argv`` over the constants and the recipe, check the limits, record each value's source."""
    parser = _build_parser(prog, description, constants, source.comments if source else {}, limits, aliases)
    script = Path(prog or "").stem
    recipe, from_recipe = _apply_recipe(parser, constants, argv, script)
    args = vars(parser.parse_args(list(argv)))
    for key in [k for k in args if k.startswith(_POSITIONAL)]:
        name = key.removeprefix(_POSITIONAL)
        args[name] = list(args[name] or []) + args.pop(key)
    for name, limit in limits.items():
        value = args[name.lower()]
        problem = limit_violation(value, limit)
        if value is None and constants.get(name) is not None and not _is_range(limit) and None not in limit:
            problem = f"must be {_describe_limit(limit)}, got none"  # "none" turns off only what may be off
        if problem:
            parser.error(f"--{name.lower()} {problem}")
    given = _given(parser, argv)
    flag_source = os.environ.get(GIVEN_TO_ENV) or "command line"
    sources = {}
    for name in constants:
        key = name.lower()
        origin = source.settings[name].where.split(":")[0] if source and name in source.settings else prog
        if key in given:
            sources[key] = flag_source + (
                f" (recipe {recipe}: {from_recipe[name]!r})" if name in from_recipe else ""
            )
        else:
            sources[key] = f"recipe {recipe}" if name in from_recipe else f"top of {origin}"
    settings = Settings(**args)
    settings._sources = sources
    return settings


def parse_config(
    module_globals: dict[str, Any],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    aliases: dict[str, str] | None = None,
) -> Settings:
    """Turn a script's UPPER_CASE constants into command-line options and parse ``argv``.

    ``EPOCHS = 10`` becomes ``--epochs 10``; the recipe RECIPE names (the file's or --recipe's) sets
    its values over the constants, and flags win over both. ``aliases`` maps extra flags such as ``-k``
    onto a constant name, and a bare word (``{"clips": "CLIPS"}``) makes the positional arguments extend
    that list constant; values outside the script's ``_LIMITS`` are rejected, and so is a constant that
    is not a literal. Returns lower-case attributes and leaves the module's globals untouched, so tests
    can call ``main([...])`` repeatedly.
    """
    source_file = module_globals.get("__file__")
    if source_file:
        check_settings_source(source_file)
    return _settings(
        Path(source_file).name if source_file else None,
        description,
        config_constants(module_globals),
        script_source(source_file) if source_file else None,
        module_globals.get("_LIMITS", {}),
        aliases or {},
        sys.argv[1:] if argv is None else argv,
    )


def check_script_arguments(script: str | os.PathLike, argv: Sequence[str]) -> Settings:
    """Parse ``argv`` as ``script`` would, from its source, without importing it: its effective
    settings, or argparse's error and exit when an option is unknown or out of range (and an error
    naming the constant when a setting is not a literal)."""
    check_settings_source(script)
    source = script_source(str(script))
    return _settings(
        Path(script).name, source.doc, source_constants(script), source, source.limits, source.aliases, argv
    )


def exit_if_help(module_globals: dict[str, Any]) -> None:
    """Answer ``-h``/``--help`` of a script run as ``__main__`` from its source, then exit; call it
    before the heavy imports. Does nothing otherwise."""
    if module_globals.get("__name__") == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
        check_script_arguments(module_globals["__file__"], sys.argv[1:])


def config_to_dict(cfg: SimpleNamespace) -> dict[str, Any]:
    """A JSON-friendly copy of a parsed config (saved next to results and in checkpoints)."""
    return json.loads(json.dumps(vars(cfg), default=str))


def print_config(cfg: SimpleNamespace, title: str = "settings") -> None:
    """Every setting with where its value came from, under the precedence rule."""
    width = max((len(k) for k in vars(cfg)), default=0)
    sources = getattr(cfg, "sources", {})
    print(f"--- {title} (precedence, lowest first: {PRECEDENCE}) ---")
    for key, value in vars(cfg).items():
        origin = f"  [{sources[key]}]" if key in sources else ""
        print(f"  {key.upper():<{width}} = {value}{origin}")
