"""Resume: which input records a run labels, given what the output already holds.

The input rows (one per manifest line, with the record's fingerprint) and the output's done rows
(one per record in its manifest shards) are hash-partitioned by id with Ray Data, so all rows of one
id meet in one block, wherever the cluster holds them; the driver never holds the ids. Per id:

- the output holds a record with the input's fingerprint: nothing to do (`skipped`);
- it holds none: `label` (`new`); it holds records of another fingerprint (another teacher,
  weights, variant, or an edited record): `label` (`relabel`) and the old records are `superseded`:
  removed from their shards when the run ends, their masks deleted when no kept record uses them;
- the input has the id more than once, or on a bad line: a reject row for each of its lines (a line
  with no usable id is its own, named `file:line`), and any old record is superseded;
- the output holds an id the input does not: kept (a run never shrinks its output; `--limit`
  only limits what is labeled).

Ray Data's own `CheckpointConfig` filters rows at read time by an id column; the manifest is read
as text (so a malformed line becomes a reject row instead of failing the read) and the rule here
also compares fingerprints, which is why resume is planned here (see docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import numpy as np
import ray

from bpiml.data import parts, storage
from bpiml.pseudolabel.rows import BAD_LINE_PREFIX, ROW_COLUMNS, columns, empty_row
from bpiml.data.manifest import SHARDS_DIR
from bpiml.pseudolabel.store import mask_path
from bpiml.runtime.counter import add_counts
from bpiml.runtime.datasets import READ_CPUS, read_lines

COUNT_KEYS = ("input", "skipped", "new", "relabel", "duplicate", "superseded", "invalid")


# --- done rows ----------------------------------------------------------------------------------
def done_rows(batch: dict[str, Any]) -> dict[str, list[Any]]:
    """Lines of the output's manifest shards (with their file) -> done rows."""
    rows = []
    for text, path in zip(batch["text"], batch["path"]):
        try:
            record = json.loads(str(text))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: its image is labeled again
        if not isinstance(record, dict) or not record.get("id"):
            continue
        rows.append(empty_row(id=str(record["id"]), kind="done", fingerprint=str(record.get("fingerprint", "")),
                              part=str(path), pseudo_mask=str(record.get("pseudo_mask", "")),
                              teacher_identity=str(record.get("teacher_identity", record.get("teacher_version", ""))),
                              status="done"))
    return columns(rows)


def read_done(out: str) -> ray.data.Dataset | None:
    """The output's done rows as a dataset, or None when it holds no records yet."""
    files = parts.table_files(storage.join(out, SHARDS_DIR))
    if not files:
        return None
    ds = read_lines(files, include_paths=True)
    if storage.is_s3(out):
        ds = ds.map_batches(_s3_paths, batch_format="numpy", num_cpus=READ_CPUS)
    return ds.map_batches(done_rows, batch_format="numpy", num_cpus=READ_CPUS)


def _s3_paths(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, "path": np.asarray([storage.s3_uri(str(p)) for p in batch["path"]], dtype=object)}


# --- the plan, per block of co-located ids -------------------------------------------------------
def _supersede(done: dict[str, Any], keep_mask: str | None) -> dict[str, Any]:
    return {**done, "status": "superseded", "kind": "done", "delete_mask": bool(done["pseudo_mask"])
            and done["pseudo_mask"] != keep_mask}


def _reject_each(inputs: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    """Every input row of an id that cannot be labeled, each its own reject row: the rows that are
    rejects already keep their reason, the others get `reason`."""
    return [r if r["status"] == "rejected" else
            empty_row(id=r["id"], status="rejected", stage="manifest", line=r["line"], reason=reason)
            for r in inputs]


def _plan_id(rows: list[dict[str, Any]], counts: dict[str, float]) -> list[dict[str, Any]]:
    inputs = [r for r in rows if r["kind"] == "in"]
    dones = sorted((r for r in rows if r["kind"] == "done"), key=lambda r: r["part"])
    counts["input"] += len(inputs)
    if rows[0]["id"].startswith(BAD_LINE_PREFIX) or any(r["status"] == "rejected" for r in inputs):
        counts["invalid"] += len(inputs)
        reason = f"id {inputs[0]['id']!r} is also on a bad manifest line (see its reject row); none is labeled"
        return _reject_each(inputs, reason) + [_supersede(d, None) for d in dones]
    if not inputs:  # kept; two copies of one id (a crash mid-cleanup) keep the newest
        return [_supersede(d, dones[-1]["pseudo_mask"]) for d in dones[:-1]]
    if len(inputs) > 1:
        counts["duplicate"] += len(inputs)
        reason = f"duplicate id {inputs[0]['id']!r}: {len(inputs)} records share it; none is labeled"
        return _reject_each(inputs, reason) + [_supersede(d, None) for d in dones]
    row = inputs[0]
    matching = [d for d in dones if d["fingerprint"] == row["fingerprint"]]
    if matching:
        counts["skipped"] += 1
        keep = matching[-1]
        return [_supersede(d, keep["pseudo_mask"]) for d in dones if d is not keep]
    counts["relabel" if dones else "new"] += 1
    new_mask = mask_path(row["id"], row["mask_fp"])
    return [row] + [_supersede(d, new_mask) for d in dones]


def plan_block(batch: dict[str, Any], counter: Any = None) -> dict[str, list[Any]]:
    """One block of id-sorted input and done rows -> rows to label, reject rows and supersede rows."""
    n = len(batch["id"])
    rows = [{c: (batch[c][i].item() if isinstance(batch[c][i], np.generic) else batch[c][i]) for c in ROW_COLUMNS}
            for i in range(n)]
    counts = dict.fromkeys(COUNT_KEYS, 0.0)
    out: list[dict[str, Any]] = []
    for _, group in itertools.groupby(rows, key=lambda r: r["id"]):
        out += _plan_id(list(group), counts)
    counts["superseded"] = float(sum(1 for r in out if r["status"] == "superseded"))
    # Keyed by the block's content: a plan task that Ray retries (its node lost) counts once.
    key = "plan:" + hashlib.sha256("\n".join(f"{r['kind']} {r['id']} {r['line'][:64]}" for r in rows).encode()).hexdigest()
    add_counts(counter, counts, key if rows else None)
    return columns(out)


def plan(inputs: ray.data.Dataset, done: ray.data.Dataset | None, counter: Any, num_partitions: int) -> ray.data.Dataset:
    """Co-locate rows by id (hash partitions, sorted) and plan each block; see the module doc."""
    rows = inputs if done is None else inputs.union(done)
    return rows.repartition(num_partitions, keys=["id"], sort=True).map_batches(
        plan_block, batch_size=None, batch_format="numpy", fn_kwargs={"counter": counter}, num_cpus=READ_CPUS)
