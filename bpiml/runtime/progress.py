"""Progress lines with the true total, read from a job's counter actor (the driver holds no rows).

    total = progress.count_records(manifest_files)      # None above MAX_COUNT_BYTES of manifest
    with progress.report(counter, "pseudo-labeling", done=("labeled", "rejected", "skipped"), total=total):
        dataset.write_datasink(...)

Every `every_s` seconds: `pseudo-labeling: 1200/1929 images (62%), 41.3 images/s, about 18 s left`.
The total is the manifest's record count, read once by streaming the files (constant memory);
for manifests above `MAX_COUNT_BYTES` the line says how many are done, never an estimated total.
Ray Data's own bars estimate totals from block metadata, so the jobs turn them off unless `--verbose`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import ray

from bpiml.data import storage

logger = logging.getLogger(__name__)


MAX_COUNT_BYTES = 256 * 2**20  # ~1.7M records: counted in seconds; larger manifests report counts only


def count_records(files: list[str], max_bytes: int = MAX_COUNT_BYTES) -> int | None:
    """Non-blank lines over the manifest files, streamed; None when they hold more than `max_bytes`."""
    if sum(storage.size(f) for f in files) > max_bytes:
        return None
    n = 0
    for uri in files:
        with storage.open_uri(uri, "rb") as f:
            n += sum(1 for raw in f if raw.strip())
    return n


def line(what: str, counts: dict[str, float], done: tuple[str, ...], total: int | None, elapsed: float) -> str:
    n_done = int(sum(counts.get(k, 0) for k in done))
    rate = n_done / elapsed if elapsed > 0 else 0.0
    if not total:
        return f"{what}: {n_done} images done, {rate:.1f} images/s"
    n_total = total
    left = f", about {max(0, n_total - n_done) / rate:.0f} s left" if rate > 0 else ""
    return f"{what}: {n_done}/{n_total} images ({100 * n_done / n_total:.0f}%), {rate:.1f} images/s{left}"


@contextlib.contextmanager
def report(counter: Any, what: str, done: tuple[str, ...], total: int | None,
           every_s: float = 30.0) -> Iterator[None]:
    """Log a progress line every `every_s` seconds while the block runs (a daemon thread)."""
    stop = threading.Event()
    start = time.monotonic()

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                counts = ray.get(counter.get.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a progress line is never worth failing the job
                continue
            logger.info(line(what, counts, done, total, time.monotonic() - start))

    thread = threading.Thread(target=loop, name=f"progress-{what}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
