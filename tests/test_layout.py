"""The layout rules the code keeps (docs/architecture.md): no import cycles, short modules, short
functions, module-level imports unless a comment says why one must be lazy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bpiml"
MAX_MODULE_LINES = 400  # a tripwire, not a target: a module is as long as its one concept needs
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text(), filename=str(path)))
    return out


def _imported(node: ast.AST, module: str, known: set[str]) -> set[str]:
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
        base = node.module
        names = {base} | {f"{base}.{a.name}" for a in node.names}
    return {n for n in names if n in known and n != module}


def test_no_import_cycles() -> None:
    modules = _modules()
    known = set(modules)
    graph = {m: set().union(*[_imported(n, m, known) for n in ast.walk(tree)] or [set()])
             for m, (_, tree) in modules.items()}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            if not nxt.startswith(node + "."):  # a package importing its own submodules is no cycle
                visit(nxt, stack + [node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])


# The package order of docs/architecture.md ("Package order"), lowest first: a package imports only from
# its own layer and the layers below it. `config` and `data` are one base layer (config reads and saves
# through data.storage; data's importer configs derive from config.BaseConfig).
PACKAGE_ORDER = (
    {"config", "data"},
    {"runtime"},
    {"model"},
    {"synth", "pseudolabel"},
    {"train"},
    {"evaluation"},
    {"review", "serving"},
    {"cli"},
)


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_packages_import_down_the_order() -> None:
    layer = {pkg: i for i, pkgs in enumerate(PACKAGE_ORDER) for pkg in pkgs}
    modules = _modules()
    known = set(modules)
    assert {_package(m) for m in known} - {"bpiml"} <= set(layer), "a package missing from PACKAGE_ORDER"
    upward = set()
    for module, (_, tree) in modules.items():
        for node in ast.walk(tree):
            for target in _imported(node, module, known):
                src, dst = _package(module), _package(target)
                if src in layer and dst in layer and layer[dst] > layer[src]:
                    upward.add((module, target))
    assert not upward, "imports up the package order (docs/architecture.md): " + ", ".join(
        f"{m} -> {t}" for m, t in sorted(upward))


def test_modules_and_functions_are_short() -> None:
    long_modules, long_functions = [], []
    for name, (path, tree) in _modules().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name}: {length} lines")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_function_level_imports_say_why() -> None:
    unexplained = []
    for name, (path, tree) in _modules().items():
        source = path.read_text().splitlines()
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    before = source[node.lineno - 2].strip() if node.lineno > 1 else ""
                    same = source[node.lineno - 1]
                    if not before.startswith("#") and "#" not in same:
                        unexplained.append(f"{name}:{node.lineno}: {same.strip()}")
    assert not unexplained, unexplained


def test_the_pseudo_labeling_driver_does_not_import_torch() -> None:
    """Its driver runs on the head (no GPU, little memory): torch alone is ~0.5 GB of RSS there.
    Only the teacher actors import it (bpiml.pseudolabel.labeler, lazily)."""
    code = ("import sys, bpiml.pseudolabel.job\n"
            "torch = sorted(m for m in sys.modules if m.split('.')[0] == 'torch')\n"
            "sys.exit(f'imported: {torch[:3]}' if torch else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
