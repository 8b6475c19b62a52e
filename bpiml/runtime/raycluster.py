"""Starting or joining Ray the same way from every job.

`python jobs/x.py` joins the cluster named by RAY_ADDRESS (set by `ray job submit`, or by
`source .bpiml/stack/env.sh` for the local head) and otherwise starts a local Ray. The S3/MLflow
environment a job runs with is passed to Ray's workers through `runtime_env`, because workers do
not inherit the driver's shell. Jobs call `bpiml.runtime.loopback.keep_loopback()` before this
module is imported (it imports ray).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from typing import Any

import ray
import ray.data
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from bpiml.data import storage
from bpiml.runtime.credentials import split_userinfo

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a submitted job's driver

from bpiml.runtime.loopback import SWITCH, free_port, is_loopback_address

logger = logging.getLogger(__name__)

# Environment that workers need to reach the same S3 endpoint and MLflow server as the driver.
# Only locations are forwarded, never credentials: a runtime_env is shown by the Ray dashboard.
# Workers get credentials from their node (instance role, ~/.aws, or the environment the Ray
# node was started with - the local stack scripts start the head with them).
FORWARDED_ENV = (
    "BPIML_LOG_LEVEL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "BPIML_CACHE",
    "BPIML_STORAGE_RETRY_S",  # the object-store outage budget (`bpiml.data.retry`)
    # where weights come from and whether they may be downloaded (`bpiml.data.download`, weights, pretrained)
    "BPIML_OFFLINE",
    "HF_HUB_OFFLINE",
    "BPIML_DOWNLOAD_ATTEMPTS",
    "BPIML_WEIGHTS_CACHE",
    "BPIML_SAM_BASE_URL",
    "BPIML_HF_BASE_URL",
    "HF_ENDPOINT",
)


def _job_env_keys() -> set[str]:
    """Env vars the submitted job's own runtime_env sets (`ray job submit --runtime-env-json`): Ray refuses
    a driver runtime_env that sets them again, so they are not forwarded a second time."""
    try:
        injected = json.loads(os.environ.get(JOB_CONFIG_ENV, "") or "{}")
    except ValueError:
        return set()
    return set(((injected.get("runtime_env") or {}).get("env_vars") or {}).keys())


def worker_env() -> dict[str, str]:
    """The subset of this process's environment that Ray workers must see (and the job does not set).
    Locations only: a `user:password@` inside one is dropped (`bpiml.runtime.credentials`)."""
    taken = _job_env_keys()
    return {k: split_userinfo(os.environ[k])[0] for k in FORWARDED_ENV if os.environ.get(k) and k not in taken}


def _state_api_env(address: str | None, dashboard_port: int | None) -> dict[str, str]:
    """Where Ray's State API should look from inside the cluster. Ray Train's placement-group cleaner
    queries it from a worker process; without this it scans the machine for Ray instances and fails
    with 'Found multiple active Ray instances' (a traceback in every run) when another Ray runs there."""
    if address and address != "local":
        return {"RAY_ADDRESS": address} if "RAY_ADDRESS" not in _job_env_keys() else {}
    return {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"} if dashboard_port else {}


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A `host:port` GCS address must answer, or ConnectionError says what the address should be
    (ray.init would otherwise retry for a minute and end in a gRPC traceback)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or address == "auto":
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConnectionError(
            f"nothing answers at RAY_ADDRESS={address} ({err}). Point it at a running head's GCS address, "
            "host:6379 by default (`ray status` on the head shows it), or unset it to start a local Ray; "
            "`ray job submit` sets it by itself for a job") from None


def joins_cluster() -> bool:
    """True when this process joins a running cluster (RAY_ADDRESS, set by `ray job submit`): nodes may
    join it later. False when `init_ray` starts a Ray of its own, which no node will join."""
    address = os.environ.get("RAY_ADDRESS")
    return bool(address) and address != "local"


def init_ray(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Join the cluster at RAY_ADDRESS (set by `ray job submit`), else start a local Ray; idempotent."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    dashboard_port = None if joins_cluster() else free_port()
    env = {**worker_env(), **_state_api_env(address, dashboard_port)}
    runtime_env = {"env_vars": env} if env else None
    if address and address.startswith("http"):
        raise ValueError(
            f"RAY_ADDRESS={address} is a Jobs API (dashboard) address: submit with `ray job submit`, "
            "or set RAY_ADDRESS to the head's GCS address (host:port) to run this script against it"
        )
    if joins_cluster():
        check_reachable(address)
        if is_loopback_address(address) and os.environ.get(SWITCH) != "0":
            logger.warning("joining %s without %s=0 set before ray was imported; if the connection hangs, "
                           "export it before starting", address, SWITCH)
        logger.info("joining Ray at %s", address)
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
        return
    # No "auto" discovery: a stale /tmp/ray/ray_current_cluster makes ray.init hang for minutes.
    logger.info("starting a local Ray (num_cpus=%s); set RAY_ADDRESS to join a running cluster", num_cpus or "all")
    # The dashboard (127.0.0.1 only) serves the State API that Ray Train's placement-group cleaner polls.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=dashboard_port, runtime_env=runtime_env, **kwargs)


def task_nodes() -> list[dict[str, Any]]:
    """Alive nodes where tasks can run (they offer CPUs or GPUs; a head with `--num-cpus 0` is not one)."""
    return [n for n in ray.nodes() if n.get("Alive") and (n.get("Resources", {}).get("CPU", 0) > 0
                                                           or n.get("Resources", {}).get("GPU", 0) > 0)]


@ray.remote(num_cpus=0)
def _probe(folder: str, driver_probe: str, token: str) -> tuple[bool, str]:
    seen = os.path.exists(os.path.join(folder, driver_probe))
    mine = f".bpiml-probe-{token}-{ray.get_runtime_context().get_node_id()[:12]}"
    try:
        with open(os.path.join(folder, mine), "w") as f:
            f.write("ok")
    except OSError:
        return seen, ""
    return seen, mine


def check_paths_reachable(paths: dict[str, str], what: str) -> None:
    """A local path given to a job on a multi-node cluster must be one shared folder (a network
    mount) on every node, or each node would read and write its own disk. Proven by probes written
    by the driver and by a task on each node, read back by the others; otherwise a ValueError that
    names the fix. s3:// URIs are always reachable; one node that is also the driver's needs no probe."""
    local = {k: storage.absolute(v) for k, v in paths.items() if v and not storage.is_s3(v)}
    nodes = task_nodes()
    here = ray.get_runtime_context().get_node_id()
    if not local or (len(nodes) == 1 and nodes[0]["NodeID"] == here) or not nodes:
        return
    token = uuid.uuid4().hex[:10]
    for name, path in local.items():
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        driver_probe = f".bpiml-probe-{token}-driver"
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, driver_probe), "w") as f:
            f.write("ok")
        try:
            results = ray.get([_probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                               .remote(folder, driver_probe, token) for n in nodes], timeout=120)
        finally:
            os.remove(os.path.join(folder, driver_probe))
        shared = all(seen and mine and os.path.exists(os.path.join(folder, mine)) for seen, mine in results)
        for _, mine in results:
            if mine and os.path.exists(os.path.join(folder, mine)):
                os.remove(os.path.join(folder, mine))
        if not shared:
            raise ValueError(
                f"{what}: --{name} {path} is a local path, but this Ray cluster has {len(nodes)} node(s) running tasks "
                "and they do not share it with the driver (a probe written on one node was not seen on another). "
                f"Each node would read and write its own disk. Use an s3:// URI for --{name}, or a folder on a "
                "network mount that every node sees at the same path.")


def actor_pool_kwargs(num_workers: int, num_cpus: float, num_gpus: float, batch_size: int) -> dict[str, Any]:
    """`map_batches` keyword arguments for an actor pool; `num_gpus` only when GPUs are asked for."""
    kwargs: dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=num_workers), "num_cpus": num_cpus,
                              "batch_size": batch_size, "batch_format": "numpy"}
    if num_gpus > 0:
        kwargs["num_gpus"] = num_gpus
    return kwargs
