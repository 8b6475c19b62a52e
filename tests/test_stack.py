"""End to end against the real local services: Ray Jobs with token auth, MLflow with S3 artifacts,
bpiml.data.storage on an S3 API endpoint."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from stack_fixtures import s3_client

from bpiml.data import storage
from bpiml.runtime.stack import LocalStack, run_script

pytestmark = pytest.mark.e2e

RAY = str(Path(sys.executable).parent / "ray")

JOB = """
import ray
from bpiml.data import storage

ray.init()

@ray.remote
def double(x):
    import signal
    return 2 * x, callable(signal.getsignal(signal.SIGINT))  # a worker that ignores SIGINT ignores ray.cancel

value, interruptible = ray.get(double.remote(21))
print("TASK", value, "interruptible", interruptible)
storage.write_bytes("{uri}", b"from-job")
print("WROTE", "{uri}")
"""


def _s3(stack: LocalStack):
    return s3_client(stack)


def _submit(env: dict[str, str], workdir: Path, *entrypoint: str, wait: bool = True) -> subprocess.CompletedProcess:
    args = [RAY, "job", "submit", "--working-dir", str(workdir)] + ([] if wait else ["--no-wait"])
    return subprocess.run(args + ["--", *entrypoint], env=env, capture_output=True, text=True,
                          timeout=180, check=False, cwd=workdir)


def _without_token(env: dict[str, str], home: Path) -> dict[str, str]:
    env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = str(home)  # no ~/.ray/auth_token to fall back on
    return env


def test_job_with_token_runs_tasks_and_reaches_s3(local_stack: LocalStack, tmp_path: Path) -> None:
    uri = f"s3://{local_stack.mlflow_bucket}/jobs/{uuid.uuid4().hex}.txt"
    (tmp_path / "job.py").write_text(JOB.format(uri=uri))
    done = _submit(local_stack.client_env(), tmp_path, "python", "job.py")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "TASK 42 interruptible True" in output and f"WROTE {uri}" in output
    # The job got the S3 endpoint and credentials from the head's environment.
    bucket, key = storage.split_s3(uri)
    assert _s3(local_stack).get_object(Bucket=bucket, Key=key)["Body"].read() == b"from-job"


def test_job_without_or_with_wrong_token_is_refused(local_stack: LocalStack, tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("print('must not run')\n")
    env = _without_token(local_stack.client_env(), tmp_path)
    done = _submit(env, tmp_path, "python", "job.py", wait=False)
    assert done.returncode != 0
    assert "Unauthorized" in done.stdout + done.stderr

    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    done = _submit(env, tmp_path, "python", "job.py", wait=False)
    assert done.returncode != 0
    assert "Forbidden" in done.stdout + done.stderr


def _files_holding(stack: LocalStack, secret: str, allowed: set[Path]) -> list[str]:
    """Files of the stack's state dir (logs, databases, Ray's session dir) that contain `secret`."""
    return [
        str(path) for path in Path(stack.state_dir).rglob("*")
        if path.is_file() and path not in allowed and not path.is_symlink()
        and path.stat().st_size < 50_000_000 and secret.encode() in path.read_bytes()
    ]


def test_token_file_is_private_and_never_logged(local_stack: LocalStack) -> None:
    token_file = Path(local_stack.token_path)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = local_stack.read_token()
    assert len(token) == 64 and token not in str(local_stack.env)
    assert _files_holding(local_stack, token, {token_file}) == []


def test_mlflow_logs_through_server_into_s3_and_registers(local_stack: LocalStack, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    # The client holds no S3 credentials at all: artifacts go through the server's proxy.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    client = MlflowClient(tracking_uri=local_stack.tracking_uri, registry_uri=local_stack.tracking_uri)
    experiment_id = client.create_experiment(f"stack-test-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "lr", 0.001)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.txt").write_text("w")
    client.log_artifacts(run.info.run_id, str(tmp_path / "model"), artifact_path="model")
    client.set_terminated(run.info.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")

    keys = [o["Key"] for o in _s3(local_stack).list_objects_v2(
        Bucket=local_stack.mlflow_bucket, Prefix="artifacts/").get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/model/weights.txt") for k in keys), keys

    name = f"bpiml-stack-test-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)
    assert client.get_model_version_by_alias(name, "champion").run_id == run.info.run_id


def test_storage_and_pyarrow_on_s3(s3_env: LocalStack) -> None:
    bucket = f"store-{uuid.uuid4().hex[:8]}"
    _s3(s3_env).create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/prefix/a.bin"
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00\x01payload")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"\x00\x01payload"
    storage.check_readable(uri)
    storage.check_writable(f"s3://{bucket}/prefix")

    fs, path = storage.pyarrow_fs(f"s3://{bucket}/arrow/b.txt")
    with fs.open_output_stream(path) as out:
        out.write(b"arrow")
    assert storage.read_bytes(f"s3://{bucket}/arrow/b.txt") == b"arrow"
    with fs.open_input_stream(fs.normalize_path(f"{bucket}/prefix/a.bin")) as inp:
        assert inp.read() == b"\x00\x01payload"


def test_checks_fail_fast_naming_a_missing_bucket(s3_env: LocalStack) -> None:
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/store"
    start = time.monotonic()
    with pytest.raises((FileNotFoundError, PermissionError), match=missing):
        storage.check_readable(f"{missing}/manifest.jsonl")
    with pytest.raises(PermissionError, match=missing):
        storage.check_writable(missing)
    assert time.monotonic() - start < 20


def test_env_points_at_loopback_only(local_stack: LocalStack) -> None:
    for url in (local_stack.s3_endpoint, local_stack.tracking_uri, local_stack.ray_address):
        assert url.startswith("http://127.0.0."), url
    assert local_stack.ray_gcs_address.startswith("127.0.0.")
    assert os.path.isfile(local_stack.env["RAY_AUTH_TOKEN_PATH"])


def test_s3_checks_credentials(local_stack: LocalStack) -> None:
    good = _s3(local_stack)
    creds = local_stack.s3_credentials
    bad = boto3.client("s3", endpoint_url=local_stack.s3_endpoint, aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key="not-the-secret", region_name=creds["AWS_DEFAULT_REGION"])
    bucket = f"creds-{uuid.uuid4().hex[:8]}"
    good.create_bucket(Bucket=bucket)
    good.put_object(Bucket=bucket, Key="a", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        bad.get_object(Bucket=bucket, Key="a")
    with pytest.raises(botocore.exceptions.ClientError):
        bad.put_object(Bucket=bucket, Key="b", Body=b"y")


def test_s3_data_survives_a_restart_of_the_store(local_stack: LocalStack) -> None:
    bucket = f"keep-{uuid.uuid4().hex[:8]}"
    _s3(local_stack).create_bucket(Bucket=bucket)
    _s3(local_stack).put_object(Bucket=bucket, Key="kept.txt", Body=b"still here")
    run_script("stop_s3.sh", local_stack.state_dir, {}, 120)
    endpoint = run_script("start_s3.sh", local_stack.state_dir,
                          {"BPIML_S3_PORT": local_stack.s3_endpoint.rsplit(":", 1)[1]}, 300)
    assert endpoint == local_stack.s3_endpoint
    assert _s3(local_stack).get_object(Bucket=bucket, Key="kept.txt")["Body"].read() == b"still here"


def test_ports_a_stack_picks_are_distinct_and_never_handed_out_twice(tmp_path: Path) -> None:
    """Ports picked one at a time gave two components of one Ray node the same port (kill-test run
    13 of 20: the worker node never started). One pick holds its sockets until all are picked, and
    a stack's later picks skip every port it reserved before (its services bind them later)."""
    from bpiml.runtime.loopback import free_ports

    assert len(set(free_ports(300))) == 300
    stack_dir = tmp_path / "stack"
    env = {**os.environ, "BPIML_STACK_DIR": str(stack_dir), "BPIML_VENV": sys.prefix}
    script = f"source {Path(__file__).parents[1] / 'scripts/stack/common.sh'}; free_ports 300; free_ports 300"
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    picks = [line.split() for line in done.stdout.splitlines()]
    assert [len(p) for p in picks] == [300, 300] and len(set(picks[0] + picks[1])) == 600
    assert (stack_dir / "ports.reserved").read_text().split() == picks[0] + picks[1]


MLFLOW_JOB = """
import mlflow

mlflow.set_experiment("auth-job-{tag}")
with mlflow.start_run() as run:
    mlflow.log_param("lr", 0.1)
    mlflow.set_tag("stage", "auth-test")
    print("RUN", run.info.run_id)
"""


def test_mlflow_refuses_a_wrong_or_missing_password(local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    login = local_stack.mlflow_credentials
    user, password = login["MLFLOW_TRACKING_USERNAME"], login["MLFLOW_TRACKING_PASSWORD"]
    assert len(password) >= 32 and password in local_stack.client_env()["MLFLOW_TRACKING_PASSWORD"]
    api = f"{local_stack.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(f"{local_stack.tracking_uri}/health", timeout=30).status_code == 200  # open for probes
    assert requests.get(api, timeout=30).status_code == 401
    assert requests.get(api, auth=(user, password[:-1] + "x"), timeout=30).status_code == 401
    assert requests.get(api, auth=(user, password), timeout=30).status_code == 200
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    with pytest.raises(MlflowException, match="401"):
        MlflowClient(local_stack.tracking_uri).search_experiments(max_results=1)


def test_a_job_logs_in_from_its_node_and_no_mlflow_credential_leaks(local_stack: LocalStack, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    password = local_stack.mlflow_credentials["MLFLOW_TRACKING_PASSWORD"]
    tag = uuid.uuid4().hex[:8]
    (tmp_path / "job.py").write_text(MLFLOW_JOB.format(tag=tag))
    # The submitter holds no MLflow login: the job gets it from the node it runs on.
    env = {k: v for k, v in local_stack.client_env().items() if not k.startswith("MLFLOW_TRACKING_")}
    done = _submit(env, tmp_path, "python", "job.py")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert password not in done.stdout + done.stderr
    run_id = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("RUN "))
    run = MlflowClient(local_stack.tracking_uri).get_run(run_id)
    assert run.data.params == {"lr": "0.1"}
    assert password not in str(run.data.params) + str(run.data.tags)
    secrets_files = {Path(local_stack.state_dir, name) for name in ("mlflow-auth.env", "env.sh")}
    assert _files_holding(local_stack, password, secrets_files) == []
    assert stat.S_IMODE(Path(local_stack.state_dir, "mlflow-auth.env").stat().st_mode) == 0o600
