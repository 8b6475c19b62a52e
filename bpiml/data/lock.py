"""One writer per output: a lock object with an owner and a heartbeat, on local disk and on S3.

    with WriterLock(storage.join(out, ".lock"), what="pseudo-labeling output"):
        ...  # only one job writes `out` at a time

The lock is created exclusively (`O_EXCL` locally; a conditional PUT, `If-None-Match: *`, on S3,
verified by reading it back), holds `{"owner", "token", "started", "heartbeat"}`, and a background
thread refreshes the heartbeat every `ttl_s / 4` seconds. A second job finds a fresh heartbeat and
fails with an error naming the owner. A lock whose heartbeat is older than `ttl_s` (its job was
killed) is taken over with a warning. A holder that finds its lock taken over stops heartbeating
and reports it through `lost`, which jobs check before they commit their outputs. A job that fails
releases its lock when the store answers within `RELEASE_RETRY_S`; otherwise (the store is down, or
the job was killed) the lock goes stale `ttl_s` after its last heartbeat and the next run takes it
over (docs/troubleshooting.md says how to take it over sooner, safely).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import boto3
import botocore.exceptions

from bpiml.data import retry, storage

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"  # the lock's name in the output it guards
RELEASE_RETRY_S = 20.0  # how long a failing job waits for the store to release its lock


class LockedError(RuntimeError):
    """Another live job holds the lock."""


class WriterLock:
    def __init__(self, uri: str, ttl_s: float = 120.0, what: str = "output") -> None:
        if ttl_s <= 0:
            raise ValueError(f"lock ttl_s must be > 0, got {ttl_s}")
        self.uri, self.ttl_s, self.what = uri, float(ttl_s), what
        self.token = uuid.uuid4().hex
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.started = time.time()
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the lock object -------------------------------------------------------------------
    def _payload(self) -> bytes:
        return json.dumps({"owner": self.owner, "token": self.token, "started": self.started,
                           "heartbeat": time.time(), "ttl_s": self.ttl_s}).encode()

    def _read(self) -> dict[str, Any] | None:
        try:
            value = json.loads(storage.read_bytes(self.uri))
        except FileNotFoundError:
            return None
        except ValueError:  # a torn write: treat as stale
            return {"owner": "unknown", "token": "", "heartbeat": 0.0}
        return value if isinstance(value, dict) else {"owner": "unknown", "token": "", "heartbeat": 0.0}

    def _create(self) -> bool:
        """Create the lock object only if it does not exist; True when this call created it."""
        if not storage.is_s3(self.uri):
            path = storage.local_path(self.uri)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._payload())
            return True
        bucket, key = storage.split_s3(self.uri)
        client = boto3.client("s3", endpoint_url=storage.s3_endpoint())
        try:
            client.put_object(Bucket=bucket, Key=key, Body=self._payload(), IfNoneMatch="*")
        except botocore.exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        current = self._read()  # stores that ignore the condition: the last writer wins, so check
        return bool(current and current.get("token") == self.token)

    # --- acquire / heartbeat / release ------------------------------------------------------------
    def acquire(self) -> WriterLock:
        for _ in range(5):
            if self._create():
                break
            current = self._read()
            if current is None:
                continue  # released meanwhile
            age = time.time() - float(current.get("heartbeat", 0.0))
            if age < self.ttl_s:
                raise LockedError(
                    f"{self.what} {storage.parent(self.uri)} is being written by {current.get('owner')} "
                    f"(lock {self.uri}, heartbeat {age:.0f} s ago); wait for that job, stop it, or choose "
                    f"another output. A lock older than {self.ttl_s:.0f} s is taken over automatically.")
            logger.warning("taking over the stale lock %s of %s (no heartbeat for %.0f s): its job is gone",
                           self.uri, current.get("owner"), age)
            storage.remove(self.uri)
        else:
            raise LockedError(f"could not take the lock {self.uri}: other jobs keep creating it")
        self._thread = threading.Thread(target=self._heartbeat, name="bpiml-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                current = self._read()
                if not current or current.get("token") != self.token:
                    self.lost = True
                    logger.error("lost the lock %s to %s", self.uri, (current or {}).get("owner"))
                    return
                storage.write_bytes(self.uri, self._payload())
            except Exception as err:  # a transient store error: try again next beat
                logger.warning("lock heartbeat on %s failed: %s: %s", self.uri, type(err).__name__, err)

    def check(self) -> None:
        """Raise when the lock was taken over while this job ran (its outputs must not be committed)."""
        if self.lost:
            raise LockedError(f"the lock {self.uri} was taken over by another job while this one ran")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = self._read()
        if current and current.get("token") == self.token:
            storage.remove(self.uri)

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.release()
            return
        try:  # the job is failing already: a store that is down must not replace its error with this one
            with retry.limited(RELEASE_RETRY_S):
                self.release()
        except Exception as err:  # noqa: BLE001 - reported; the job's own error is what propagates
            logger.warning("could not release the lock %s (%s: %s): it goes stale %.0f s after its last heartbeat, "
                           "and the next run takes it over then", self.uri, type(err).__name__, err, self.ttl_s)
