"""Rules of the test run itself: under CI=true nothing passes by being skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_skipping.py").write_text(
        "import pytest\n\n"
        "@pytest.fixture\n"
        "def service():\n    pytest.skip('weed not installed')\n\n"
        "def test_in_body():\n    pytest.skip('needs an earlier output')\n\n"
        "def test_in_fixture(service):\n    pass\n"
    )
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                           "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_a_skip_fails_the_run_under_ci(tmp_path: Path) -> None:
    done = _run(tmp_path, "true")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 error" in done.stdout  # the fixture's skip fails its setup: an error
    assert "skipped under CI=true, which runs every test: Skipped: weed not installed" in done.stdout


def test_a_skip_stays_a_skip_outside_ci(tmp_path: Path) -> None:
    done = _run(tmp_path, "")
    assert done.returncode == 0 and "2 skipped" in done.stdout, done.stdout + done.stderr
