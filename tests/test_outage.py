"""When the services fail: the object store goes away and comes back, for real.

- unit: which errors are retried, the budget, the final error naming the store;
- SeaweedFS stopped and restarted under `bpiml.data.storage` (a real S3 of its own, no Ray);
- on the local cluster (`local_stack`): SeaweedFS stopped for 20 s in the middle of a pseudo-labeling
  job (the run finishes, every id exactly once), then for longer than the job's budget (it fails
  naming S3; the identical command afterwards finishes the output, every id exactly once).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest
from stack_fixtures import s3_client
from test_kill import (
    N_IMAGES,
    check_exactly_once,
    data,  # noqa: F401 - the fixture: the sample store in a bucket of the stack's S3
    finished,
    labeled,
    logs,
    parts,
    pseudolabel_args,
    pseudolabel_flags,
    submit,
    wait_for,
)

from bpiml.data import retry, storage
from bpiml.runtime.stack import LocalStack, read_s3_credentials, scripts_dir

REPO = Path(__file__).resolve().parents[1]


def _refused(n: int):
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= n:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        return "ok"
    return fn, calls


# --- unit --------------------------------------------------------------------------------------------
def test_transient_errors_are_retried_within_the_budget_and_others_fail_at_once(monkeypatch) -> None:
    monkeypatch.setattr(retry, "FIRST_WAIT_S", 0.01)
    monkeypatch.setenv(retry.BUDGET_ENV, "5")
    fn, calls = _refused(3)
    assert retry.call(fn, "s3://b/k") == "ok" and calls["n"] == 4
    for permanent in (FileNotFoundError("s3://b/k"), PermissionError("denied"), ValueError("bad")):
        n = {"calls": 0}

        def failing(err: Exception = permanent, n: dict = n) -> None:
            n["calls"] += 1
            raise err
        with pytest.raises(type(permanent)):
            retry.call(failing, "s3://b/k")
        assert n["calls"] == 1  # never retried
    slow_down = botocore.exceptions.ClientError({"Error": {"Code": "SlowDown"}}, "PutObject")
    assert retry.is_transient(slow_down) and retry.is_transient(OSError("x").with_traceback(None)) is False
    monkeypatch.setenv(retry.BUDGET_ENV, "0.2")
    fn, calls = _refused(10**6)
    with pytest.raises(retry.StorageUnavailable, match=r"S3 endpoint http://e:1 unreachable .* --storage-retry-s"):
        retry.call(fn, "s3://b/k", "S3 endpoint http://e:1")
    with retry.limited(0.0):
        fn, calls = _refused(10**6)
        with pytest.raises(retry.StorageUnavailable):
            retry.call(fn, "s3://b/k")
        assert calls["n"] == 1


# --- a real SeaweedFS, stopped and restarted ------------------------------------------------------------
def _script(name: str, state_dir: str, port: str = "") -> str:
    env = {**os.environ, "BPIML_STACK_DIR": state_dir, "BPIML_VENV": str(Path(sys.executable).parent.parent)}
    if port:
        env["BPIML_S3_PORT"] = port
    done = subprocess.run(["bash", str(scripts_dir() / name)], env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def stop_s3(state_dir: str) -> str:
    """Stop a stack's SeaweedFS; returns its S3 port, to start it again on the same one."""
    port = Path(state_dir, "s3.port").read_text().strip()
    _script("stop_s3.sh", state_dir)
    return port


def start_s3(state_dir: str, port: str) -> None:
    _script("start_s3.sh", state_dir, port)


@pytest.fixture(scope="module")
def seaweed() -> Iterator[str]:
    if not (Path(sys.executable).parent / "weed").exists():
        pytest.fail("weed (SeaweedFS) is missing from the venv: scripts/setup.sh --dev installs it")
    state = tempfile.mkdtemp(prefix="bpiml-s3-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    endpoint = _script("start_s3.sh", state)
    try:
        yield state, endpoint
    finally:
        subprocess.run(["bash", str(scripts_dir() / "stop_s3.sh")], env={**os.environ, "BPIML_STACK_DIR": state},
                       capture_output=True, timeout=60, check=False)


def test_storage_rides_out_a_seaweedfs_restart_and_names_s3_past_the_budget(seaweed, monkeypatch) -> None:
    state, endpoint = seaweed
    creds = read_s3_credentials(state)
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(storage, "_endpoint_override", endpoint)
    import boto3
    session = boto3.session.Session(aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],  # not the process's cached one
                                    aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
    session.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="outage")
    storage.write_bytes("s3://outage/a.bin", b"before")
    port = stop_s3(state)
    restarter = threading.Timer(4.0, start_s3, (state, port))
    restarter.start()
    started = time.monotonic()
    try:
        assert storage.read_bytes("s3://outage/a.bin") == b"before"  # waits for the restart
        storage.write_bytes("s3://outage/b.bin", b"during")
    finally:
        restarter.join()
    assert time.monotonic() - started >= 3.5 and storage.read_bytes("s3://outage/b.bin") == b"during"
    monkeypatch.setenv(retry.BUDGET_ENV, "1")
    port = stop_s3(state)
    try:
        with pytest.raises(retry.StorageUnavailable, match=f"S3 endpoint {endpoint} unreachable"):
            storage.read_bytes("s3://outage/a.bin")
        with pytest.raises(FileNotFoundError):  # a missing key is no outage: at once, once the store is back
            start_s3(state, port)
            storage.read_bytes("s3://outage/nothing.bin")
    finally:
        start_s3(state, port)


# --- the pseudo-labeling job on the cluster ----------------------------------------------------------------
def test_pseudolabel_job_rides_out_a_20s_s3_outage_and_fails_naming_s3_past_its_budget(
        local_stack: LocalStack, data) -> None:  # noqa: F811 - the fixture imported above
    bucket, log = data["bucket"], data["shared"] / "outage.log"
    job = submit(local_stack, pseudolabel_args(bucket, "pseudo-outage", log, delay=0.5))
    wait_for(lambda: parts(local_stack, bucket, "pseudo-outage") >= 2, 300, "two parts")
    port = stop_s3(local_stack.state_dir)
    at_stop = labeled(log)
    time.sleep(20)
    start_s3(local_stack.state_dir, port)
    assert finished(local_stack, job) == "SUCCEEDED", logs(local_stack, job)[-4000:]
    assert 0 < at_stop < N_IMAGES, f"{at_stop} of {N_IMAGES} labeled when S3 went away: the outage tested nothing"
    check_exactly_once(local_stack, bucket, "pseudo-outage", data["ids"])

    args = pseudolabel_args(bucket, "pseudo-budget", log, delay=0.5) + ["--storage-retry-s", "5"]
    job = submit(local_stack, args)
    wait_for(lambda: parts(local_stack, bucket, "pseudo-budget") >= 2, 300, "two parts")
    port = stop_s3(local_stack.state_dir)
    try:
        assert finished(local_stack, job, 300) == "FAILED"
    finally:
        start_s3(local_stack.state_dir, port)
    tail = logs(local_stack, job).strip().splitlines()[-1]  # the driver stops Ray's log stream before it prints
    assert tail.startswith("caused by StorageUnavailable: S3 endpoint") and "unreachable" in tail, tail
    time.sleep(7)  # a lock the failing job could not release goes stale after --lock-ttl-s 6
    final = submit(local_stack, ["jobs/pseudolabel.py", *pseudolabel_flags(bucket, "pseudo-budget")], wait=True)
    assert "pseudo-labeling summary" in logs(local_stack, final)
    check_exactly_once(local_stack, bucket, "pseudo-budget", data["ids"])
    assert not any(k.endswith("/.lock") for k in [o["Key"] for o in s3_client(local_stack).list_objects_v2(
        Bucket=bucket, Prefix="pseudo-budget/").get("Contents", [])])


# --- a password inside MLFLOW_TRACKING_URI ------------------------------------------------------------------
def test_a_password_in_the_tracking_uri_reaches_no_dashboard_log_stdout_or_mlflow(
        local_stack: LocalStack, data, tmp_path: Path) -> None:  # noqa: F811 - the fixture imported above
    """A driver started from a laptop against the cluster (RAY_ADDRESS set, not `ray job submit`) with the
    MLflow login inside the URI: the run trains and logs, and the password is nowhere else."""
    import json
    import urllib.request

    from mlflow import MlflowClient

    login = local_stack.mlflow_credentials
    if not login:
        pytest.fail("the test stack runs MLflow without auth: nothing to leak")
    user, password = login["MLFLOW_TRACKING_USERNAME"], login["MLFLOW_TRACKING_PASSWORD"]
    host = local_stack.tracking_uri.split("://", 1)[1]
    env = {k: v for k, v in local_stack.client_env().items() if not k.startswith("MLFLOW_TRACKING_")}
    env["MLFLOW_TRACKING_URI"] = f"http://{user}:{password}@{host}"
    run = f"secret-{data['bucket']}"
    args = ["jobs/train.py", "--store", f"s3://{data['bucket']}/store", "--supervision", "box", "--storage-path",
            f"s3://{data['bucket']}/runs-secret", "--run-name", run, "--smoke-test", "--num-workers", "1",
            "--model-width", "32", "--model-memory-slots", "16", "--model-img-size", "64", "--experiment", run,
            "--register", f"{run}@champion"]
    done = subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
                          check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert password not in output
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["tracking_uri"] == local_stack.tracking_uri  # the location, without the login
    request = urllib.request.Request(f"{local_stack.ray_address}/api/jobs/",
                                     headers={"Authorization": f"Bearer {local_stack.read_token()}"})
    jobs = urllib.request.urlopen(request, timeout=60).read().decode()
    assert host in jobs and password not in jobs  # the driver's runtime_env is there, without the login
    mlflow = MlflowClient(local_stack.tracking_uri)  # the test's own login: MLFLOW_TRACKING_* of this process
    record = mlflow.get_run(result["mlflow_run_id"])
    assert record.data.metrics and password not in json.dumps([record.data.params, record.data.tags])
    allowed = {Path(local_stack.state_dir, name) for name in ("mlflow-auth.env", "env.sh")}
    leaks = [str(p) for p in Path(local_stack.state_dir).rglob("*") if p.is_file() and p not in allowed
             and not p.is_symlink() and p.stat().st_size < 50_000_000 and password.encode() in p.read_bytes()]
    assert leaks == []  # Ray's logs (runtime_env_agent.log, the workers'), MLflow's and S3's logs and DBs


def test_the_last_line_of_a_failed_job_names_the_outage() -> None:
    """A Ray task's error carries the remote StorageUnavailable as text only: the cause line is found there."""
    from bpiml.runtime.logs import cause_line

    remote = ("ray.exceptions.RayTaskError(UserCodeException): ray::MapBatches(write_masks)\n"
              "bpiml.data.retry.StorageUnavailable: S3 endpoint http://h:1 unreachable for 5 s at s3://b/k\n"
              "ray.exceptions.UserCodeException: UDF failed to process a data block.\n")
    assert cause_line(RuntimeError("UDF failed"), remote) == (
        "caused by StorageUnavailable: S3 endpoint http://h:1 unreachable for 5 s at s3://b/k")
    try:
        raise RuntimeError("lock release failed") from retry.StorageUnavailable("S3 endpoint http://h:1 unreachable")
    except RuntimeError as err:
        assert cause_line(err, "") == "caused by StorageUnavailable: S3 endpoint http://h:1 unreachable"
    assert cause_line(ValueError("x"), "ValueError: x") == ""
