"""Tracking that never stops training: MLflow calls on a background thread, replayed after an outage.

    steps = StepLogger(tracking_uri, run_id)
    steps.log(epoch, {"loss": 0.3, ...}, overlays)   # returns at once
    ...
    late, pending = steps.close(timeout_s=10)      # what was logged late; what the driver must replay

Rank 0 of training hands each epoch's metrics (and overlays) to `log()`, which only queues them. A
daemon thread logs them in step order. Before it logs a step it knows which steps the run already holds
(read from the server at the start and again after every failure), so a step is never logged twice,
also when an attempt failed after the server had stored it, or when a resubmitted run replays the
steps of its checkpoint's history. While MLflow is down the thread retries with backoff (2 s doubling
to 30 s) and training goes on; a failed step is reported as late once it lands. MLflow's own HTTP
retries are shortened in this process (`HTTP_ENV`), so one call gives up within seconds and the thread
notices a server that is back. The queue is bounded: past `max_pending` steps the oldest ones' overlays
are dropped (their metrics stay; the checkpoint's history holds them too). `replay_missing()` is the
driver's last pass over the history when the run ends.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from bpiml.runtime import tracking

logger = logging.getLogger(__name__)

KEY_METRIC = "loss"  # every logged step has it: the server's steps of this metric are the steps it holds
SKIPPED = ("epoch", "start_epoch")  # bookkeeping in a history row, not metrics
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
FIRST_WAIT_S, MAX_WAIT_S = 2.0, 30.0


def logged_steps(tracking_uri: str, run_id: str) -> set[int]:
    """The steps the run holds (of the key metric); raises when the server cannot say."""
    return {int(m.step) for m in tracking.client(tracking_uri).get_metric_history(run_id, KEY_METRIC)}


def _metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k not in SKIPPED}


class StepLogger:
    def __init__(self, tracking_uri: str, run_id: str, max_pending: int = 64) -> None:
        for key, value in HTTP_ENV.items():
            os.environ.setdefault(key, value)
        self.tracking_uri, self.run_id, self.max_pending = tracking_uri, run_id, max_pending
        self._pending: dict[int, tuple[dict[str, float], list[tuple[str, np.ndarray]], str]] = {}
        self._known: set[int] | None = None  # steps the server holds; None: ask it before the next log
        self._lock, self._wake = threading.Lock(), threading.Event()
        self._closing, self._abort = threading.Event(), threading.Event()
        self.late: list[int] = []  # steps that failed at first and were logged later
        self.errors = 0
        self._failed: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="bpiml-mlflow-steps", daemon=True)
        self._thread.start()

    def log(self, step: int, row: Mapping[str, Any], overlays: Iterable[tuple[str, np.ndarray]] = (),
            folder: str = "") -> None:
        """Queue one step's metrics (and overlays under `folder`); never blocks on MLflow."""
        with self._lock:
            self._pending[step] = (_metrics(row), list(overlays), folder)
            for old in sorted(self._pending)[:max(0, len(self._pending) - self.max_pending)]:
                metrics, _, name = self._pending[old]
                self._pending[old] = (metrics, [], name)
        self._wake.set()

    def replay(self, history: Iterable[Mapping[str, Any]]) -> None:
        """Queue every row of a checkpoint's history (`epoch` is the step); the server's steps are skipped."""
        for row in history:
            self.log(int(row["epoch"]), row)

    def close(self, timeout_s: float = 10.0) -> tuple[list[int], list[int]]:
        """Stop after the queue drains or `timeout_s`; returns (steps logged late, steps still pending)."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self._abort.set()  # what is left is the driver's to replay: the thread logs nothing more
        with self._lock:
            return sorted(self.late), sorted(self._pending)

    # --- the thread ---------------------------------------------------------------------------------------
    def _next(self) -> tuple[int, tuple[dict[str, float], list[tuple[str, np.ndarray]], str]] | None:
        with self._lock:
            if not self._pending:
                return None
            step = min(self._pending)
            return step, self._pending[step]

    def _log_one(self, step: int, item: tuple[dict[str, float], list[tuple[str, np.ndarray]], str]) -> None:
        if self._known is None:
            self._known = logged_steps(self.tracking_uri, self.run_id)
        metrics, overlays, folder = item
        if step not in self._known:
            tracking.log_metrics(self.tracking_uri, self.run_id, metrics, step=step)
            self._known.add(step)
            if step in self._failed:
                self.late.append(step)
        if overlays:
            tracking.log_overlays(self.tracking_uri, self.run_id, overlays, folder)

    def _run(self) -> None:
        wait = FIRST_WAIT_S
        while True:
            item = self._next()
            if item is None or self._abort.is_set():
                if self._closing.is_set() or self._abort.is_set():
                    return
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            step, payload = item
            try:
                self._log_one(step, payload)
            except Exception as err:  # noqa: BLE001 - MLflow down or refusing: retried, training goes on
                self._known, self.errors = None, self.errors + 1
                self._failed.add(step)
                if self.errors == 1 or self.errors % 10 == 0:
                    logger.warning("MLflow logging failed at step %d (%s: %s); retrying in the background, "
                                   "training goes on", step, type(err).__name__, str(err)[:200])
                if self._abort.wait(wait):
                    return
                wait = min(wait * 2, MAX_WAIT_S)
                continue
            wait = FIRST_WAIT_S
            with self._lock:
                if self._pending.get(step) is payload:
                    del self._pending[step]
            if self._abort.is_set():
                return


def replay_missing(tracking_uri: str, run_id: str, history: Iterable[Mapping[str, Any]]) -> list[int]:
    """The driver's last pass: log every history row whose step the run does not hold; returns those steps."""
    held = logged_steps(tracking_uri, run_id)
    missing = [row for row in history if int(row["epoch"]) not in held]
    for row in missing:
        tracking.log_metrics(tracking_uri, run_id, _metrics(row), step=int(row["epoch"]))
    return [int(row["epoch"]) for row in missing]
