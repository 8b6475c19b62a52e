"""Labeling in waves: the driver's memory is bounded by a wave, not by the store.

Ray Data's executor keeps state on the driver for every block it has run, for as long as the
execution lasts (a `BlockStats` per output block of each operator, for `Dataset.stats()`, and
the queued block references): about 25 KB per block, so one execution over 1M records at 32
records a block would grow the driver by most of a GB (docs/performance.md). So a run is
several executions, and the driver drops each one's state before the next:

    the plan      one execution: read -> parse -> plan (`bpiml.pseudolabel.plan`); the rows to label
                  go to `<out>/todo/` as part files of the run (`TodoSink`), `file_rows` (<= 4,096) a file
    the waves     the todo files in groups of at most `wave_rows` records (`wave_groups`); each
                  group is one execution (`read_wave` -> decode -> teacher -> write -> the run's
                  sink), after which its todo files are removed

Resume is unchanged: a killed run's todo files are removed by the next run (under the writer
lock), which plans again from the output's done records. The cost of a wave is the drain at its
end and, for SAM, the teacher actors' start (once per wave).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import ray
from ray.data import Datasink
from ray.data.block import BlockAccessor

from bpiml.data import parts, storage
from bpiml.pseudolabel.rows import table
from bpiml.runtime.datasets import READ_CPUS

TODO_DIR = "todo"
TODO_FILE_ROWS = 4096  # rows to label per todo file (a few MB of JSON lines)


def todo_folder(out: str) -> str:
    return storage.join(out, TODO_DIR)


def file_rows(wave_rows: int) -> int:
    """Rows per todo file: a wave is whole files, so a file never holds more than a wave."""
    return min(TODO_FILE_ROWS, wave_rows)


class TodoSink(Datasink):
    """The plan's rows to label -> part files of run `run_id` in `folder`, `rows_per_file` rows each, named
    by their content (a retried write rewrites the same files)."""

    def __init__(self, folder: str, run_id: str, rows_per_file: int) -> None:
        self.folder, self.run_id, self.rows_per_file = folder, run_id, rows_per_file

    def write(self, blocks: Iterable[Any], ctx: Any) -> None:
        for block in blocks:  # chunked per block: a retry sees the same blocks, so writes the same files
            rows = BlockAccessor.for_block(block).to_arrow()  # a plan block can be a whole hash partition
            for start in range(0, rows.num_rows, self.rows_per_file):
                parts.write_part(self.folder, self.run_id, rows.slice(start, self.rows_per_file).to_pylist())


def wave_groups(files: list[str], wave_rows: int, rows_per_file: int) -> list[list[str]]:
    """Todo files in groups of at most `wave_rows` records (each file holds at most `rows_per_file`)."""
    per_wave = max(1, wave_rows // rows_per_file)
    return [files[k:k + per_wave] for k in range(0, len(files), per_wave)]


def clear(folder: str) -> int:
    """Remove every todo file (a killed run's, before a run plans again, or none after the last wave) and
    the folder; returns how many files there were."""
    files = storage.list_files(folder)
    for uri in files:
        storage.remove(uri)
    storage.remove_empty_folder(folder)
    return len(files)


def _read_files(batch: dict[str, Any]) -> pa.Table:
    return table([row for uri in batch["uri"] for row in parts.read_rows(str(uri))])


def read_wave(files: list[str]) -> ray.data.Dataset:
    """The rows to label of one wave, one read task per todo file."""
    listing = ray.data.from_items([{"uri": u} for u in files], override_num_blocks=len(files))
    return listing.map_batches(_read_files, batch_size=1, batch_format="numpy", num_cpus=READ_CPUS)
