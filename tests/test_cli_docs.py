"""The command-line reference is generated from the parsers and current; every job's options appear once."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_docs_cli_md_is_current() -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "cli_docs.py"), "--check"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:] + "\nrun: python scripts/cli_docs.py"


def test_each_option_is_listed_once_and_every_job_has_the_console_switches() -> None:
    text = (REPO / "docs" / "cli.md").read_text()
    sections = re.split(r"^##+ ", text, flags=re.M)[1:]
    assert len(sections) >= 12
    for section in sections:
        name = section.splitlines()[0]
        body = section.split("```text", 1)[1]
        flags = re.findall(r"^  (-[-\w]+)", body, flags=re.M)  # the first flag of each help entry
        assert len(flags) == len(set(flags)), (name, [f for f in flags if flags.count(f) > 1])
        assert not re.search(r"\(default: [^)]*\)\s*\(default:", body), name  # never two defaults for one option
        if name.startswith("`jobs/"):
            assert "--quiet" in body and "--verbose" in body and "--config" in body, name
            assert re.search(r"^\S.*options:$", body, flags=re.M), name  # grouped
