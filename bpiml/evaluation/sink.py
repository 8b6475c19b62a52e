"""The per-image tables of batch prediction and evaluation, written by a Ray Data sink as blocks finish.

A job writes the rows it produced into `<out>/<table>/` and the rows it could not produce into
`<out>/rejects/` (`bpiml.data.rejects` rows), both as part files of `bpiml.data.parts` (one per
block, named by content) that `finish_tables` merges into shards at the end; read a table with
`bpiml.data.parts.iter_table` (rows in no particular order). The driver never sees the rows: per block, the sink
adds `images` / `written` / `rejected` to a counter actor, and each extra `tally` (a function of
the block's rows) adds its sums to its own counter, once per block even when Ray retries the write.
A rerun into the same `out` replaces the tables (`clear_tables`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ray.data import Datasink
from ray.data.block import BlockAccessor

from bpiml.data import parts, rejects, storage
from bpiml.evaluation.tables import json_safe
from bpiml.pseudolabel.commit import compact
from bpiml.runtime.counter import add_counts, block_key

REJECTS_DIR = "rejects"
SHARD_ROWS = 20_000  # rows per shard after the merge
WRITE_CPUS = 0.25  # per write task

Tally = tuple[Any, Callable[[list[dict[str, Any]]], dict[Any, float]]]  # (counter actor, block rows -> sums)


class TableSink(Datasink):
    """Each block of finished rows (an `error` column: "" when produced) -> a part of `<table>/` and one
    of `rejects/` (with `stage`); counts to `counter`, each tally's sums to its counter."""

    def __init__(self, out: str, table: str, stage: str, run_id: str, counter: Any, rows_per_write: int,
                 tallies: Sequence[Tally] = ()) -> None:
        self.out, self.table, self.stage, self.run_id = out, table, stage, run_id
        self.counter, self.rows_per_write, self.tallies = counter, rows_per_write, list(tallies)

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_write

    def write(self, blocks: Iterable[Any], ctx: Any) -> None:
        for block in blocks:
            rows = [dict(r) for r in BlockAccessor.for_block(block).iter_rows(public_row_format=True)]
            ok = [{k: json_safe(v) for k, v in r.items() if k != "error"} for r in rows if not r["error"]]
            bad = [rejects.Reject(str(r["id"]), str(r["image"]), self.stage, str(r["error"])).to_dict()
                   for r in rows if r["error"]]
            key = block_key(parts.write_part(storage.join(self.out, REJECTS_DIR), self.run_id, bad),
                            parts.write_part(storage.join(self.out, self.table), self.run_id, ok))
            add_counts(self.counter, {"images": len(rows), "written": len(ok), "rejected": len(bad)}, key)
            for counter, tally in self.tallies:
                add_counts(counter, tally(rows), key)


def clear_tables(out: str, tables: Sequence[str], old_files: Sequence[str] = ()) -> None:
    """Remove the tables (and `rejects/`) of an earlier run into `out`, and its `old_files`."""
    for folder in (*tables, REJECTS_DIR):
        for uri in storage.list_files(storage.join(out, folder)):
            storage.remove(uri)
    for name in old_files:
        storage.remove(storage.join(out, name))


def finish_tables(out: str, tables: Sequence[str], part_rows: int) -> None:
    """Merge the parts of the tables (and `rejects/`) into shards of `SHARD_ROWS` rows."""
    for folder in (*tables, REJECTS_DIR):
        compact(storage.join(out, folder), SHARD_ROWS, part_rows)
