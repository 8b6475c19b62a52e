"""Transient object-store errors are retried; an outage longer than the budget ends the job naming S3.

    retry.call(lambda: fs.cat_file(path), uri)     # every S3 call of `bpiml.data.storage` goes through it

A call that fails with a connection error (the endpoint down or restarting, a reset, a timeout) or
a throttling / 5xx answer is tried again with exponential backoff (0.5 s doubling to 10 s) until it
succeeds or `budget_s()` seconds have passed since its first failure; then `StorageUnavailable` is
raised, naming the URI, the endpoint, how long it waited and the setting to change. Missing keys,
refused credentials and other answers are never retried: they fail at once, as before.

The budget is `BPIML_STORAGE_RETRY_S` (default 300 s), set by the jobs' `--storage-retry-s` and
forwarded to Ray's workers, so every task of a job waits out the same outage. `limited(s)` caps it
for the calls of one block (releasing a lock while the job is failing anyway).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

logger = logging.getLogger(__name__)

BUDGET_ENV = "BPIML_STORAGE_RETRY_S"
DEFAULT_BUDGET_S = 300.0
FIRST_WAIT_S, MAX_WAIT_S = 0.5, 10.0

# Exception class names (anywhere in the cause chain) and S3 error codes that mean "try again later".
TRANSIENT_ERRORS = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                    "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ClientPayloadError",
                    "ConnectionRefusedError", "ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError",
                    "TimeoutError", "IncompleteRead", "ResponseStreamingError")
TRANSIENT_CODES = ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500", "502", "504")

T = TypeVar("T")
_local = threading.local()


class StorageUnavailable(ConnectionError):
    """The object store did not answer within the retry budget."""


def budget_s() -> float:
    cap = getattr(_local, "cap", None)
    try:
        budget = float(os.environ.get(BUDGET_ENV, DEFAULT_BUDGET_S))
    except ValueError:
        budget = DEFAULT_BUDGET_S
    return max(0.0, budget if cap is None else min(budget, cap))


def set_budget(seconds: float) -> None:
    """Every later call in this process and the Ray workers started from it waits out outages this long."""
    if seconds < 0:
        raise ValueError(f"storage_retry_s must be >= 0, got {seconds}")
    os.environ[BUDGET_ENV] = str(float(seconds))


@contextlib.contextmanager
def limited(seconds: float) -> Iterator[None]:
    """Cap the budget of this thread's calls inside the block."""
    before = getattr(_local, "cap", None)
    _local.cap = seconds
    try:
        yield
    finally:
        _local.cap = before


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = err
    for _ in range(10):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def _code(err: BaseException) -> str:
    response = getattr(err, "response", None)
    return str(((response or {}).get("Error") or {}).get("Code", "")) if isinstance(response, dict) else ""


def is_transient(err: BaseException) -> bool:
    """A connection failure, timeout, throttling or 5xx answer (see the module doc); never a missing key
    or refused credentials."""
    if isinstance(err, (FileNotFoundError, PermissionError, StorageUnavailable)):
        return False
    return any(type(e).__name__ in TRANSIENT_ERRORS or _code(e) in TRANSIENT_CODES for e in _chain(err))


def call(fn: Callable[[], T], uri: str, endpoint: str = "") -> T:
    """`fn()`, retried on transient errors for up to `budget_s()` seconds (see the module doc); `endpoint`
    names the store in the final error."""
    failed_at, wait, attempts = 0.0, FIRST_WAIT_S, 0
    while True:
        try:
            return fn()
        except Exception as err:
            if not is_transient(err):
                raise
            now = time.monotonic()
            failed_at = failed_at or now
            attempts += 1
            if now - failed_at >= budget_s():
                raise StorageUnavailable(_message(uri, endpoint, err, now - failed_at, attempts)) from err
            if attempts == 1 or attempts % 10 == 0:
                logger.warning("storage unreachable (%s: %s) at %s; retrying for up to %.0f s", type(err).__name__,
                               str(err)[:200], uri, budget_s())
            time.sleep(min(wait, max(0.0, failed_at + budget_s() - now)))
            wait = min(wait * 2, MAX_WAIT_S)


def _message(uri: str, endpoint: str, err: BaseException, waited: float, attempts: int) -> str:
    return (f"{endpoint or 'storage'} unreachable for {waited:.0f} s ({attempts} tries) at {uri}: {type(err).__name__}: "
            f"{str(err)[:300]}. The job waits out outages up to --storage-retry-s "
            f"({budget_s():.0f} s, env {BUDGET_ENV}); rerun the same command to resume once the store is back")
