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

Only the rows to label leave a plan task: its reject rows and supersede rows are written there and
then, as parts of `rejects/` and `supersede/` named by their content (the side stream).

Ray Data's own `CheckpointConfig` filters rows at read time by an id column; the manifest is read
as text (so a malformed line becomes a reject row instead of failing the read) and the rule here
also compares fingerprints, which is why resume is planned here (see docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from bpiml.data import parts, storage
from bpiml.data.manifest import SHARDS_DIR
from bpiml.data.rejects import Reject
from bpiml.pseudolabel.rows import BAD_LINE_PREFIX, RejectsOut, plan_row, reject, table
from bpiml.pseudolabel.store import SUPERSEDE_DIR, mask_path
from bpiml.runtime.counter import add_counts
from bpiml.runtime.datasets import READ_CPUS, read_lines

COUNT_KEYS = ("input", "skipped", "new", "relabel", "duplicate", "superseded", "invalid")


# --- done rows ----------------------------------------------------------------------------------
def done_rows(batch: dict[str, Any]) -> pa.Table:
    """Lines of the output's manifest shards (with their file) -> done rows."""
    rows = []
    for text, path in zip(batch["text"], batch["path"]):
        try:
            record = json.loads(str(text))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: its image is labeled again
        if not isinstance(record, dict) or not record.get("id"):
            continue
        rows.append(plan_row(id=str(record["id"]), kind="done", fingerprint=str(record.get("fingerprint", "")),
                             part=str(path), pseudo_mask=str(record.get("pseudo_mask", "")),
                             teacher_identity=str(record.get("teacher_identity", record.get("teacher_version", "")))))
    return table(rows)


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
@dataclasses.dataclass
class Planned:
    """What the plan makes of one id's rows: rows to label, reject rows, supersede rows."""

    label: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rejects: list[Reject] = dataclasses.field(default_factory=list)
    supersede: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def add(self, other: Planned) -> None:
        self.label += other.label
        self.rejects += other.rejects
        self.supersede += other.supersede


def _supersede(done: dict[str, Any], keep_mask: str | None) -> dict[str, Any]:
    """The supersede row of a done record (`commit.apply_supersedes`): its mask is deleted unless kept."""
    return {"id": done["id"], "fingerprint": done["fingerprint"], "part": done["part"],
            "pseudo_mask": done["pseudo_mask"], "teacher_identity": done["teacher_identity"],
            "delete_mask": bool(done["pseudo_mask"]) and done["pseudo_mask"] != keep_mask}


def _reject_each(inputs: list[dict[str, Any]], reason: str) -> list[Reject]:
    """Every input row of an id that cannot be labeled, each its own reject row: the lines that are no
    valid record keep their reason, the others get `reason`."""
    return [reject(r, "manifest", r["reason"] or reason) for r in inputs]


def _plan_id(rows: list[dict[str, Any]], counts: dict[str, float]) -> Planned:
    inputs = [r for r in rows if r["kind"] == "in"]
    dones = sorted((r for r in rows if r["kind"] == "done"), key=lambda r: r["part"])
    counts["input"] += len(inputs)
    if rows[0]["id"].startswith(BAD_LINE_PREFIX) or any(r["reason"] for r in inputs):
        counts["invalid"] += len(inputs)
        reason = f"id {inputs[0]['id']!r} is also on a bad manifest line (see its reject row); none is labeled"
        return Planned(rejects=_reject_each(inputs, reason), supersede=[_supersede(d, None) for d in dones])
    if not inputs:  # kept; two copies of one id (a crash mid-cleanup) keep the newest
        return Planned(supersede=[_supersede(d, dones[-1]["pseudo_mask"]) for d in dones[:-1]])
    if len(inputs) > 1:
        counts["duplicate"] += len(inputs)
        reason = f"duplicate id {inputs[0]['id']!r}: {len(inputs)} records share it; none is labeled"
        return Planned(rejects=_reject_each(inputs, reason), supersede=[_supersede(d, None) for d in dones])
    row = inputs[0]
    matching = [d for d in dones if d["fingerprint"] == row["fingerprint"]]
    if matching:
        counts["skipped"] += 1
        keep = matching[-1]
        return Planned(supersede=[_supersede(d, keep["pseudo_mask"]) for d in dones if d is not keep])
    counts["relabel" if dones else "new"] += 1
    new_mask = mask_path(row["id"], row["mask_fp"])
    return Planned(label=[row], supersede=[_supersede(d, new_mask) for d in dones])


def plan_rows(rows: list[dict[str, Any]], counts: dict[str, float]) -> Planned:
    """Id-sorted input and done rows -> what the plan makes of them (see the module doc)."""
    planned = Planned()
    for _, group in itertools.groupby(rows, key=lambda r: r["id"]):
        planned.add(_plan_id(list(group), counts))
    counts["superseded"] = float(len(planned.supersede))
    return planned


def plan_block(batch: pa.Table, out: str, run_id: str, counter: Any = None) -> pa.Table:
    """One block of id-sorted input and done rows -> the rows to label; its reject rows and supersede rows
    go to their part files of run `run_id` in `out` at once (the side stream)."""
    rows = batch.to_pylist()
    counts = dict.fromkeys(COUNT_KEYS, 0.0)
    planned = plan_rows(rows, counts)
    parts.write_part(storage.join(out, SUPERSEDE_DIR), run_id, planned.supersede)
    RejectsOut(out, run_id, counter).write(planned.rejects)
    # Keyed by the block's content: a plan task that Ray retries (its node lost) counts once.
    key = "plan:" + hashlib.sha256("\n".join(f"{r['kind']} {r['id']} {r['fingerprint']} {r['reason'][:64]}"
                                             for r in rows).encode()).hexdigest()
    add_counts(counter, counts, key if rows else None)
    return table(planned.label)


def plan(inputs: ray.data.Dataset, done: ray.data.Dataset | None, counter: Any, num_partitions: int, out: str,
         run_id: str) -> ray.data.Dataset:
    """Co-locate rows by id (hash partitions, sorted) and plan each block; see the module doc."""
    rows = inputs if done is None else inputs.union(done)
    return rows.repartition(num_partitions, keys=["id"], sort=True).map_batches(
        plan_block, batch_size=None, batch_format="pyarrow",
        fn_kwargs={"out": out, "run_id": run_id, "counter": counter}, num_cpus=READ_CPUS)
