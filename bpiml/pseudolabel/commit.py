"""The end of a pseudo-labeling run: remove superseded records, clean up, count the output (the parts
are compacted into shards by `bpiml.runtime.batch.compact`, as every batch job's).

Each step can be interrupted and is finished by the next run: superseded records are planned
again while both copies exist, parts are compacted by the next run, and the index says
`complete: false` until the last step is done (training refuses an incomplete store).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import ray

from bpiml.data import parts, storage
from bpiml.data.manifest import SHARDS_DIR
from bpiml.data.rejects import REJECTS_DIR
from bpiml.pseudolabel.confidence import ConfidenceStats
from bpiml.pseudolabel.store import SUPERSEDE_DIR
from bpiml.runtime.batch import DRIVER_LIMIT
from bpiml.runtime.datasets import READ_CPUS, read_lines

logger = logging.getLogger(__name__)


def _rewrite_part(uri: str, rows: list[dict[str, Any]], out: str) -> dict[str, int]:
    drop = {(str(r["id"]), str(r["fingerprint"])) for r in rows}
    removed = parts.rewrite_without(uri, drop) if storage.exists(uri) else 0
    deleted = 0
    for r in rows:
        if r.get("delete_mask") and r.get("pseudo_mask"):
            storage.remove(storage.join(out, r["pseudo_mask"]))
            deleted += 1
    return {"removed": removed, "masks_deleted": deleted}


@ray.remote(num_cpus=0.25)
def _rewrite_remote(uri: str, rows: list[dict[str, Any]], out: str) -> dict[str, int]:
    return _rewrite_part(uri, rows, out)


def apply_supersedes(out: str, run_id: str) -> dict[str, Any]:
    """Remove this run's superseded records from their files; returns counts, per teacher identity too."""
    folder = storage.join(out, SUPERSEDE_DIR)
    by_part: dict[str, list[dict[str, Any]]] = {}
    teachers: dict[str, int] = {}
    for uri in storage.list_files(folder, ".jsonl"):
        if f"part-{run_id}-" not in os.path.basename(uri):
            continue
        for row in parts.read_rows(uri):
            by_part.setdefault(str(row["part"]), []).append(row)
            teachers[str(row.get("teacher_identity", ""))] = teachers.get(str(row.get("teacher_identity", "")), 0) + 1
    results = [_rewrite_part(u, rows, out) for u, rows in by_part.items()] if len(by_part) <= DRIVER_LIMIT else \
        ray.get([_rewrite_remote.remote(u, rows, out) for u, rows in by_part.items()])
    counts = {"removed": sum(r["removed"] for r in results), "masks_deleted": sum(r["masks_deleted"] for r in results)}
    return {**counts, "by_teacher": teachers}


def clean_run_folders(out: str, run_id: str) -> None:
    """Keep this run's rejects; drop supersede rows (applied) and other runs' rejects."""
    for uri in storage.list_files(storage.join(out, SUPERSEDE_DIR)):
        storage.remove(uri)
    for uri in storage.list_files(storage.join(out, REJECTS_DIR)):
        if f"-{run_id}-" not in os.path.basename(uri):
            storage.remove(uri)


def _stats_of_lines(lines: Any, review_below: float) -> dict[str, Any]:
    teachers: dict[str, int] = {}
    confidence = ConfidenceStats(review_below)
    n = 0
    for text in lines:
        try:
            record = json.loads(str(text))
        except json.JSONDecodeError:
            continue
        n += 1
        key = str(record.get("teacher_version", "unknown"))
        teachers[key] = teachers.get(key, 0) + 1
        confidence.add(record.get("confidence"))
    return {"records": n, "teachers": teachers, "confidence": confidence}


def _block_stats(batch: dict[str, Any], review_below: float) -> dict[str, Any]:
    stats = _stats_of_lines(batch["text"], review_below)
    return {"records": [stats["records"]], "teachers": [json.dumps(stats["teachers"])],
            "confidence": [json.dumps(stats["confidence"].to_counts())]}


def store_stats(out: str, review_below: float = 0.5) -> dict[str, Any]:
    """{"records": n, "teachers": {teacher_version: n}, "confidence": ConfidenceStats} of the output's manifest,
    by one pass over the shards (Ray tasks for many shards; each returns one small row, so the driver holds no
    records). Read from the committed shards, each record is counted exactly once, however often a write was
    retried."""
    files = parts.table_files(storage.join(out, SHARDS_DIR))
    if len(files) <= DRIVER_LIMIT:
        lines = (line for uri in files for line in storage.read_bytes(uri).decode("utf-8", "replace").splitlines())
        return _stats_of_lines((line for line in lines if line.strip()), review_below)
    ds = read_lines(files)
    total: dict[str, Any] = {"records": 0, "teachers": {}, "confidence": ConfidenceStats(review_below)}
    for row in ds.map_batches(_block_stats, fn_kwargs={"review_below": review_below}, batch_format="numpy",
                              num_cpus=READ_CPUS).iter_rows():
        total["records"] += int(row["records"])
        for key, n in json.loads(row["teachers"]).items():
            total["teachers"][key] = total["teachers"].get(key, 0) + n
        total["confidence"].merge(ConfidenceStats.from_counts(review_below, json.loads(row["confidence"])))
    return total
