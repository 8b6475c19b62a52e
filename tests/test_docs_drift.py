"""Docs that cannot drift: every module path, file path, `--flag`, stated flag default and BPIML_*
variable named in README.md and docs/*.md exists in the code, and matches it.

The parsers' flags and defaults are read from docs/cli.md, which scripts/cli_docs.py generates from
the parsers themselves (tests/test_cli_docs.py keeps it current); the flags of scripts/ and
benchmarks/ from their `add_argument` calls. A flag that follows `jobs/<name>.py` or `bpiml
<command>` in a command must be one of that parser's; a flag elsewhere must be one of some parser of
the project, or belong to a span of another tool's command (ray, mlflow, aws, ...)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "cli.md")]
FLAG = r"(?<![\w-])--[a-z][\w-]*"
# Commands of other tools: their flags are theirs (checked by nobody here).
EXTERNAL = ("ray", "mlflow", "aws", "pip", "curl", "kubectl", "docker", "serve", "RUN", "FROM", "COPY", "git",
            "apt-get", "weed", "pytest", "ulimit", "label-studio", "python -m pip", ".venv/bin/mlflow",
            ".venv/bin/ray", ".venv/bin/pip", ".venv/bin/python -m pytest", "python -m pytest")
# Flags named in prose that are no parser's, on purpose.
NOT_OURS = {
    "--num_workers": "architecture.md: how jsonargparse would spell --num-workers (the alternative not taken)",
    "--snake-case": "architecture.md: the rule snake_case -> --snake-case, not a flag",
    "--serve-artifacts": "mlflow server's option, named in prose",
    "--artifacts-destination": "mlflow server's option, named in prose",
    "--backend-store-uri": "mlflow ui/server's option, named in prose",
    "--working-dir": "ray job submit's option, named in prose",
    "--runtime-env-json": "ray job submit's option, named in prose",
    "--address": "ray job submit's option, named in prose",
    "--num-cpus": "ray start's option, named in prose",
    "--env-manager": "mlflow models serve's option, named in prose",
    "--follow": "ray job logs' option",
    "--generate": "ray get-auth-token's option",
    "--dev": "scripts/setup.sh's option (a shell script)",
}


def _parsers() -> dict[str, dict[str, str | None]]:
    """cli.md section (`jobs/train.py`, `bpiml predict`) -> {flag: its default as help shows it, or None}."""
    out: dict[str, dict[str, str | None]] = {}
    for section in re.split(r"^##+ ", (REPO / "docs" / "cli.md").read_text(), flags=re.MULTILINE)[1:]:
        name = section.splitlines()[0].strip("` ")
        body = section.split("```text", 1)[1].split("```", 1)[0] if "```text" in section else ""
        entries: list[list] = []
        for line in body.splitlines():
            if match := re.match(r"^  (-\S.*)$", line):
                head = re.split(r"\s{2,}", match.group(1))[0]
                entries.append([re.findall(r"--[\w-]+", head), match.group(1)[len(head):]])
            elif entries and re.match(r"^\s{6,}\S", line):
                entries[-1][1] += " " + line.strip()
            elif entries:
                entries.append([[], ""])  # a break: the next indented line is not a continuation
        out[name] = {}
        for flags, text in entries:
            default = re.search(r"\(default: (.*?)\)\s*$", text.strip())
            out[name].update({flag: default.group(1) if default else None for flag in flags})
    return out


def _script_flags() -> dict[str, dict[str, object]]:
    """scripts/*.py, benchmarks/*.py, bpiml/**/*.py: path -> {flag: its `default=` (a constant) or None}."""
    out: dict[str, dict[str, object]] = {}
    for path in [*REPO.glob("scripts/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("bpiml/**/*.py")]:
        flags: dict[str, object] = {}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
                default = next((k.value.value for k in node.keywords if k.arg == "default"
                                and isinstance(k.value, ast.Constant)), None)
                flags.update({name: default for name in names})
        out[str(path.relative_to(REPO))] = flags
    return out


PARSERS = _parsers()
SCRIPTS = _script_flags()
ALL_FLAGS = set().union(*PARSERS.values(), *SCRIPTS.values())


def _spans(text: str) -> list[str]:
    """Commands and inline code: each logical line of a fenced block (`\\` continuations joined), each `span`."""
    spans = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.DOTALL):
        spans += [line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines() if line.strip()]
    spans += re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    return spans


def _owner(span: str) -> tuple[str | None, str]:
    """(cli.md section or script path, the part of `span` its flags are in); (None, '') for another tool's."""
    command = re.sub(r"^(\w+=\S+\s+)+", "", span.split("#", 1)[0]).strip()  # VAR=value prefixes, comments
    if match := re.search(r"\b(jobs/\w+\.py)\b(.*)", command):
        return f"`{match.group(1)}`".strip("`"), match.group(2)
    if match := re.match(r"(?:\.venv/bin/)?bpiml ([a-z-]+)(.*)", command):
        return f"bpiml {match.group(1)}", match.group(2)
    if match := re.search(r"\b((?:scripts|benchmarks)/\w+\.py)\b(.*)", command):
        return match.group(1), match.group(2)
    if command.startswith(EXTERNAL):
        return None, ""
    return "", command  # prose or an unknown command: any parser of the project


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_flag_named_exists_in_its_parser(doc: Path) -> None:
    text, wrong = doc.read_text(), []
    covered: set[str] = set()
    for span in _spans(text):
        owner, part = _owner(span)
        flags = set(re.findall(FLAG, part))
        covered |= set(re.findall(FLAG, span))
        if owner is None:
            continue
        known = (PARSERS.get(owner) if owner in PARSERS and owner != "bpiml review"
                 else SCRIPTS.get(owner) if owner in SCRIPTS else ALL_FLAGS)
        wrong += [f"{flag} ({owner or 'any parser'}: {span[:80]})" for flag in sorted(flags - set(known) - set(NOT_OURS))]
    prose = set(re.findall(FLAG, re.sub(r"`[^`]*`", "", re.sub(r"```.*?```", "", text, flags=re.DOTALL))))
    wrong += [f"{flag} (prose)" for flag in sorted(prose - covered - ALL_FLAGS - set(NOT_OURS))]
    assert not wrong, f"{doc.name} names flags no parser has: {wrong}"


def _same(stated: str, actual: object) -> bool:
    try:
        if stated.endswith("%"):
            return abs(float(stated[:-1]) / 100 - float(str(actual))) < 1e-9
        return float(stated) == float(str(actual))
    except ValueError:
        return stated == str(actual)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_defaults_stated_next_to_a_flag_match_the_parsers(doc: Path) -> None:
    """`--flag` (default X), `--flag` (N s): X and N are what the parser that has the flag says."""
    wrong = []
    text = doc.read_text()
    stated_defaults = re.findall(r"`(--[a-z][\w-]*)`[^`.;]{0,25}?\(default:? ([\w.-]+%?)", text)
    stated_defaults += re.findall(r"`(--[a-z][\w-]*)`[^`.;]{0,25}?\((\d[\d.]*) s\)", text)
    for flag, stated in stated_defaults:
        defaults = {d for p in [*PARSERS.values(), *SCRIPTS.values()] if flag in p for d in [p[flag]] if d is not None}
        if defaults and not any(_same(stated, d) for d in defaults):
            wrong.append(f"{flag}: the doc says {stated!r}, the parsers {sorted(map(str, defaults))}")
    assert not wrong, f"{doc.name}: {wrong}"


def _module_exists(dotted: str) -> bool:
    """`bpiml.data.cache` or `bpiml.data.cache.fetch_once`: a module, or a name defined at its top level."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:cut])
        source = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if source.exists():
            if cut == len(parts):
                return True
            tree = ast.parse(source.read_text())
            names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
            names |= {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                      for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
            names |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
            return parts[cut] in names
    return False


def _tag_keys() -> set[str]:
    """`bpiml.stores`, `bpiml.gpu_decision`: MLflow tag keys the code sets (strings, not modules)."""
    return {node.value for path in REPO.glob("bpiml/**/*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("bpiml.")}


TAG_KEYS = _tag_keys()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_module_and_file_path_named_exists(doc: Path) -> None:
    text = doc.read_text()
    missing = [m for m in sorted(set(re.findall(r"(?<![\w/.])bpiml(?:\.[a-z_]\w*)+", text)))
               if m not in TAG_KEYS and not _module_exists(m)]
    paths = set(re.findall(r"(?<![\w/.-])((?:bpiml|jobs|scripts|benchmarks|deploy|tests|examples|docs)/[\w./-]*\w)", text))
    missing += [p for p in sorted(paths) if not (REPO / p).exists() and not (doc.parent / p).exists()
                and "*" not in p and "<" not in p]
    assert not missing, f"{doc.name} names what does not exist: {missing}"


def test_every_bpiml_variable_read_is_documented_and_none_is_stale() -> None:
    code = "\n".join(p.read_text() for folder in ("bpiml", "jobs", "scripts", "benchmarks")
                     for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".sh") or p.parent.name == "stack")
    read = set(re.findall(r"\bBPIML_[A-Z0-9_]*[A-Z0-9]\b", code))
    documented = set(re.findall(r"\bBPIML_[A-Z0-9_]*[A-Z0-9]\b", (REPO / "docs" / "environment.md").read_text()))
    anywhere = set(re.findall(r"\bBPIML_[A-Z0-9_]*[A-Z0-9]\b", "\n".join(d.read_text() for d in DOCS)))
    assert not read - documented, f"read by the code, missing from docs/environment.md: {sorted(read - documented)}"
    deployed = "\n".join(p.read_text() for p in (REPO / "deploy").rglob("*.yaml"))
    assert not anywhere - read - set(re.findall(r"\bBPIML_\w+", deployed)), \
        f"documented, read nowhere: {sorted(anywhere - read)}"
