"""pytest fixtures for the real local services (S3 endpoint, MLflow server, Ray head with token auth).

Using it:

    tests/conftest.py imports it, so every test module can request `local_stack`.

`local_stack` is session-scoped: one stack for the whole run, started with
`scripts/stack/*.sh` in a short temporary state dir on free ports, and stopped (only the process
groups it recorded) at the end of the session, also when a test or the start-up fails. It is
skipped when the services cannot run here (moto server not installed, no `setsid`).

Passing the services to code under test:
- subprocesses (`ray job submit`, scripts): `env=local_stack.client_env()`;
- this process: `monkeypatch.setenv` each item of `local_stack.env`;
- Ray jobs: nothing to pass; they inherit the S3 endpoint, fake credentials and
  MLFLOW_TRACKING_URI from the head's environment (see scripts/stack/start_ray.sh).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpiml.runtime.stack import LocalStack, StackConfig, start_local_stack, stop_local_stack


def _missing_requirement() -> str | None:
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "moto_server").exists():
        return f"moto_server not in {venv_bin} (install the dev extra: moto[server])"
    if shutil.which("setsid") is None:
        return "setsid (util-linux) not found"
    for tool in ("mlflow", "ray"):
        if not (venv_bin / tool).exists():
            return f"{tool} not in {venv_bin}"
    return None


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    reason = _missing_requirement()
    if reason:
        pytest.skip(f"local stack unavailable: {reason}")
    # Short path on purpose: Ray's Unix socket paths below it must stay under 108 bytes.
    state_dir = tempfile.mkdtemp(prefix="bpiml-stack-", dir="/tmp" if os.path.isdir("/tmp") else None)
    config = StackConfig(num_cpus=int(os.environ.get("BPIML_TEST_RAY_CPUS", "2")))
    try:
        stack = start_local_stack(state_dir, config)
        yield stack
    finally:
        try:
            stop_local_stack(state_dir)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)
