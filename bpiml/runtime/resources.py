"""GPUs by intent, not by presence: how many GPUs a job's workers ask for, the wait for the cluster to
offer them, and the torch device of the step that runs the model.

    decision = decide_gpus(cfg.gpus_per_worker, intent_gpus=1, intent="the sam vit_h teacher runs on GPU")
    wait_for_resources(cpus=2, gpus=2 * decision.gpus_per_worker, timeout_s=cfg.resource_wait_s,
                       what="pseudo-labeling")
    device = torch_device(decision.gpus_per_worker)        # in the actor / replica / training worker

The decision follows what the work is, never what the cluster has at submission: an autoscaling
cluster scaled to zero GPU workers (`cluster.yaml`) has none until a job asks. `--gpus-per-worker 0`
is the only way to run GPU work on CPUs. The wait asks the autoscaler for the resources and polls
the cluster until it offers them, with a progress line every `note_s`; past `--resource-wait-s`, or
at once where nothing can add them (a Ray this process started; an autoscaler whose node types
cannot reach the count), it fails with an error that names the flags to change.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

CPU_FLAG, GPU_FLAG, WAIT_FLAG = "--cpus-per-worker", "--gpus-per-worker", "--resource-wait-s"


@dataclasses.dataclass(frozen=True)
class GpuDecision:
    """GPUs per worker (actor, replica, training worker) and why; shown in summaries and MLflow."""

    gpus_per_worker: float
    reason: str  # e.g. "the sam vit_h teacher runs on GPU (by intent)" or "asked with --gpus-per-worker 0"

    def __str__(self) -> str:
        return f"gpus_per_worker={self.gpus_per_worker:g}: {self.reason}"

    def record(self) -> dict[str, Any]:
        """Summary / MLflow entries: {"gpus_per_worker": 1.0, "gpu_decision": "gpus_per_worker=1: ..."}."""
        return {"gpus_per_worker": self.gpus_per_worker, "gpu_decision": str(self)}


def decide_gpus(asked: float | None, intent_gpus: float, intent: str) -> GpuDecision:
    """`asked` (the flag; None when not given) wins; otherwise the work's own need, `intent_gpus`, and
    `intent` says why (what runs and where it belongs)."""
    if asked is not None:
        if asked < 0 or not math.isfinite(asked):
            raise ValueError(f"{GPU_FLAG} must be >= 0, got {asked!r}")
        note = f"; by intent {intent_gpus:g}: {intent}" if asked != intent_gpus else ""
        return GpuDecision(float(asked), f"asked with {GPU_FLAG} {asked:g}{note}")
    return GpuDecision(float(intent_gpus), f"{intent} (by intent; {GPU_FLAG} sets it)")


# --- the wait --------------------------------------------------------------------------------
def _offered() -> tuple[float, float]:
    import ray  # noqa: PLC0415 - this module's decisions are imported by drivers before Ray starts

    have = ray.cluster_resources()
    return float(have.get("CPU", 0.0)), float(have.get("GPU", 0.0))


def _max_resources() -> dict[str, Any] | None:
    """What an autoscaling cluster may grow to (its node types x max counts); None when unknown."""
    try:
        from ray._private import state as ray_state  # noqa: PLC0415

        return ray_state.state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - a private API: treat any trouble as "unknown"
        return None


def _request(cpus: float, gpus: float) -> None:
    """Ask an autoscaler for the bundles (a standing request, replaced by the next); nothing without one."""
    bundles = [{"GPU": 1.0}] * math.ceil(gpus) + [{"CPU": 1.0}] * math.ceil(max(cpus - math.ceil(gpus), 0))
    try:
        from ray.autoscaler import sdk as autoscaler_sdk  # noqa: PLC0415

        autoscaler_sdk.request_resources(bundles=bundles)
    except Exception as err:  # noqa: BLE001 - a fixed cluster has no autoscaler to ask: waiting is all one can do
        logger.debug("request_resources(%s) failed: %s", bundles, err)


def _missing(cpus: float, gpus: float, have_cpus: float, have_gpus: float) -> str:
    parts = [f"{gpus:g} GPUs (offered: {have_gpus:g})" if have_gpus < gpus else "",
             f"{cpus:g} CPUs (offered: {have_cpus:g})" if have_cpus < cpus else ""]
    return " and ".join(p for p in parts if p)


def fixes(cpus_short: bool, gpus_short: bool, waited: bool) -> str:
    """The flags (and cluster settings) that would let the job start, as one sentence."""
    out = []
    if gpus_short:
        out.append(f"{GPU_FLAG} 0 to run on CPU")
    if cpus_short:
        out.append(f"fewer --num-workers or a smaller {CPU_FLAG}")
    if waited:
        out.append(f"a larger {WAIT_FLAG} (an autoscaler needs minutes to start a node and pull its image)")
    if gpus_short:
        out.append("check the GPU worker group (cluster.yaml `available_node_types` with GPU: its max_workers, "
                   "the instance quota and spot capacity; `ray status` on the head shows pending and failed nodes)")
    return "; ".join(out)


def wait_for_resources(cpus: float, gpus: float, timeout_s: float, what: str, *, can_grow: bool | None = None,
                       poll_s: float = 2.0, note_s: float = 30.0) -> float:
    """Return once the cluster offers `cpus` CPUs and `gpus` GPUs in total (the seconds waited).

    Asks an autoscaler for them and polls `ray.cluster_resources()`, logging what it waits for and how
    long is left (at once, then every `note_s`). Fails with a ValueError naming the fix at once when
    nothing can add them (`can_grow` False, by default when this process started its Ray rather than
    joined a cluster: `raycluster.joins_cluster`; or an autoscaler whose node types cannot reach the
    count), else after `timeout_s`.
    """
    have_cpus, have_gpus = _offered()
    if have_cpus >= cpus and have_gpus >= gpus:
        return 0.0
    if can_grow is None:
        from bpiml.runtime.raycluster import joins_cluster  # noqa: PLC0415 - imports ray

        can_grow = joins_cluster()
    short = (have_cpus < cpus, have_gpus < gpus)
    most = _max_resources()
    if not can_grow or (most is not None and (most.get("CPU", 0) < cpus or most.get("GPU", 0) < gpus)):
        limit = (f"its node types can grow to {most.get('CPU', 0):g} CPUs and {most.get('GPU', 0):g} GPUs at most"
                 if can_grow else "this Ray was started by the job itself on this machine (RAY_ADDRESS unset), so "
                                  "no node will join it; submit to a cluster (`ray job submit`) to use its GPU workers")
        raise ValueError(f"{what} needs {_missing(cpus, gpus, have_cpus, have_gpus)} and {limit}. "
                           f"Fix: {fixes(*short, waited=False)}")
    _request(cpus, gpus)
    started = time.monotonic()
    last_note = -math.inf
    try:
        while True:
            waited = time.monotonic() - started
            have_cpus, have_gpus = _offered()
            if have_cpus >= cpus and have_gpus >= gpus:
                logger.info("%s: the cluster offers %g CPUs and %g GPUs now, after %.0f s", what, have_cpus,
                            have_gpus, waited)
                return waited
            if waited >= timeout_s:
                short = (have_cpus < cpus, have_gpus < gpus)
                raise ValueError(
                    f"{what} waited {timeout_s:g} s ({WAIT_FLAG}) for {_missing(cpus, gpus, have_cpus, have_gpus)}; "
                    f"the cluster did not offer them. Fix: {fixes(*short, waited=True)}")
            if waited - last_note >= note_s:
                logger.info("%s: waiting for the cluster to offer %s; %.0f s left (%s %g)", what,
                            _missing(cpus, gpus, have_cpus, have_gpus), timeout_s - waited, WAIT_FLAG, timeout_s)
                last_note = waited
            time.sleep(min(poll_s, max(timeout_s - waited, 0.05)))
    finally:
        _request(0, 0)  # withdraw the standing request: the autoscaler may scale the nodes down when idle


# --- the device ------------------------------------------------------------------------------
def _cuda_usable() -> bool:
    import torch  # noqa: PLC0415 - drivers that only decide never import torch

    return bool(torch.cuda.is_available())


def _assigned_gpus() -> list[Any]:
    import ray  # noqa: PLC0415

    return list(ray.get_gpu_ids()) if ray.is_initialized() else []


def torch_device(gpus_per_worker: float, assigned: Sequence[Any] | None = None,
                 cuda_usable: Callable[[], bool] = _cuda_usable) -> str:
    """The torch device of a step that was given `gpus_per_worker` GPUs: `cpu` when it asked for none,
    `cuda` when Ray assigned it GPUs (`assigned`, default `ray.get_gpu_ids()`: Ray's CUDA_VISIBLE_DEVICES
    makes them cuda:0..) and CUDA works in this process; otherwise a RuntimeError naming the fix.
    `cuda_usable` is injectable: a node that declares fake GPUs (`ray start --num-gpus 1`) has no CUDA."""
    if gpus_per_worker <= 0:
        return "cpu"
    ids = _assigned_gpus() if assigned is None else list(assigned)
    if not ids:
        raise RuntimeError(f"this worker asked for {gpus_per_worker:g} GPUs but Ray assigned it none (not running "
                           f"in a Ray task or actor with num_gpus?); pass {GPU_FLAG} 0 to run on CPU")
    if not cuda_usable():
        raise RuntimeError(
            f"Ray assigned GPU(s) {ids} to this worker, but CUDA is not usable in its process (torch.cuda."
            "is_available() is False: a CPU-only torch build, a missing NVIDIA driver, or a node that declares GPUs "
            f"it does not have). Install a CUDA build of torch on the GPU nodes (`nvidia-smi` must work there), or pass "
            f"{GPU_FLAG} 0 to run on CPU")
    return "cuda"
