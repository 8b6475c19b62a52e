"""GPUs by intent on a real local cluster: a job waits for the GPU that a worker node started later provides,
and a job whose GPUs never come fails naming the fix (`bpiml.runtime.resources`).

The cluster is this test's own: a head without GPUs on 127.0.2.1 (its own ports, 2 CPUs), and, once the
job says it is waiting, a worker node on 127.0.2.2 that declares one GPU (`ray start --num-gpus 1`). The
GPU is fake: Ray schedules on it and sets CUDA_VISIBLE_DEVICES, but there is no CUDA, so the job uses the
box teacher (no model, no torch device) and a probe checks that a model step asked for a GPU fails clearly.
Each node runs in a session of its own; only those process groups are stopped (never `ray stop`, which
stops every Ray on the machine). Token auth is off for these nodes (RAY_AUTH_MODE=disabled): the job and
the probe are subprocesses with the same setting.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpiml.data.sample import make_sample_store
from bpiml.runtime.loopback import free_ports

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
HEAD_IP, WORKER_IP = "127.0.2.1", "127.0.2.2"
WAITING = "waiting for the cluster to offer 1 GPUs"


class Nodes:
    """Ray nodes started by this test, each `ray start` in a session (process group) of its own."""

    def __init__(self, root: str) -> None:
        self.root, self.groups, self.address = root, [], ""
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "RAY_AUTH_MODE": "disabled"}

    def _start(self, name: str, args: list[str], ports: list[int], workers: int) -> None:
        common = ["--object-store-memory", "80000000", "--disable-usage-stats",
                  "--dashboard-agent-listen-port", str(ports[0]), "--dashboard-agent-grpc-port", str(ports[1]),
                  "--runtime-env-agent-port", str(ports[2]), "--metrics-export-port", str(ports[3]),
                  "--min-worker-port", str(workers), "--max-worker-port", str(workers + 499),
                  "--temp-dir", os.path.join(self.root, name)]
        with open(os.path.join(self.root, f"{name}.log"), "w") as log:
            proc = subprocess.Popen([RAY, "start", *args, *common], stdout=log, stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True)
        self.groups.append(proc.pid)
        if proc.wait(timeout=120) != 0:
            raise RuntimeError(f"ray start {name} failed: {Path(self.root, f'{name}.log').read_text()[-2000:]}")

    def start_head(self) -> None:
        ports = free_ports(6)
        self.address = f"{HEAD_IP}:{ports[4]}"
        self._start("head", ["--head", "--node-ip-address", HEAD_IP, "--port", str(ports[4]), "--num-cpus", "2", "--num-gpus", "0",
                             "--include-dashboard", "false", "--ray-client-server-port", str(ports[5])], ports, 28000)

    def add_gpu_worker(self) -> None:
        ports = free_ports(6)
        self._start("worker", ["--address", self.address, "--node-ip-address", WORKER_IP, "--num-cpus", "1", "--num-gpus", "1",
                               "--node-manager-port", str(ports[4]), "--object-manager-port", str(ports[5])],
                    ports, 28500)

    def stop(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for pgid in reversed(self.groups):
                try:
                    os.killpg(pgid, signum)
                except ProcessLookupError:
                    pass
            time.sleep(2)  # gcs_server and raylet take long over SIGTERM; nothing here needs a clean exit

    def job_env(self) -> dict[str, str]:
        return {**self.env, "RAY_ADDRESS": self.address, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    root = tempfile.mkdtemp(prefix="bpiml-gw-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    nodes = Nodes(root)  # short path: Ray's Unix sockets live below it
    try:
        nodes.start_head()
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_sample_store(str(tmp_path_factory.mktemp("gpu-wait") / "store"), n_images=4, size=64)


def pseudolabel(store: str, out: str, *flags: str) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "pseudolabel.py"), "--store", store, "--out", out, "--teacher", "box",
            "--cpus-per-worker", "0.5", *flags]


def test_a_job_fails_naming_the_fix_when_the_gpus_never_come(nodes: Nodes, store: str, tmp_path: Path) -> None:
    """Two GPUs asked for; no node will ever offer two (the worker of the next test declares one)."""
    done = subprocess.run(pseudolabel(store, str(tmp_path / "out"), "--num-workers", "2", "--gpus-per-worker", "1",
                                      "--resource-wait-s", "3"),
                          env=nodes.job_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode != 0
    assert "waited 3 s (--resource-wait-s) for 2 GPUs (offered: " in done.stderr, done.stderr[-3000:]
    assert "--gpus-per-worker 0 to run on CPU" in done.stderr and "a larger --resource-wait-s" in done.stderr
    assert "check the GPU worker group" in done.stderr
    assert not (tmp_path / "out" / "summary.json").exists()  # failed before any work


def test_a_job_waits_for_a_gpu_node_started_later(nodes: Nodes, store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = subprocess.Popen(pseudolabel(store, str(out), "--num-workers", "1", "--gpus-per-worker", "1",
                                       "--resource-wait-s", "240"),
                           env=nodes.job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines = []
    try:
        for line in job.stderr:  # the node joins only once the job says what it waits for
            lines.append(line)
            if WAITING in line:
                break
        assert any(WAITING in line and "s left (--resource-wait-s 240)" in line for line in lines), "".join(lines)
        nodes.add_gpu_worker()
        stdout, stderr = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    log = "".join(lines) + stderr
    assert job.returncode == 0, log[-4000:]
    assert "the cluster offers 3 CPUs and 1 GPUs now" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labeled_this_run"] == 4 and summary["gpus_per_worker"] == 1
    assert summary["gpu_decision"].startswith("gpus_per_worker=1: asked with --gpus-per-worker 1")
    assert "gpus_per_worker=1: asked with --gpus-per-worker 1" in stdout  # the printed summary says it too

    # A model step given the fake GPU: Ray assigns it, CUDA is absent, the device rule says so.
    probe = subprocess.run([sys.executable, "-c", PROBE], env=nodes.job_env(), capture_output=True, text=True,
                           timeout=300, cwd=REPO)
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["ids"] == [0] and result["visible"] == "0" and result["node"] == WORKER_IP
    assert "CUDA is not usable" in result["error"] and "--gpus-per-worker 0" in result["error"]
    assert result["injected"] == "cuda"


PROBE = """
import json, os, ray
from bpiml.runtime.resources import torch_device

@ray.remote(num_gpus=1, num_cpus=0)
def step():
    try:
        error = torch_device(1)
    except RuntimeError as err:
        error = str(err)
    return {"ids": ray.get_gpu_ids(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "error": error,
            "node": ray.util.get_node_ip_address(), "injected": torch_device(1, cuda_usable=lambda: True)}

ray.init(address=os.environ["RAY_ADDRESS"])
print(json.dumps(ray.get(step.remote(), timeout=240)))
"""
