"""The project's shape: no import cycle, no script importing a script, imports only pointing downhill
(the layers below, top first), no module over 600 lines, metrics.py under 450. Each failure names the
module and the rule it breaks."""

from __future__ import annotations

from pathlib import Path

from asd.base.docs import SCRIPTS
from asd.base.imports import module_file, project_imports
from helpers import project_modules

ROOT = Path(__file__).resolve().parents[1]
# a module's folder is its layer, top first: a module may import its own layer and the layers below it,
# never one above (asd/backends, train, embed, score, report and run are one layer: no cycle among them)
UPPER = ("asd/train/", "asd/embed/", "asd/score/", "asd/backends/", "asd/report/", "asd/run/")
LAYERS = [
    ("scripts", lambda path: path in SCRIPTS),
    ("asd/{train,embed,score,backends,report,run}", lambda path: path.startswith(UPPER)),
    ("asd/model", lambda path: path.startswith("asd/model/")),
    ("asd/data", lambda path: path.startswith("asd/data/")),
    ("asd/base", lambda path: path.startswith("asd/base/")),
]
LOW_LEVEL = [path for path in project_modules() if path.startswith("asd/base/")]
MAX_SCRIPT_LINES = 350
MAX_LINES = 460  # "about 450": split a module by job past it
MAX_METRICS_LINES = 450


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports anywhere in its source (asd/base/imports.py's rule)."""
    return {str(path.relative_to(ROOT)) for path in project_imports(ROOT / module, ROOT)}


def graph() -> dict[str, set[str]]:
    return {module: imports_of(module) for module in project_modules()}


def layer_of(module: str) -> int | None:
    return next((i for i, (_, member) in enumerate(LAYERS) if member(module)), None)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_every_module_has_a_layer():
    unplaced = [m for m in project_modules() if layer_of(m) is None]
    assert not unplaced, (
        "rule 'every module has a layer' broken by: "
        + ", ".join(unplaced)
        + " (add a script to asd/base/docs.SCRIPTS; a module belongs in one of the asd/ layer folders)"
    )


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "rule 'no import cycle' broken by: " + "; ".join(" <-> ".join(g) for g in found)


def test_no_script_imports_another_script():
    broken = [
        f"{module} imports the script {target}"
        for module, targets in graph().items()
        if module in SCRIPTS
        for target in sorted(targets)
        if target in SCRIPTS
    ]
    assert not broken, "rule 'no script imports a script' broken:\n  " + "\n  ".join(broken)


def test_imports_only_point_downhill():
    broken = []
    for module, targets in graph().items():
        here = layer_of(module)
        for target in sorted(targets):
            there = layer_of(target)
            if here is not None and there is not None and there < here:
                broken.append(
                    f"{module} ({LAYERS[here][0]}) imports {target} ({LAYERS[there][0]}), a layer above"
                )
    assert not broken, "rule 'imports point downhill' broken:\n  " + "\n  ".join(broken)


def test_no_module_over_about_450_lines():
    long = {m: n for m in project_modules() if (n := len((ROOT / m).read_text().splitlines())) > MAX_LINES}
    assert not long, f"rule 'no module over {MAX_LINES} lines' broken by: " + ", ".join(
        f"{m} ({n} lines)" for m, n in sorted(long.items())
    )


def test_no_script_over_350_lines():
    long = {m: n for m in SCRIPTS if (n := len((ROOT / m).read_text().splitlines())) > MAX_SCRIPT_LINES}
    assert not long, f"rule 'no script over {MAX_SCRIPT_LINES} lines' broken by: " + ", ".join(
        f"{m} ({n} lines)" for m, n in sorted(long.items())
    )


def test_metrics_holds_only_definitions_in_under_450_lines():
    lines = len((ROOT / "asd" / "report" / "metrics.py").read_text().splitlines())
    assert lines < MAX_METRICS_LINES, (
        f"rule 'asd/report/metrics.py under {MAX_METRICS_LINES} lines' broken: {lines} lines"
    )
    assert not imports_of("asd/report/metrics.py") - set(LOW_LEVEL), (
        "rule 'metrics.py holds only metric definitions' broken: it imports "
        + ", ".join(sorted(imports_of("asd/report/metrics.py") - set(LOW_LEVEL)))
    )


def test_the_checks_see_a_cycle_an_uphill_import_and_a_script_import():
    edges = {"a.py": {"b.py"}, "b.py": {"c.py"}, "c.py": {"a.py"}, "d.py": {"a.py"}}
    assert cycles(edges) == [["a.py", "b.py", "c.py"]]
    assert module_file("asd.base.cli", ROOT / "run_all.py") == ROOT / "asd/base/cli.py"
    assert module_file("encoder", ROOT / "bench/gpu_check.py") == ROOT / "bench/encoder.py"
    assert module_file("torch", ROOT / "train.py") is None
    assert [layer_of(m) for m in ("train.py", "asd/report/metrics.py", "asd/model/model.py")] == [0, 1, 2]
    assert [layer_of(m) for m in ("asd/data/dataset.py", "asd/base/cli.py", "asd/backends/knn.py")] == [
        3,
        4,
        1,
    ]


def test_a_test_module_importing_another_is_seen(tmp_path):
    (tmp_path / "test_a.py").write_text("def test_x():\n    from test_b import helper\n")
    (tmp_path / "test_b.py").write_text("helper = 1\n")
    assert imported_test_modules(tmp_path / "test_a.py") == {"test_b.py"}


def imported_test_modules(path: Path) -> set[str]:
    """The test modules (and conftest.py, which pytest loads itself) that ``path`` imports."""
    return {
        target.name
        for target in project_imports(path, ROOT)
        if target.parent == path.parent and (target.name.startswith("test_") or target.name == "conftest.py")
    }


def test_no_test_module_imports_another():
    """Shared test helpers live in tests/conftest.py (fixtures) or tests/helpers.py, never in a test module."""
    tests = sorted((ROOT / "tests").glob("*.py"))
    broken = [
        f"{p.name} imports {', '.join(sorted(found))}" for p in tests if (found := imported_test_modules(p))
    ]
    assert not broken, "rule 'no test module imports another' broken:\n  " + "\n  ".join(broken)
