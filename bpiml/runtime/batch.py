"""One skeleton for every batch job over a store: a step, one parts sink, one driver.

    step      a Ray Data batch step (`BatchStep`): loaded once per actor, a batch dict in, a batch
              dict out; its torch device follows the GPUs it asked for (`resources.torch_device`), and a
              failing image becomes a reject (`BatchStep.each`), never a failed batch
    sink      `PartsSink`: each block of finished rows becomes content-named part files
              (`bpiml.data.parts`), the commit part last, its counts sent once to a counter actor
    driver    `run_batch(job)`: run id, counter, progress, the sink, compaction, `summary.json`
              and the reject-rate check, in that order, for a `BatchJob` that says what differs

The pseudo-labeler, the predictor and the evaluator run on it (docs/architecture.md, "Batch
skeleton"). Nothing of the store passes through the driver: it holds counts only.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import ray
from ray.data import Datasink
from ray.data.block import BlockAccessor

from bpiml.data import parts, rejects, storage
from bpiml.data.retry import StorageUnavailable
from bpiml.runtime import progress
from bpiml.runtime.counter import add_counts, block_key, start_counter
from bpiml.runtime.resources import torch_device

WRITE_CPUS = 0.25  # per sink write task; a CPU stage asking the same fuses with it (one task)
DRIVER_LIMIT = 64  # at most this many part files are compacted on the driver; more go to Ray tasks

# What a sink makes of one block: the (folder, rows) part files to write, in order (the last one is the
# commit point: once it exists the block is done), and the block's counts.
Routed = tuple[list[tuple[str, list[dict[str, Any]]]], dict[Any, float]]
Tally = tuple[Any, Callable[[list[dict[str, Any]]], dict[Any, float]]]  # (counter actor, block rows -> sums)


# --- the step ------------------------------------------------------------------------------------
def reason_of(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


class BatchStep:
    """Base of a batch step: `device` from the GPUs it asked for; `each` isolates a failing image."""

    def __init__(self, num_gpus: float | None = 0.0) -> None:
        self.device = torch_device(num_gpus or 0.0)

    @staticmethod
    def each(fn: Callable[[int], Any], errors: list[str]) -> dict[int, Any]:
        """{k: fn(k)} for each k whose `errors[k]` is "" (not a reject yet); an exception sets `errors[k]` to
        its reason instead. An outage past the retry budget (`StorageUnavailable`) fails the job: it is no
        bad image, and a rerun resumes."""
        done: dict[int, Any] = {}
        for k, error in enumerate(errors):
            if error:
                continue
            try:
                done[k] = fn(k)
            except StorageUnavailable:
                raise
            except Exception as err:  # noqa: BLE001 - one bad image becomes a reject row, not a failed job
                errors[k] = reason_of(err)
        return done


# --- the sink ------------------------------------------------------------------------------------
class PartsSink(Datasink):
    """Each block of finished rows -> `route(rows)`'s part files under `out` for run `run_id`, written in
    order (the commit part last), then the block's counts to `counter` and each tally's sums to its
    counter, once per block even when Ray retries the write (the parts are named by content)."""

    def __init__(self, out: str, run_id: str, counter: Any, rows_per_write: int,
                 route: Callable[[list[dict[str, Any]]], Routed], tallies: Sequence[Tally] = ()) -> None:
        self.out, self.run_id, self.counter, self.rows_per_write = out, run_id, counter, rows_per_write
        self.route, self.tallies = route, list(tallies)

    @property
    def min_rows_per_write(self) -> int:
        """Hand each write about `rows_per_write` rows as soon as they are there (Ray Data would otherwise
        gather far bigger bundles, and a kill would lose them)."""
        return self.rows_per_write

    def write(self, blocks: Iterable[Any], ctx: Any) -> None:
        for block in blocks:
            accessor = BlockAccessor.for_block(block)
            if accessor.num_rows() == 0:
                continue
            rows = [dict(r) for r in accessor.iter_rows(public_row_format=True)]
            tables, counts = self.route(rows)
            key = block_key(*[parts.write_part(storage.join(self.out, folder), self.run_id, table)
                              for folder, table in tables])
            add_counts(self.counter, counts, key)
            for counter, tally in self.tallies:
                add_counts(counter, tally(rows), key)


# --- compaction ----------------------------------------------------------------------------------
def _compact_on_driver(folder: str, run_id: str, files: list[str], shard_rows: int) -> int:
    rows = (row for uri in files for row in parts.read_rows(uri))
    return len(parts.write_shards(folder, run_id, rows, shard_rows))


@ray.remote(num_cpus=0.25)
def _compact_remote(folder: str, run_id: str, k: int, files: list[str]) -> int:
    rows = [row for uri in files for row in parts.read_rows(uri)]
    if rows:
        parts.write_shard(folder, run_id, k, rows)
    return len(rows)


def compact(folder: str, shard_rows: int, part_rows: int) -> list[str]:
    """Merge the parts of every run without a marker into shards, mark the run, delete its parts."""
    done = []
    for run_id in parts.uncompacted_runs(folder):
        files = parts.run_parts(folder, run_id)
        if len(files) <= DRIVER_LIMIT:
            _compact_on_driver(folder, run_id, files, shard_rows)
        else:  # about `shard_rows` records per task: groups of files, each becoming one shard
            per_shard = max(1, shard_rows // max(part_rows, 1))
            groups = [files[i:i + per_shard] for i in range(0, len(files), per_shard)]
            ray.get([_compact_remote.remote(folder, run_id, k, g) for k, g in enumerate(groups)])
        storage.write_bytes(parts.marker_uri(folder, run_id), b"")
        for uri in files:
            storage.remove(uri)
        done.append(run_id)
    for uri in parts.stale_files(folder):
        storage.remove(uri)
    return done


# --- the driver ----------------------------------------------------------------------------------
class BatchJob:
    """What one batch job adds to the skeleton; `run_batch` calls these in order (see its doc)."""

    what = "batch"  # the job's name in progress lines and errors
    progress_keys: tuple[str, ...] = ("images",)  # counter keys that count as done images
    summary_file: str | None = "summary.json"  # written into `out` from the summary, or None

    def __init__(self, out: str, max_reject_rate: float) -> None:
        self.out, self.max_reject_rate = out, max_reject_rate

    def lock(self) -> contextlib.AbstractContextManager[Any]:
        """Held from the run id to `summary.json` (a writer lock on the output, or nothing)."""
        return contextlib.nullcontext()

    def start(self, run_id: str, counter: Any) -> None:
        """Inside the lock, before any work: clear or mark the output."""

    def total(self) -> int | None:
        """The number of images the progress lines count towards, when known."""
        return None

    def pipeline(self, run_id: str, counter: Any) -> ray.data.Dataset:
        """The rows for the sink (stages that write rejects themselves write them as parts of `run_id`)."""
        raise NotImplementedError

    def pipelines(self, run_id: str, counter: Any) -> Iterator[ray.data.Dataset]:
        """The datasets for the sink, each run to its end before the next is asked for: Ray Data keeps state
        on the driver per block for a whole execution, so a job over a store of any size runs it in
        bounded pieces (`bpiml.pseudolabel.waves`). Default: the one `pipeline`."""
        yield self.pipeline(run_id, counter)

    def sink(self, run_id: str, counter: Any) -> PartsSink:
        raise NotImplementedError

    def commit(self, run_id: str) -> Any:
        """After the sink, inside the lock: compact the tables; returns what `summarize` needs."""

    def summarize(self, counts: dict[Any, float], committed: Any, elapsed: float) -> dict[str, Any]:
        """The run's summary from the counter's sums, `commit`'s result and the pipeline's seconds."""
        raise NotImplementedError

    def seal(self, summary: dict[str, Any]) -> None:
        """Inside the lock, after `summary.json`: mark the output complete."""

    def finish(self, summary: dict[str, Any]) -> None:
        """After the lock, before the reject-rate check (e.g. log to MLflow, check the counts)."""

    def rejected(self, summary: dict[str, Any]) -> tuple[int, int]:
        """(rejected, total) images of the run, for the reject-rate check."""
        raise NotImplementedError


def run_batch(job: BatchJob) -> dict[str, Any]:
    """Run `job`: under its lock a new run id, a counter actor, its pipelines into its sink with progress
    lines, compaction, the summary (`summary.json`, its `seconds` the pipeline's, compaction excluded) and
    the seal; then `finish`, and last the reject-rate check, which fails the job (after everything was
    written) past `max_reject_rate`. Returns the summary."""
    with job.lock():
        run_id = parts.new_run_id(time.strftime("%Y%m%d_%H%M%S"), uuid.uuid4().hex[:8])
        counter = start_counter()
        job.start(run_id, counter)
        started = time.perf_counter()
        with progress.report(counter, job.what, job.progress_keys, job.total()):
            sink = job.sink(run_id, counter)
            for dataset in job.pipelines(run_id, counter):
                dataset.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_CPUS})
        elapsed = time.perf_counter() - started
        counts = ray.get(counter.get.remote())
        committed = job.commit(run_id)
        summary = job.summarize(counts, committed, elapsed)
        if job.summary_file:
            storage.write_json(storage.join(job.out, job.summary_file), summary)
        job.seal(summary)
    job.finish(summary)
    bad, total = job.rejected(summary)
    rejects.check_reject_rate(bad, total, job.max_reject_rate, job.what, storage.join(job.out, rejects.REJECTS_DIR))
    return summary
