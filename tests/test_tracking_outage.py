"""Tracking never stops training: the MLflow server is stopped mid-run for longer than its client's retry
budget, then started again. Training goes on meanwhile, and afterwards every epoch is in the MLflow run
exactly once (the background logger and the driver's replay from the checkpoint's history)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from test_train import TINY, make_pseudo_store

from bpiml.runtime import tracking
from bpiml.runtime.loopback import free_ports
from bpiml.runtime.tracking_queue import StepLogger
from bpiml.train.config import TrainConfig

MLFLOW = str(Path(sys.executable).parent / "mlflow")


class Server:
    """An MLflow tracking server on loopback that the test stops and starts again on the same port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_ports(1)[0]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        command = [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db", "--artifacts-destination",
                   (self.root / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("the MLflow server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = Server(tmp_path_factory.mktemp("tracking") / "mlflow")
    srv.root.mkdir()
    srv.start()
    yield srv
    srv.stop()


def test_the_step_logger_never_blocks_and_logs_each_step_once(server: Server) -> None:
    run_id = tracking.start_or_resume_run(server.uri, "steps")
    steps = StepLogger(server.uri, run_id)
    steps.log(0, {"loss": 1.0, "epoch": 0})
    wait = time.monotonic() + 30
    while time.monotonic() < wait and 0 not in _steps(server.uri, run_id):
        time.sleep(0.2)
    server.stop()
    started = time.monotonic()
    for step in (1, 2):
        steps.log(step, {"loss": 1.0 / (step + 1), "epoch": step})
    assert time.monotonic() - started < 1.0  # queued, never waiting on the server
    time.sleep(12)  # longer than the shortened client retries: the first attempts fail
    server.start()
    steps.replay([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}])  # a resubmit replays its history
    late, pending = steps.close(timeout_s=60)
    assert pending == [] and late == [1], (late, pending)
    assert Counter(_steps(server.uri, run_id)) == {0: 1, 1: 1, 2: 1}


def _steps(uri: str, run_id: str) -> list[int]:
    return [int(m.step) for m in tracking.client(uri).get_metric_history(run_id, "loss")]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_training_goes_on_through_an_mlflow_outage_and_mlflow_has_every_epoch_once(
        ray_local, server: Server, tmp_path: Path) -> None:
    import threading

    from bpiml.train.job import run_training

    store = make_pseudo_store(tmp_path / "data", n_train=8, n_val=4)
    runs = tmp_path / "runs"
    cfg = TrainConfig(store=str(store), storage_path=str(runs), run_name="outage", epochs=10, batch_size=4,
                      warmup_epochs=0.5, num_workers=1, cpus_per_worker=0.5, tracking_uri=server.uri,
                      experiment="outage", model=TINY, log_images=1)
    checkpoints = lambda: len(list((runs / "outage").glob("checkpoint_*")))  # noqa: E731
    seen: dict[str, int] = {}

    def outage() -> None:
        deadline = time.monotonic() + 600
        while checkpoints() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        server.stop()
        seen["down_at"], down = checkpoints(), time.monotonic()
        # Past the client's retry budget (seconds), and until two epochs finished without MLflow; back before
        # the run ends (the driver needs MLflow to finish the run and register).
        while time.monotonic() - down < 10 or (checkpoints() < seen["down_at"] + 2 and time.monotonic() - down < 60):
            time.sleep(0.2)
        seen["up_at"] = checkpoints()
        server.start()

    chaos = threading.Thread(target=outage, daemon=True)
    chaos.start()
    result = run_training(cfg)
    chaos.join(timeout=120)
    assert seen["up_at"] > seen["down_at"], seen  # epochs finished while MLflow was down
    assert Counter(_steps(server.uri, result.mlflow_run_id)) == {e: 1 for e in range(10)}
    assert result.mlflow_late, "no epoch was logged late: the outage tested nothing"
