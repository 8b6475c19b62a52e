"""`bpiml review import`: a Label Studio JSON export -> review decisions in the pseudo store.

Each annotation of a task (skipped ones aside) is one decision, by its `completed_by` and at its
`updated_at`: the choice `reject` rejects the image; brush regions (`mask`, unioned) that differ
from the pseudo mask correct it; the same mask, or `accept` without a brush region, accepts it.
Everything is checked before anything is written: an export of another store is an error; an unknown
id, a record relabeled since the export, a mask of another size, an RLE that does not decode or an
annotation with neither a choice nor a mask is a reject row, and rejects stop the import (store
unchanged) unless --keep-going writes the rest. An export imported before (by its SHA-256) changes
nothing; decisions are content-named, so a repeated or half-done import never doubles one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from typing import Any

import numpy as np

from bpiml.data import imageio, storage
from bpiml.data.rejects import Reject
from bpiml.pseudolabel import reviews
from bpiml.pseudolabel.store import PseudoStore
from bpiml.review import records as review_records
from bpiml.review import rle
from bpiml.review.export import ACCEPT, REJECT

logger = logging.getLogger(__name__)


def read_export(path: str) -> tuple[list[dict[str, Any]], str]:
    """(tasks, SHA-256 of the file); ValueError naming the file when it is not a Label Studio JSON export."""
    data = storage.read_bytes(path)
    try:
        tasks = json.loads(data)
    except ValueError as err:
        raise ValueError(f"{path}: not JSON ({err}); export the project from Label Studio as JSON") from err
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
        raise ValueError(f"{path}: expected Label Studio's JSON export, a list of tasks with 'data'")
    return tasks, hashlib.sha256(data).hexdigest()


def _who(annotation: dict[str, Any]) -> str:
    user = annotation.get("completed_by")
    if isinstance(user, dict):
        return str(user.get("email") or user.get("username") or user.get("id"))
    return str(annotation.get("created_username") or f"label-studio user {user}")


def _mask(results: list[dict[str, Any]], width: int, height: int) -> np.ndarray | None:
    """The union of the brush regions (None: none); ValueError for a wrong size or a bad RLE."""
    brushes = [r for r in results if r.get("type") == "brushlabels"]
    if not brushes:
        return None
    mask = np.zeros((height, width), bool)
    for r in brushes:
        size = (r.get("original_width"), r.get("original_height"))
        if size != (width, height):
            raise ValueError(f"brush region {r.get('id')} is {size[0]}x{size[1]}, the image is {width}x{height}")
        mask |= rle.decode((r.get("value") or {}).get("rle"), width, height)
    return mask


def decide(annotation: dict[str, Any], pseudo: np.ndarray) -> tuple[str, np.ndarray | None]:
    """(status, corrected mask or None) of one annotation; ValueError when it says nothing."""
    results = [r for r in annotation.get("result") or [] if isinstance(r, dict)]
    choices = {c for r in results if r.get("type") == "choices" for c in (r.get("value") or {}).get("choices", [])}
    if REJECT in choices:
        return "rejected", None
    mask = _mask(results, pseudo.shape[1], pseudo.shape[0])
    if mask is not None:
        return ("accepted", None) if np.array_equal(mask, pseudo) else ("corrected", mask)
    if ACCEPT in choices:
        return "accepted", None
    raise ValueError(f"annotation {annotation.get('id')} has neither a decision ({ACCEPT}/{REJECT}) nor a mask")


def _task_decisions(opened: PseudoStore, task: dict[str, Any], by_id: dict[str, dict[str, Any]],
                    source: str) -> tuple[list[tuple[dict[str, Any], bytes | None]], list[Reject]]:
    rid = str(task["data"].get("bpiml_id"))
    record = by_id.get(rid)
    if record is None:
        return [], [Reject(rid, None, "review", f"task {task.get('id')}: no record {rid!r} in {opened.root}")]
    image = str(record["image"])
    if task["data"].get("bpiml_fingerprint") != record.get("fingerprint"):
        return [], [Reject(rid, image, "review", f"task {task.get('id')}: the record was pseudo-labeled again since "
                                                 "the export (fingerprint changed); export it again")]
    out, rejected = [], []
    pseudo = review_records.pseudo_mask(opened, record)
    for annotation in task.get("annotations") or []:
        if annotation.get("was_cancelled"):
            continue
        try:
            status, mask = decide(annotation, pseudo)
        except ValueError as err:
            rejected.append(Reject(rid, image, "review", f"task {task.get('id')}: {err}"))
            continue
        png = imageio.encode_mask_png(mask) if mask is not None else None
        out.append(({"id": rid, "status": status, "by": _who(annotation),
                     "at": reviews.utc_iso(annotation.get("updated_at") or annotation.get("created_at")),
                     "source": source, "annotation": annotation.get("id"), "fingerprint": record.get("fingerprint"),
                     "reviewed_mask": reviews.reviewed_mask_path(rid, png) if png else None}, png))
    return out, rejected


def plan_import(store: str, path: str) -> tuple[PseudoStore, str, list[tuple[dict[str, Any], bytes | None]], list[Reject]]:
    """Check the whole export against the store, writing nothing: (store, export hash, decisions, rejects)."""
    tasks, digest = read_export(path)
    opened, records = review_records.load(store)
    sid = reviews.store_id(opened.root)
    stores = {str(t["data"].get("bpiml_store")) for t in tasks}
    if sid is None or stores - {sid}:
        raise ValueError(f"{path} holds tasks of store id(s) {sorted(stores)}, but {opened.root} is "
                         f"{sid or 'a store never exported for review'}: import an export of this store's tasks")
    by_id = {str(r["id"]): r for r in records}
    source = f"{os.path.basename(path)}#{digest[:12]}"
    decisions, rejected = [], []
    for task in tasks:
        made, bad = _task_decisions(opened, task, by_id, source)
        decisions += made
        rejected += bad
    return opened, digest, decisions, rejected


def import_export(store: str, path: str, keep_going: bool = False) -> dict[str, Any]:
    """Record the export's decisions in the store; returns the import's log (also review/imports/<hash>.json)."""
    opened, digest, decisions, rejected = plan_import(store, path)
    log_uri = storage.join(opened.root, reviews.IMPORTS_DIR, f"{digest[:16]}.json")
    if storage.exists(log_uri):
        logger.info("%s was imported before (%s): nothing to do", path, log_uri)
        return {**json.loads(storage.read_bytes(log_uri)), "already_imported": True}
    if rejected and not keep_going:
        lines = "\n".join(f"  {r.id}: {r.reason}" for r in rejected[:20])
        raise ValueError(f"{path}: {len(rejected)} task(s) cannot be imported (nothing was written; fix them, or "
                         f"pass --keep-going to import the other {len(decisions)} decision(s)):\n{lines}")
    for decision, png in decisions:
        if png is not None:
            storage.write_bytes(storage.join(opened.root, decision["reviewed_mask"]), png)
    written = [reviews.write_decision(opened.root, d) for d, _ in decisions]
    counts = {s: sum(d["status"] == s for d, _ in decisions) for s in ("accepted", "corrected", "rejected")}
    log = {"export": os.path.basename(path), "sha256": digest, "at": reviews.utc_iso(), "decisions": written,
           "counts": counts, "rejects": [r.to_dict() for r in rejected]}
    storage.write_json(log_uri, log)
    return {**log, "already_imported": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="pseudo-labeled store the tasks were exported from")
    parser.add_argument("--from", dest="source", required=True, help="Label Studio JSON export (a file)")
    parser.add_argument("--keep-going", action="store_true", help="import the good decisions even when some tasks "
                                                                   "are rejects (listed in review/imports/<hash>.json)")


def run(args: argparse.Namespace) -> int:
    log = import_export(args.store, args.source, args.keep_going)
    if log["already_imported"]:
        print(f"{args.source} was imported before ({log['at']}): the store is unchanged")
        return 0
    print(f"imported {len(log['decisions'])} decision(s) {log['counts']} from {args.source}; "
          f"{len(log['rejects'])} reject(s)")
    for row in log["rejects"]:
        print(f"  reject {row['id']}: {row['reason']}")
    return 0
