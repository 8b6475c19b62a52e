"""Dependencies declared honestly: every distribution that bpiml/ or jobs/ imports is declared in
pyproject.toml, every declared one is imported (or has its reason below), `dependencies` holds ranges
and constraints.txt the exact pins, and scripts/setup.sh installs through the constraints."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Declared, never imported by name: why each is still needed.
NOT_IMPORTED = {
    "s3fs": "fsspec's s3:// implementation, loaded by fsspec from the URL's protocol",
}
# Imported, not declared in pyproject.toml: why, and where it comes from instead.
NOT_DECLARED = {
    "label-studio-sdk": "its opencv pin clashes with ours: pinned in constraints.txt, installed --no-deps by "
                        "scripts/setup.sh (bpiml review's brush RLE only)",
}


def _declared(requirements: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, requirements)}


def _imported_modules() -> dict[str, set[str]]:
    """Top-level module -> the files importing it (module level or inside functions), stdlib and bpiml left out."""
    found: dict[str, set[str]] = {}
    for folder in ("bpiml", "jobs"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                         else [])
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "bpiml":
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_is_declared_and_every_declaration_is_imported() -> None:
    declared = _declared(PYPROJECT["dependencies"])
    distributions = importlib.metadata.packages_distributions()
    undeclared, used = [], set()
    for module, files in sorted(_imported_modules().items()):
        dists = {canonicalize_name(d) for d in distributions.get(module, [])}
        assert dists, f"{module} (imported by {sorted(files)}) belongs to no installed distribution"
        used |= dists
        if not dists & (declared.keys() | NOT_DECLARED.keys()):
            undeclared.append(f"{module} ({'/'.join(sorted(dists))}) imported by {sorted(files)[:3]}")
    assert not undeclared, f"imported, not declared in pyproject.toml: {undeclared}"
    unused = sorted(set(declared) - used - set(NOT_IMPORTED))
    assert not unused, f"declared in pyproject.toml, imported nowhere in bpiml/ or jobs/: {unused}"
    assert set(NOT_IMPORTED) <= set(declared) and not set(NOT_IMPORTED) & used, "NOT_IMPORTED is out of date"


def test_pyproject_holds_ranges_and_constraints_the_pins() -> None:
    runtime = _declared(PYPROJECT["dependencies"])
    dev = _declared(PYPROJECT["optional-dependencies"]["dev"])
    exact = [str(r) for r in (*runtime.values(), *dev.values()) if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not exact, f"exact pins belong in constraints.txt, not pyproject.toml: {exact}"
    pins = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert [s.operator for s in req.specifier] == ["=="], f"constraints.txt pins exactly: {raw!r}"
            pins[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    missing = sorted((set(runtime) | set(dev) | set(NOT_DECLARED)) - set(pins))
    assert not missing, f"declared but not pinned in constraints.txt: {missing}"
    outside = [f"{name}=={pins[name]} (pyproject: {req.specifier})" for name, req in {**runtime, **dev}.items()
               if not req.specifier.contains(pins[name], prereleases=True)]
    assert not outside, f"constraints.txt pins outside pyproject's ranges: {outside}"


def test_setup_installs_through_the_constraints() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if '"${pip[@]}"' in line and "install" not in line.split("=")[0]]
    assert installs, "scripts/setup.sh installs nothing through ${pip[@]}?"
    assert all("-c constraints.txt" in line for line in installs), installs
    assert re.search(r"pip=\(.*-m pip install", setup)
