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

A script with a ``RECIPE`` constant gets the values its recipe sets for it (asd/recipes.py, keyed by
the script's name), whether RECIPE is set at the top of the file or by ``--recipe``. run_all.py marks
its steps' options with the environment variable ``ASD_OPTIONS_GIVEN_TO``.

Command line: booleans work bare (``--sweep``) or with a value (``--sweep false``); lists take commas;
``none`` means None. A script may declare, right after its constants, ``_LIMITS = {"EPOCHS": (1, None),
"LEARNING_RATE": (">0", None), "HEAD": ("arcface", "linear")}``: a number's (low, high) bounds are
inclusive, ``">x"``/``"<x"`` make one exclusive, None leaves a side open; a text constant's tuple lists
its allowed values. A value outside its limits is rejected in argparse's style (``train.py: error:
--epochs must be >= 1, got 0``).

``--help`` answers without importing torch & co: each script calls ``exit_if_help(globals())``
before its heavy imports, which builds the same parser from the script's *source* (``ast`` and
``tokenize``). ``check_script_arguments`` uses that source parser too, so run_all can validate a step's
options (and know its effective settings) before running anything. This module imports nothing heavy.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import io
import json
import os
import sys
import tokenize
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from asd.imports import imported_names, module_file
from asd.recipes import recipe as recipe_values

GIVEN_TO_ENV = "ASD_OPTIONS_GIVEN_TO"  # run_all.py sets it to "run_all.py" for its steps
PRECEDENCE = "constant at the top of the file < recipe < value given to run_all.py < command-line flag"
_OPTION_TYPES = (bool, int, float, str, type(None), list, tuple)
_NOT_LITERAL = object()
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


def _literal(node: ast.AST | None) -> Any:
    """The value of a literal expression, or _NOT_LITERAL."""
    try:
        return ast.literal_eval(node) if node is not None else _NOT_LITERAL
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


# ----------------------------------------------------------------------------- reading a script's source


@dataclasses.dataclass(frozen=True)
class _Setting:
    name: str
    value: Any  # _NOT_LITERAL when the source does not give a literal
    help: str
    where: str  # file:line of the assignment (of the library's, for a taken-over setting)
    text: str  # the value as written


def _comment_lines(source: str) -> tuple[dict[int, str], set[int]]:
    """{line: comment text} of every comment, and the lines that hold nothing but a comment."""
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    alone = {number for number in comments if lines[number - 1].lstrip().startswith("#")}
    return comments, alone


def _help_of(node: ast.stmt, comments: dict[int, str], alone: set[int]) -> str:
    """The comment block directly above a statement (no blank line between), else the trailing
    comment of a one-line statement, else ""."""
    above, line = [], node.lineno - 1
    while line in alone:
        above.insert(0, comments[line])
        line -= 1
    if any(above):
        return " ".join(text for text in above if text)
    if node.lineno == node.end_lineno and node.lineno in comments and node.lineno not in alone:
        return comments[node.lineno]
    return ""


def _taken_over(node: ast.expr, script: Path, imports: dict[str, str]) -> _Setting | None:
    """The library setting ``module.NAME`` (or ``NAME`` imported with ``from module import NAME``)
    names, when ``node`` is such a reference to a project module's constant."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        dotted, name = imports.get(node.value.id, node.value.id), node.attr
    elif isinstance(node, ast.Name) and "." in imports.get(node.id, ""):
        dotted, name = imports[node.id].rsplit(".", 1)
    else:
        return None
    module = module_file(dotted, script)
    if module is None:
        return None
    return _script_source(str(module)).settings.get(name)


def _resolved(node: ast.expr, script: Path, imports: dict[str, str]) -> Any:
    """The value of ``_LIMITS`` as Python computes it, from the source: literals, references to a project
    module's constant (``preprocessing.CHANNEL_MODES``) and tuples or lists unpacking them (``("",
    *recipes.RECIPES)``: a dict unpacks to its keys); _NOT_LITERAL for anything else."""
    value = _literal(node)
    if value is not _NOT_LITERAL:
        return value
    if isinstance(node, (ast.Attribute, ast.Name)):
        setting = _taken_over(node, script, imports)
        return _NOT_LITERAL if setting is None else setting.value
    if isinstance(node, ast.Dict) and None not in node.keys:
        pairs = [
            (_resolved(k, script, imports), _resolved(v, script, imports))
            for k, v in zip(node.keys, node.values)
        ]
        return _NOT_LITERAL if any(_NOT_LITERAL in pair for pair in pairs) else dict(pairs)
    if isinstance(node, (ast.Tuple, ast.List)):
        items: list = []
        for element in node.elts:
            starred = isinstance(element, ast.Starred)
            value = _resolved(element.value if starred else element, script, imports)
            if value is _NOT_LITERAL or (starred and not isinstance(value, (tuple, list, dict))):
                return _NOT_LITERAL
            items += list(value) if starred else [value]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    return _NOT_LITERAL


def _script_source(source_file: str) -> SimpleNamespace:
    """read_source() of a script file as it is now (parsed once per content)."""
    return _read_source_once(Path(source_file).read_text(), str(source_file))


@functools.cache
def _read_source_once(source: str, source_file: str) -> SimpleNamespace:
    return read_source(source, source_file)


def read_source(source: str, source_file: str | os.PathLike) -> SimpleNamespace:
    """What a script's source says about its settings (the UPPER_CASE names it assigns itself at top
    level, with their help and literal values), its docstring, ``_LIMITS``, the ``aliases=`` of its
    ``parse_config`` call, and what is wrong with its settings (``problems``); ``source_file`` places
    it (the modules it takes settings over from are looked for beside it)."""
    path = Path(source_file)
    tree = ast.parse(source)
    comments, alone = _comment_lines(source)
    imports = imported_names(tree)
    settings: dict[str, _Setting] = {}
    private: dict[str, Any] = {}
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else ([node.target] if isinstance(node, ast.AnnAssign) else [])
        )
        for name in (t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper()):
            if name.startswith("_"):
                private[name] = _resolved(node.value, path, imports)
                continue
            text = ast.get_source_segment(source, node.value) or ""
            setting = _Setting(
                name,
                _literal(node.value),
                _help_of(node, comments, alone),
                f"{path.name}:{node.lineno}",
                text,
            )
            library = _taken_over(node.value, path, imports)
            if library is not None:
                setting = dataclasses.replace(library, name=name, help=setting.help or library.help)
            settings[name] = setting
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_config":
            aliases = next((_literal(k.value) for k in node.keywords if k.arg == "aliases"), aliases)
    limits = private.get("_LIMITS", {})
    problems = [_problem(path, s) for s in settings.values() if _problem(path, s)]
    if not isinstance(limits, dict):
        problems.append(
            f"{path}: _LIMITS cannot be read from the source; write each allowed value as a literal or a "
            f'reference to a project module\'s constant (preprocessing.CHANNEL_MODES, ("", *recipes.RECIPES))'
        )
    return SimpleNamespace(
        settings=settings,
        values={name: s.value for name, s in settings.items()},
        comments={name: s.help for name, s in settings.items()},
        limits=limits if isinstance(limits, dict) else {},
        problems=problems,
        doc=ast.get_docstring(tree, clean=False),
        aliases=aliases,
    )


def _problem(path: Path, setting: _Setting) -> str | None:
    """Why a setting cannot be an option (not a literal, or not a number, text, boolean, None or list)."""
    if setting.value is _NOT_LITERAL:
        return (
            f"{path}: constant {setting.name} ({setting.where}) is not a literal: {setting.name} = "
            f"{setting.text}. A setting is written as a plain value (a number, text, True/False, None or a "
            f"list of those) so that --help and run_all.py can read it without running the script; write "
            f"the value itself, or start the name with _ if it is not a setting"
        )
    if not isinstance(setting.value, _OPTION_TYPES):
        return (
            f"{path}: constant {setting.name} ({setting.where}) is a {type(setting.value).__name__}; a "
            f"setting is a number, text, True/False, None or a list (start the name with _ if it is not one)"
        )
    return None


def check_settings_source(source_file: str | os.PathLike) -> None:
    """Stop with a message naming the file and the constant when a setting is not a literal."""
    problems = _script_source(str(source_file)).problems
    if problems:
        raise SystemExit("error: " + "\n       ".join(problems))


def config_constants(module_globals: dict[str, Any]) -> dict[str, Any]:
    """The UPPER_CASE constants a script defines itself, in the order they are defined."""
    source_file = module_globals.get("__file__")
    own_names = _script_source(source_file).settings if source_file else None
    return {
        name: value
        for name, value in module_globals.items()
        if name.isupper()
        and not name.startswith("_")
        and isinstance(value, _OPTION_TYPES)
        and (own_names is None or name in own_names)
    }


def source_constants(source_file: str | os.PathLike) -> dict[str, Any]:
    """config_constants() of a script read from its source, without running it."""
    values = _script_source(str(source_file)).values
    return {name: value for name, value in values.items() if isinstance(value, _OPTION_TYPES)}


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
        _script_source(source_file) if source_file else None,
        module_globals.get("_LIMITS", {}),
        aliases or {},
        sys.argv[1:] if argv is None else argv,
    )


def check_script_arguments(script: str | os.PathLike, argv: Sequence[str]) -> Settings:
    """Parse ``argv`` as ``script`` would, from its source, without importing it: its effective
    settings, or argparse's error and exit when an option is unknown or out of range (and an error
    naming the constant when a setting is not a literal)."""
    check_settings_source(script)
    source = _script_source(str(script))
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
