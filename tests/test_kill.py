"""Faults injected for real on the test cluster (`local_stack`: head without CPUs, two worker nodes,
SeaweedFS, MLflow), jobs submitted with `ray job submit` as a user does:

(a) a teacher actor SIGKILLed mid-run; (b) the driver SIGKILLed mid-run and the identical command
rerun, twice, then `ray job stop` and a resubmit; (c) a training worker SIGKILLed mid-run;
(d) the whole training job SIGKILLed and resubmitted; (e) a worker node SIGKILLed during
pseudo-labeling. After each: every input id exactly once in the manifest (or the rejects), every
mask decodable at its image's size, and the redone work counted and bounded.

The pseudo-labeling runs go through `tests/slow_pseudolabel.py`: the job with a teacher slowed down
that logs what it labels (injected into `run_pseudolabel`), so that the kills land mid-run whatever
the machine's speed; the kills wait for observed progress (part files, checkpoints in S3), never
for a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from stack_fixtures import s3_client

from bpiml.data import imageio, storage
from bpiml.data.manifest import read_manifest, write_manifest
from bpiml.runtime.stack import LocalStack, restart_worker

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
N_IMAGES = 48
TRAIN_EPOCHS = 8


# --- jobs ------------------------------------------------------------------------------------------
def submit(stack: LocalStack, args: list[str], wait: bool = False) -> str:
    job_id = f"bpiml-kill-{uuid.uuid4().hex[:8]}"
    command = [RAY, "job", "submit", "--submission-id", job_id, "--working-dir", str(REPO)]
    command += ([] if wait else ["--no-wait"]) + ["--", "python", *args]
    done = subprocess.run(command, env=stack.client_env(), capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0 or not wait, (done.stdout + done.stderr)[-5000:]
    return job_id


def status(stack: LocalStack, job_id: str) -> str:
    done = subprocess.run([RAY, "job", "status", job_id], env=stack.client_env(), capture_output=True, text=True)
    text = (done.stdout + done.stderr).upper()
    return next((s for s in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING") if s in text), "UNKNOWN")


def logs(stack: LocalStack, job_id: str) -> str:
    return subprocess.run([RAY, "job", "logs", job_id], env=stack.client_env(), capture_output=True, text=True).stdout


def wait_for(condition, timeout: float, what: str, poll: float = 0.3):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def finished(stack: LocalStack, job_id: str, timeout: float = 600) -> str:
    return wait_for(lambda: (s := status(stack, job_id)) in ("SUCCEEDED", "FAILED", "STOPPED") and s, timeout,
                    f"job {job_id} to end", poll=2)


def _parent(pid: int) -> int:
    try:  # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def in_stack(stack: LocalStack, pid: int) -> bool:
    """True when `pid` descends from one of the stack's own process groups (the `<service>.pid` files its
    scripts wrote): a Ray worker, a job driver (Ray starts those in sessions of their own) or the node itself."""
    groups = {int(p.read_text().strip()) for p in Path(stack.state_dir).glob("*.pid") if p.read_text().strip()}
    while pid > 1:
        try:
            if os.getpgid(pid) in groups or os.getsid(pid) in groups:
                return True
        except ProcessLookupError:
            return False
        pid = _parent(pid)
    return False


def kill_processes(stack: LocalStack, pattern: str) -> list[int]:
    """SIGKILL the processes whose command line matches `pattern`, of this test's cluster only."""
    found = [int(p) for p in subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()]
    pids = [pid for pid in found if pid != os.getpid() and in_stack(stack, pid)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def keys(stack: LocalStack, bucket: str, prefix: str) -> list[str]:
    pages = s3_client(stack).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


# --- the data --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory):
    from bpiml.data.sample import make_sample_store

    bucket = f"kill-{uuid.uuid4().hex[:8]}"
    s3_client(local_stack).create_bucket(Bucket=bucket)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage, "_endpoint_override", local_stack.s3_endpoint)
        for key, value in local_stack.s3_credentials.items():
            mp.setenv(key, value)
        local = make_sample_store(str(tmp_path_factory.mktemp("store")), n_images=N_IMAGES, seed=3, size=96)
        for path in Path(local).rglob("*.*"):
            if path.name != "manifest.jsonl":
                s3_client(local_stack).upload_file(str(path), bucket, f"store/{path.relative_to(local).as_posix()}")
        write_manifest(read_manifest(local), f"s3://{bucket}/store")
    shared = Path(tempfile_dir(local_stack))  # seen by every node (not under the workers' private /tmp)
    return {"bucket": bucket, "ids": [r.id for r in read_manifest(local)], "shared": shared}


def tempfile_dir(stack: LocalStack) -> str:
    path = Path(stack.state_dir) / f"kill-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    return str(path)


def pseudolabel_flags(bucket: str, out: str) -> list[str]:
    """The pseudo-labeling job's flags in these tests (`jobs/pseudolabel.py` or the slowed driver)."""
    return ["--store", f"s3://{bucket}/store", "--out", f"s3://{bucket}/{out}", "--teacher", "box",
            "--num-workers", "2", "--batch-size", "2", "--part-rows", "4", "--lock-ttl-s", "6"]


def pseudolabel_args(bucket: str, out: str, log: Path, delay: float = 1.0) -> list[str]:
    """The pseudo-labeling job, its teacher slowed by `delay` s per batch and logging what it labels to `log`."""
    return ["tests/slow_pseudolabel.py", *pseudolabel_flags(bucket, out), "--teacher-delay-s", str(delay),
            "--label-log", str(log)]


def parts(stack: LocalStack, bucket: str, out: str) -> int:
    return sum(1 for k in keys(stack, bucket, f"{out}/manifest/") if "/part-" in k)


def check_exactly_once(stack: LocalStack, bucket: str, out: str, ids: list[str]) -> list[dict]:
    client = s3_client(stack)
    records = [json.loads(line) for k in sorted(keys(stack, bucket, f"{out}/manifest/")) if k.endswith(".jsonl")
               for line in client.get_object(Bucket=bucket, Key=k)["Body"].read().decode().splitlines() if line]
    counts = Counter(r["id"] for r in records)
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}, counts.most_common(3)
    for r in records:
        mask = imageio.decode_mask(client.get_object(Bucket=bucket, Key=f"{out}/{r['pseudo_mask']}")["Body"].read())
        assert mask.shape == (r["height"], r["width"]) == (96, 96)
    index = json.loads(client.get_object(Bucket=bucket, Key=f"{out}/index.json")["Body"].read())
    assert index["complete"] and index["records"] == len(ids)
    masks = keys(stack, bucket, f"{out}/pseudo/")
    assert len(masks) == len(ids)  # no orphan mask of an earlier attempt
    return records


def labeled(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def redone(log: Path, n: int) -> int:
    return labeled(log) - n


def mid_run(log: Path) -> None:
    """The kill must land while the teacher still has images to label, or it tests nothing."""
    assert 0 < labeled(log) < N_IMAGES, f"{labeled(log)} of {N_IMAGES} labeled when the kill came"


# --- (a) and (e): a teacher actor, then a whole worker node, in one run ---------------------------
def test_a_teacher_actor_then_e_a_worker_node_killed_mid_run(local_stack: LocalStack, data) -> None:
    """(a) a teacher actor SIGKILLed: Ray restarts it; then (e) a whole worker node SIGKILLed: the
    job finishes on the other node. One run, two faults (each job start costs ~40 s here)."""
    log = data["shared"] / "ae.log"
    job = submit(local_stack, pseudolabel_args(data["bucket"], "pseudo-ae", log))
    try:
        wait_for(lambda: parts(local_stack, data["bucket"], "pseudo-ae") >= 2, 300, "two parts")
        mid_run(log)
        assert kill_processes(local_stack, "MapBatches.SlowTeacherLabeler")[:1], "no teacher actor found"
        at_actor_kill = labeled(log)
        wait_for(lambda: labeled(log) >= at_actor_kill + 4, 300, "progress after the actor kill")
        mid_run(log)
        at_node_kill = labeled(log)
        os.killpg(local_stack.worker_pgid(2), signal.SIGKILL)
        assert finished(local_stack, job) == "SUCCEEDED", logs(local_stack, job)[-4000:]
    finally:
        restart_worker(local_stack, 2)
    check_exactly_once(local_stack, data["bucket"], "pseudo-ae", data["ids"])
    print(f"(a)+(e) teacher actor killed at {at_actor_kill} labeled, worker node at {at_node_kill}: "
          f"{redone(log, N_IMAGES)} image(s) labeled twice")
    assert redone(log, N_IMAGES) <= 16 + 24  # the blocks in flight in the killed actor, then on the node


# --- (b): the driver, twice; then ray job stop --------------------------------------------------------
def test_b_driver_killed_rerun_twice_then_stopped_and_resubmitted(local_stack: LocalStack, data) -> None:
    bucket, out, log = data["bucket"], "pseudo-b", data["shared"] / "b.log"
    # 2 s per batch: the rerun after the first kill must still be labeling when its parts show up, also
    # on a loaded machine where the writes trail the teacher by many images (CI once saw 52 of 48 at 1 s).
    args = pseudolabel_args(bucket, out, log, delay=2.0)
    driver = f"tests/slow_pseudolabel.py --store s3://{bucket}/store --out s3://{bucket}/{out}"
    committed = []
    job = submit(local_stack, args)
    for threshold in (2, 4):
        wait_for(lambda t=threshold: parts(local_stack, bucket, out) >= t, 300, f"{threshold} parts")
        mid_run(log)
        assert kill_processes(local_stack, driver), "no driver found"
        committed.append(parts(local_stack, bucket, out))
        assert finished(local_stack, job, 120) == "FAILED"
        time.sleep(7)  # the lock's heartbeat stops with the driver: after 6 s it is stale
        job = submit(local_stack, pseudolabel_args(bucket, out, log, delay=4.0) if threshold == 4 else args)
    # The third run is slow on purpose (>= 32 images left at 4 s per 4): a second job started while
    # it holds the lock must refuse at once, without touching the output.
    wait_for(lambda: "taking over the stale lock" in logs(local_stack, job), 300, "the rerun to take the lock", poll=2)
    second = submit(local_stack, args)
    ended, text = finished(local_stack, second), logs(local_stack, second)
    assert status(local_stack, job) == "RUNNING", "the rerun ended before the second job tried the lock"
    assert ended == "FAILED" and "is being written by" in text, text[-3000:]
    subprocess.run([RAY, "job", "stop", job], env=local_stack.client_env(), capture_output=True, timeout=120)
    assert finished(local_stack, job, 120) == "STOPPED"
    time.sleep(7)
    final = submit(local_stack, args, wait=True)
    assert "pseudo-labeling summary" in logs(local_stack, final)
    check_exactly_once(local_stack, bucket, out, data["ids"])
    print(f"(b) driver killed twice, stopped once: {redone(log, N_IMAGES)} image(s) labeled twice "
          f"(parts committed at the kills: {committed})")
    assert redone(log, N_IMAGES) <= 3 * 16


# --- (c) and (d): training ---------------------------------------------------------------------------
def train_args(bucket: str, run: str) -> list[str]:
    return ["jobs/train.py", "--store", f"s3://{bucket}/pseudo-b", "--storage-path", f"s3://{bucket}/runs",
            "--run-name", run, "--epochs", str(TRAIN_EPOCHS), "--num-workers", "2", "--batch-size", "4",
            "--model-width", "32", "--model-memory-slots", "16", "--model-img-size", "64", "--log-images", "0",
            "--experiment", f"kill-{bucket}"]


def epochs_logged(stack: LocalStack, job_id: str) -> int:
    """Epochs the job's rank 0 has logged as done. (Counting checkpoints in S3 measures nothing:
    Ray Train keeps only the best and the latest.) Each epoch's checkpoint is reported right after
    its line, so a kill just after a line may lose that one epoch, never more."""
    return max([int(m) for m in re.findall(rf"epoch (\d+)/{TRAIN_EPOCHS} ", logs(stack, job_id))] or [0])


def mlflow_epochs(stack: LocalStack, bucket: str, run: str) -> tuple[str, list[int]]:
    from mlflow import MlflowClient

    client = MlflowClient(stack.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(f"kill-{bucket}").experiment_id],
                              filter_string=f"attributes.run_name = '{run}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]  # a resumed run is the same MLflow run
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
    return runs[0].info.run_id, sorted(steps)


def resumed_epochs(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"resuming from \S+: epoch (\d+) done", text)]


def test_c_a_training_worker_then_d_the_training_job_killed(local_stack: LocalStack, data) -> None:
    """(c) a training worker SIGKILLed: Ray Train restarts the workers from the latest checkpoint by
    itself; then (d) the driver SIGKILLed and the same command resubmitted: it resumes the run. Each
    restart comes from the latest checkpoint Ray Train had registered (the one still being reported
    when the kill came may be lost, never more, never back to epoch 0); MLflow keeps one run with
    every epoch once."""
    if not keys(local_stack, data["bucket"], "pseudo-b/index.json"):
        pytest.skip("needs the pseudo store of test_b")
    bucket, run = data["bucket"], "kill-cd"
    args = train_args(bucket, run)
    job = submit(local_stack, args)
    wait_for(lambda: epochs_logged(local_stack, job) >= 2, 600, "two epochs", poll=1)
    seen_c = epochs_logged(local_stack, job)
    assert kill_processes(local_stack, "RayTrainWorker")[:1], "no training worker found"
    wait_for(lambda: resumed_epochs(logs(local_stack, job)), 300, "Ray Train to restart the workers", poll=2)
    resumed_c = min(resumed_epochs(logs(local_stack, job)))
    assert resumed_c >= max(1, seen_c - 1), (seen_c, resumed_c)
    wait_for(lambda: epochs_logged(local_stack, job) >= seen_c + 2, 600, "two more epochs", poll=1)
    seen_d = epochs_logged(local_stack, job)
    assert kill_processes(local_stack, f"jobs/train.py --store s3://{bucket}/pseudo-b --storage-path"), "no driver"
    assert finished(local_stack, job, 300) == "FAILED"
    first_id, before = mlflow_epochs(local_stack, bucket, run)
    again = submit(local_stack, args, wait=True)
    text = logs(local_stack, again)
    resumed_d = resumed_epochs(text)
    assert resumed_d and resumed_d[0] >= max(1, seen_d - 1), (seen_d, resumed_d, text[-3000:])
    run_id, steps = mlflow_epochs(local_stack, bucket, run)
    assert run_id == first_id and steps == list(range(TRAIN_EPOCHS))  # one MLflow run, every epoch once
    print(f"(c) training worker killed after {seen_c} epoch(s): restarted from epoch {resumed_c}; "
          f"(d) driver killed after {seen_d} epoch(s), {len(before)} in MLflow: resumed from "
          f"epoch {resumed_d[0]}")


def test_a_kill_touches_only_its_own_clusters_processes(tmp_path: Path) -> None:
    """`kill_processes` finds by command line but kills only descendants of the stack's own process groups,
    also ones in sessions of their own (Ray's job drivers): a look-alike elsewhere on the machine survives."""
    marker = f"bpiml-kill-probe-{uuid.uuid4().hex[:8]}"
    child = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
             f"'{marker}'], start_new_session=True); time.sleep(60)")
    ours = subprocess.Popen([sys.executable, "-c", child, marker], start_new_session=True)  # a "node" + its "driver"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker], start_new_session=True)
    (tmp_path / "ray-worker-1.pid").write_text(f"{ours.pid}\n")
    stack = LocalStack.__new__(LocalStack)
    object.__setattr__(stack, "state_dir", str(tmp_path))
    try:
        wait_for(lambda: len(subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split())
                 == 3, 30, "the probe processes")
        killed = kill_processes(stack, marker)
        assert ours.pid in killed and other.pid not in killed and len(killed) == 2  # the node and its grandchild
        assert other.poll() is None
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()
