"""Reading a script's settings from its source, without running it (for --help, run_all's checks and
docs/constants.md): every UPPER_CASE name it assigns itself at top level (not starting with ``_``),
its help (the comment block directly above, or a trailing comment on a one-line statement), its
literal value, where it is written (a setting taken over with ``FEATURE_CACHE =
preprocessing.FEATURE_CACHE`` is read from that module), ``_LIMITS`` (literals, or references to a
project module's constants such as ``preprocessing.CHANNEL_MODES`` and ``("", *recipes.RECIPES)``,
computed as Python would) and what is wrong with them. asd/base/cli.py turns them into options.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import io
import os
import tokenize
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from asd.base.imports import imported_names, module_file

OPTION_TYPES = (bool, int, float, str, type(None), list, tuple)  # what a setting's value may be
_NOT_LITERAL = object()


def _literal(node: ast.AST | None) -> Any:
    """The value of a literal expression, or _NOT_LITERAL."""
    try:
        return ast.literal_eval(node) if node is not None else _NOT_LITERAL
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


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
    return script_source(str(module)).settings.get(name)


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


def script_source(source_file: str) -> SimpleNamespace:
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
    if not isinstance(setting.value, OPTION_TYPES):
        return (
            f"{path}: constant {setting.name} ({setting.where}) is a {type(setting.value).__name__}; a "
            f"setting is a number, text, True/False, None or a list (start the name with _ if it is not one)"
        )
    return None


def check_settings_source(source_file: str | os.PathLike) -> None:
    """Stop with a message naming the file and the constant when a setting is not a literal."""
    problems = script_source(str(source_file)).problems
    if problems:
        raise SystemExit("error: " + "\n       ".join(problems))


def config_constants(module_globals: dict[str, Any]) -> dict[str, Any]:
    """The UPPER_CASE constants a script defines itself, in the order they are defined."""
    source_file = module_globals.get("__file__")
    own_names = script_source(source_file).settings if source_file else None
    return {
        name: value
        for name, value in module_globals.items()
        if name.isupper()
        and not name.startswith("_")
        and isinstance(value, OPTION_TYPES)
        and (own_names is None or name in own_names)
    }


def source_constants(source_file: str | os.PathLike) -> dict[str, Any]:
    """config_constants() of a script read from its source, without running it."""
    values = script_source(str(source_file)).values
    return {name: value for name, value in values.items() if isinstance(value, OPTION_TYPES)}
