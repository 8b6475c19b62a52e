"""The local service stack (S3 endpoint, MLflow server, Ray head and worker nodes) from Python.

A thin wrapper over `scripts/stack/*.sh`, for tests and demos: `start_local_stack(state_dir)`
runs the start scripts with free ports and returns a `LocalStack` describing the endpoints;
`stop_local_stack(state_dir)` stops exactly the process groups those scripts recorded.

Services:
- S3: SeaweedFS on 127.0.0.1, a real object store: it checks the key pair generated into
  `<state_dir>/s3.env` and keeps its data on disk across restarts.
- MLflow: SQLite backend in the state dir; artifacts proxied by the server into
  `s3://<bucket>/artifacts`, so clients need no S3 credentials. With `mlflow_auth` it runs MLflow's
  basic-auth app; clients send MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (in `env`, and
  in the Ray nodes' environment), generated once into `<state_dir>/mlflow-auth.env` (mode 600).
- Ray, token authentication (`RAY_AUTH_MODE=token`, token file `<state_dir>/ray_auth_token`):
  a single-node head on 127.0.0.1 (`workers=0`), or a cluster like `cluster.yaml`'s (`workers=N`):
  a head without CPUs on 127.0.0.2 and N worker nodes on 127.0.0.3.., each with a private /tmp
  (`scripts/stack/start_ray_worker.sh`). Jobs inherit the nodes' environment, which carries the S3
  endpoint, its credentials and `MLFLOW_TRACKING_URI`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

from bpiml.config import BaseConfig, check_range, field
from bpiml.runtime.loopback import free_ports

logger = logging.getLogger(__name__)

REGION = "us-east-1"


@dataclasses.dataclass
class StackConfig(BaseConfig):
    """How to start the local stack."""

    num_cpus: int = field(2, help="CPUs the Ray head offers (single-node mode)")
    workers: int = field(0, help="worker nodes (cluster mode: the head then offers no CPUs)")
    worker_cpus: int = field(1, help="CPUs each worker node offers")
    object_store_bytes: int = field(200_000_000, help="Ray object store size in bytes, per node")
    mlflow_bucket: str = field("bpiml-mlflow", help="S3 bucket holding MLflow artifacts (created if missing)")
    mlflow_auth: bool = field(False, help="run MLflow with basic auth (BPIML_STACK_MLFLOW_AUTH=1 of the scripts)")
    timeout_s: int = field(300, help="seconds each start script may take before it fails")

    def validate(self) -> None:
        check_range("num_cpus", self.num_cpus, 1)
        check_range("workers", self.workers, 0, 8)
        check_range("worker_cpus", self.worker_cpus, 1)
        check_range("object_store_bytes", self.object_store_bytes, 75 * 1024 * 1024)
        check_range("timeout_s", self.timeout_s, 1)
        if not self.mlflow_bucket or "/" in self.mlflow_bucket:
            raise ValueError(f"mlflow_bucket must be a bare bucket name, got {self.mlflow_bucket!r}")


def read_s3_credentials(state_dir: str) -> dict[str, str]:
    """The local S3 endpoint's key pair as AWS_* variables (from `<state_dir>/s3.env`)."""
    values = dict(line.split("=", 1) for line in Path(state_dir, "s3.env").read_text().split() if "=" in line)
    return {"AWS_ACCESS_KEY_ID": values["BPIML_S3_ACCESS_KEY"], "AWS_SECRET_ACCESS_KEY": values["BPIML_S3_SECRET_KEY"],
            "AWS_DEFAULT_REGION": REGION}


def read_mlflow_credentials(state_dir: str) -> dict[str, str]:
    """The MLflow basic-auth login as MLflow's client variables (from `<state_dir>/mlflow-auth.env`)."""
    values = dict(line.split("=", 1) for line in Path(state_dir, "mlflow-auth.env").read_text().split() if "=" in line)
    return {"MLFLOW_TRACKING_USERNAME": values["BPIML_MLFLOW_USERNAME"],
            "MLFLOW_TRACKING_PASSWORD": values["BPIML_MLFLOW_PASSWORD"]}


@dataclasses.dataclass(frozen=True)
class LocalStack:
    """Endpoints of a running local stack."""

    state_dir: str  # where pids, ports, logs, the MLflow database and the Ray token live
    s3_endpoint: str  # http://127.0.0.1:PORT
    tracking_uri: str  # MLflow server, http://127.0.0.1:PORT
    ray_address: str  # Ray dashboard / Jobs API, http://<head>:PORT (what `ray job submit` wants)
    ray_gcs_address: str  # <head>:PORT (what `ray.init(address=...)` wants)
    token_path: str  # Ray auth token file (mode 600)
    mlflow_bucket: str  # bucket holding MLflow artifacts under `artifacts/`
    workers: int = 0  # worker nodes (0: the head alone runs tasks)
    worker_cpus: int = 1  # CPUs of each worker node
    mlflow_auth: bool = False  # MLflow asks for basic auth (`mlflow_credentials`)

    @property
    def mlflow_credentials(self) -> dict[str, str]:
        """MLFLOW_TRACKING_USERNAME / _PASSWORD when MLflow runs with basic auth, else nothing."""
        return read_mlflow_credentials(self.state_dir) if self.mlflow_auth else {}

    @property
    def s3_credentials(self) -> dict[str, str]:
        return read_s3_credentials(self.state_dir)

    @property
    def env(self) -> dict[str, str]:
        """Environment for client processes (`ray job submit`, MLflow/S3 clients).

        The token itself is not in it, only its file (`RAY_AUTH_TOKEN_PATH`).
        """
        env = {
            "RAY_ADDRESS": self.ray_gcs_address,  # ray.init joins it; `ray job submit` uses the next one
            "RAY_API_SERVER_ADDRESS": self.ray_address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_path,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            **self.s3_credentials,
            **self.mlflow_credentials,
        }
        if not self.workers:
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # clients keep 127.0.0.1 like the head
        return env

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) updated with `env`.

        `RAY_AUTH_TOKEN` is dropped: it would take precedence over this stack's token file.
        """
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if k not in ("RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
        return {**env, **self.env}

    def read_token(self) -> str:
        return Path(self.token_path).read_text().strip()

    def worker_pgid(self, k: int) -> int:
        """The process group of worker node `k` (to kill it in a fault test)."""
        return int(Path(self.state_dir, f"ray-worker-{k}.pid").read_text().strip())


def scripts_dir() -> Path:
    """`scripts/stack/` of the source checkout this package runs from."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "stack"
    if not (path / "up.sh").is_file():
        raise FileNotFoundError(f"stack scripts not found at {path} (needs a source checkout of bpiml)")
    return path


def run_script(name: str, state_dir: str, extra_env: dict[str, str], timeout_s: int, *args: str) -> str:
    """Run one stack script; returns the last line it printed (an endpoint), raises with its log tail."""
    env = {**os.environ, **extra_env, "BPIML_STACK_DIR": state_dir}
    # The scripts run the services from the environment this interpreter belongs to.
    env.setdefault("BPIML_VENV", str(Path(sys.executable).parent.parent))
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(key, None)
    script = scripts_dir() / name
    try:
        done = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"{script} did not finish within {timeout_s}s (logs in {state_dir})") from err
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    for line in done.stderr.splitlines():
        logger.info("%s", line)
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def start_local_stack(state_dir: str, config: StackConfig | None = None) -> LocalStack:
    """Start S3, MLflow and Ray recording into `state_dir`; stop them all on failure.

    Keep `state_dir` short and outside /tmp when `workers > 0` (Ray's Unix sockets live below it,
    and worker nodes get a private /tmp); e.g. a `tempfile.mkdtemp(dir="/var/tmp")`.
    """
    config = config or StackConfig()
    config.validate()
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    ports = [str(port) for port in free_ports(4)]
    with Path(state_dir, "ports.reserved").open("a") as reserved:  # the scripts' own picks skip these
        reserved.write("".join(f"{port}\n" for port in ports))
    env = {
        "BPIML_S3_PORT": ports[0],
        "BPIML_MLFLOW_PORT": ports[1],
        "BPIML_MLFLOW_BUCKET": config.mlflow_bucket,
        "BPIML_RAY_PORT": ports[2],
        "BPIML_RAY_DASHBOARD_PORT": ports[3],
        "BPIML_RAY_WORKERS": str(config.workers),
        "BPIML_RAY_WORKER_CPUS": str(config.worker_cpus),
        "BPIML_RAY_OBJECT_STORE_BYTES": str(config.object_store_bytes),
        "BPIML_STACK_MLFLOW_AUTH": "1" if config.mlflow_auth else "0",
    }
    if not config.workers:
        env["BPIML_RAY_NUM_CPUS"] = str(config.num_cpus)
    try:
        s3 = run_script("start_s3.sh", state_dir, env, config.timeout_s)
        tracking = run_script("start_mlflow.sh", state_dir, env, config.timeout_s)
        ray_address = run_script("start_ray.sh", state_dir, env, config.timeout_s * (1 + config.workers))
    except BaseException:
        stop_local_stack(state_dir)
        raise
    gcs = (Path(state_dir) / "ray.gcs").read_text().strip()
    return LocalStack(state_dir=state_dir, s3_endpoint=s3, tracking_uri=tracking, ray_address=ray_address,
                      ray_gcs_address=gcs, token_path=str(Path(state_dir) / "ray_auth_token"),
                      mlflow_bucket=config.mlflow_bucket, workers=config.workers, worker_cpus=config.worker_cpus,
                      mlflow_auth=config.mlflow_auth)


def restart_worker(stack: LocalStack, k: int, timeout_s: int = 300) -> None:
    """Start worker node `k` again (after a fault test killed it)."""
    run_script("start_ray_worker.sh", stack.state_dir, {"BPIML_RAY_WORKER_CPUS": str(stack.worker_cpus)}, timeout_s, str(k))


def stop_local_stack(state_dir: str, timeout_s: int = 120) -> None:
    """Stop whatever the start scripts recorded in `state_dir` (Ray, MLflow, S3); idempotent."""
    run_script("down.sh", state_dir, {}, timeout_s)
