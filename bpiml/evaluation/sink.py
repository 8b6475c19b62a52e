"""The per-image tables of batch prediction and evaluation, written by the parts sink as blocks finish.

A job writes the rows it produced into `<out>/<table>/` and the rows it could not produce into
`<out>/rejects/` (`bpiml.data.rejects` rows), both as part files of `bpiml.data.parts` (one per
block, named by content; `bpiml.runtime.batch.PartsSink`) that `finish_tables` merges into shards at
the end; read a table with `bpiml.data.parts.iter_table` (rows in no particular order). The driver
never sees the rows: per block, the sink adds `images` / `written` / `rejected` to a counter actor,
and each extra `tally` (a function of the block's rows) adds its sums to its own counter, once per
block even when Ray retries the write. A rerun into the same `out` replaces the tables (`clear_tables`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from bpiml.data import rejects, storage
from bpiml.data.rejects import REJECTS_DIR
from bpiml.evaluation.tables import json_safe
from bpiml.runtime.batch import PartsSink, Routed, Tally, compact

SHARD_ROWS = 20_000  # rows per shard after the merge


def route_table(rows: list[dict[str, Any]], table: str, stage: str) -> Routed:
    """One block of step rows (an `error` column: "" when produced) -> its rows in `table`, its rejects
    (with `stage`) in `rejects/`, and its counts."""
    ok = [{k: json_safe(v) for k, v in r.items() if k != "error"} for r in rows if not r["error"]]
    bad = [rejects.Reject(str(r["id"]), str(r["image"]), stage, str(r["error"])).to_dict() for r in rows if r["error"]]
    return [(REJECTS_DIR, bad), (table, ok)], {"images": len(rows), "written": len(ok), "rejected": len(bad)}


def table_sink(out: str, table: str, stage: str, run_id: str, counter: Any, rows_per_write: int,
               tallies: Sequence[Tally] = ()) -> PartsSink:
    """The sink of a job whose rows go to `<out>/<table>/` and `<out>/rejects/` (see `route_table`)."""
    return PartsSink(out, run_id, counter, rows_per_write,
                     functools.partial(route_table, table=table, stage=stage), tallies)


def clear_tables(out: str, tables: Sequence[str]) -> None:
    """Remove the tables (and `rejects/`) of an earlier run into `out`."""
    for folder in (*tables, REJECTS_DIR):
        for uri in storage.list_files(storage.join(out, folder)):
            storage.remove(uri)


def finish_tables(out: str, tables: Sequence[str], part_rows: int) -> None:
    """Merge the parts of the tables (and `rejects/`) into shards of `SHARD_ROWS` rows."""
    for folder in (*tables, REJECTS_DIR):
        compact(storage.join(out, folder), SHARD_ROWS, part_rows)
