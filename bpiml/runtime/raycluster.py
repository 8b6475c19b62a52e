"""Starting or joining Ray the same way from every job.

`python jobs/x.py` joins the cluster named by RAY_ADDRESS (set by `ray job submit`, or by
`source .bpiml/stack/env.sh` for the local head) and otherwise starts a local Ray. The S3/MLflow environment a job runs with is passed
to Ray's workers through `runtime_env`, because workers do not inherit the driver's shell.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

logger = logging.getLogger(__name__)

# Environment that workers need to reach the same S3 endpoint and MLflow server as the driver.
# Only locations are forwarded, never credentials: a runtime_env is shown by the Ray dashboard.
# Workers get credentials from their node (instance role, ~/.aws, or the environment the Ray
# node was started with - the local stack scripts start the head with them).
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "BPIML_CACHE",
)


def worker_env() -> dict[str, str]:
    """The subset of this process's environment that Ray workers must see."""
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


def init_ray(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Join the cluster at RAY_ADDRESS (set by `ray job submit`), else start a local Ray; idempotent."""
    _keep_loopback(os.environ.get("RAY_ADDRESS", ""))
    import ray

    if ray.is_initialized():
        return
    env = worker_env()
    runtime_env = {"env_vars": env} if env else None
    address = os.environ.get("RAY_ADDRESS")
    if address and address.startswith("http"):
        raise ValueError(
            f"RAY_ADDRESS={address} is a Jobs API (dashboard) address: submit with `ray job submit`, "
            "or set RAY_ADDRESS to the head's GCS address (host:port) to run this script against it"
        )
    if address and address != "local":
        logger.info("joining Ray at %s", address)
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
        return
    # No "auto" discovery: a stale /tmp/ray/ray_current_cluster makes ray.init hang for minutes.
    logger.info("starting a local Ray (num_cpus=%s); set RAY_ADDRESS to join a running cluster", num_cpus or "all")
    # The dashboard (127.0.0.1 only) serves the State API that Ray Train's placement-group cleaner polls.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             runtime_env=runtime_env, **kwargs)


def prepare_process_env() -> None:
    """Call first thing in a job's main(), before anything imports ray.

    A head on 127.0.0.1 (the local stack) is reachable only if this process does not swap
    127.0.0.1 for the machine's routable address, which Ray on Linux does unless told not to;
    Ray reads that switch when it is imported.
    """
    _keep_loopback(os.environ.get("RAY_ADDRESS", ""))


def _keep_loopback(address: str) -> None:
    host = address.rsplit(":", 1)[0] if address else ""
    if host in ("127.0.0.1", "localhost"):
        if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
            logger.warning("joining %s from a process that imported ray before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
                           "was set; if the connection hangs, export it before starting", address)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def available_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def check_gpus(requested_per_actor: float, actors: int, what: str) -> None:
    """Fail before any work when GPUs are asked for but the cluster has none (Ray would wait forever).

    On an autoscaling cluster with no GPU node up yet, set BPIML_ALLOW_PENDING_GPUS=1 to skip the check.
    """
    if requested_per_actor <= 0 or os.environ.get("BPIML_ALLOW_PENDING_GPUS") == "1":
        return
    have = available_gpus()
    if have <= 0:
        raise ValueError(
            f"{what}: {requested_per_actor} GPU(s) per actor requested but the Ray cluster has no GPUs; "
            "use 0 for CPU, or set BPIML_ALLOW_PENDING_GPUS=1 on an autoscaling cluster"
        )
    if requested_per_actor * actors > have:
        logger.warning("%s: %s actors x %s GPUs > %s GPUs in the cluster; some actors will wait",
                       what, actors, requested_per_actor, have)
