"""Which project files a Python file imports, read from its source: the one rule that run_all's code
keys (asd/run/pipeline.py), the settings reader (asd/base/cli.py) and the architecture tests share.

A dotted name ``a.b`` is the project file ``a/b.py`` looked for beside the importing file, then in
the project folder (the one holding asd/); ``from a import b`` also tries ``a/b.py``. Any other name
is an outside library. Imports anywhere in the source count (inside functions too); relative imports
are not used in this project and are left out. Nothing is imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]


def imported_names(tree: ast.Module) -> dict[str, str]:
    """{local name: dotted name it stands for} of a module's imports (``import x``, ``import a.b as c``,
    ``from asd import y``)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                names[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def module_file(dotted: str, importer: Path, project_dir: Path = PROJECT_DIR) -> Path | None:
    """The project file (resolved) the dotted name means in ``importer``, or None for an outside library."""
    relative = Path(*dotted.split(".")).with_suffix(".py")
    for folder in dict.fromkeys([Path(importer).resolve().parent, Path(project_dir).resolve()]):
        if (folder / relative).is_file() and relative.name != "__init__.py":
            return folder / relative
    return None


def project_imports(path: Path, project_dir: Path = PROJECT_DIR) -> set[Path]:
    """The project files ``path`` imports directly, itself left out."""
    found = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            target = module_file(name, path, project_dir)
            if target is not None and target != Path(path).resolve():
                found.add(target)
    return found


def local_sources(script: Path, project_dir: Path = PROJECT_DIR) -> list[Path]:
    """The script and every project file it imports, directly or not (so editing asd/model/model.py reruns
    training, not only editing train.py)."""
    found: set[Path] = set()
    pending = [Path(script).resolve()]
    while pending:
        path = pending.pop()
        if path not in found:
            found.add(path)
            pending += project_imports(path, project_dir)
    return sorted(found)
