"""Human review decisions on a pseudo store: where they live, which one holds, how a record changes.

    <out>/review/store.json                 {"store_id": ...}: the identity every exported task carries
    <out>/review/decisions/<stem>.<h>.json  one decision (content-named: the same decision is the same file)
    <out>/review/masks/<stem>.<h>.png       corrected masks, 0/255 at the image's size (content-named)
    <out>/review/imports/<h>.json           what one import of an export file (hash <h>) wrote, and its rejects

A decision is {"id", "status", "by", "at", "source", "annotation", "fingerprint", "reviewed_mask"}:
`status` is accepted | corrected | rejected | undone; `at` is a UTC ISO time. Decisions are only
ever added: the latest one per record (by `at`, then file name) holds, so importing an export twice,
or half of it and then all of it, gives the same result, and `undone` (`bpiml review undo`) returns a
record to its pseudo mask. Applied to a record (`apply`): `review` = {status, by, at, source}, and for a
corrected one `reviewed_mask`; `pseudo_mask` always keeps the teacher's mask.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any

from bpiml.data import naming, storage

REVIEW_DIR = "review"
DECISIONS_DIR = f"{REVIEW_DIR}/decisions"
MASKS_DIR = f"{REVIEW_DIR}/masks"
IMPORTS_DIR = f"{REVIEW_DIR}/imports"
STORE_FILE = f"{REVIEW_DIR}/store.json"
STATUSES = ("accepted", "corrected", "rejected", "undone")
DECISION_KEYS = ("id", "status", "by", "at", "source", "annotation", "fingerprint", "reviewed_mask")


def utc_iso(value: str | None = None) -> str:
    """An ISO time (Label Studio's `2026-12-05T10:00:00.123456Z`, or now) as UTC `YYYY-mm-ddTHH:MM:SS.ffffff+00:00`."""
    moment = dt.datetime.now(dt.UTC) if value is None else dt.datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def store_id(root: str, create: bool = False) -> str | None:
    """The store's review identity (made on the first export when `create`); None when it has none yet."""
    uri = storage.join(root, STORE_FILE)
    if storage.exists(uri):
        return str(json.loads(storage.read_bytes(uri))["store_id"])
    if not create:
        return None
    sid = uuid.uuid4().hex
    storage.write_json(uri, {"store_id": sid}, indent=None)
    return sid


def reviewed_mask_path(record_id: str, png: bytes) -> str:
    """Where a corrected mask lives, relative to the pseudo store (named by its content)."""
    return f"{MASKS_DIR}/{naming.file_stem(record_id)}.{hashlib.sha256(png).hexdigest()[:12]}.png"


def check_decision(decision: dict[str, Any], where: str) -> dict[str, Any]:
    """The decision with exactly DECISION_KEYS; ValueError naming `where` and the bad key."""
    unknown = set(decision) - set(DECISION_KEYS)
    if unknown or not isinstance(decision.get("id"), str) or not decision["id"]:
        raise ValueError(f"{where}: a decision needs a string id and only the keys {list(DECISION_KEYS)}, "
                         f"got {sorted(decision)}")
    if decision.get("status") not in STATUSES:
        raise ValueError(f"{where}: status must be one of {list(STATUSES)}, got {decision.get('status')!r}")
    if (decision["status"] == "corrected") != bool(decision.get("reviewed_mask")):
        raise ValueError(f"{where}: a corrected decision, and only one, names its reviewed_mask")
    return {k: decision.get(k) for k in DECISION_KEYS}


def decision_path(decision: dict[str, Any]) -> str:
    """Where a decision lives, relative to the store: named by the record and the decision's content."""
    text = json.dumps(decision, sort_keys=True)
    return f"{DECISIONS_DIR}/{naming.file_stem(decision['id'])}.{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"


def write_decision(root: str, decision: dict[str, Any]) -> str:
    """Write one decision (idempotent: the same decision rewrites the same file); returns its store path."""
    decision = check_decision(decision, "decision")
    path = decision_path(decision)
    storage.write_json(storage.join(root, path), decision, indent=None, sort_keys=True)
    return path


def latest_decisions(root: str) -> dict[str, dict[str, Any]]:
    """Record id -> the decision that holds (the latest; `undone` ones are dropped). Read on the driver:
    one small file per human decision."""
    folder = storage.join(root, DECISIONS_DIR)
    if not storage.exists(folder):
        return {}
    latest: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for uri in storage.list_files(folder, ".json"):
        try:
            decision = check_decision(json.loads(storage.read_bytes(uri)), uri)
        except (ValueError, TypeError) as err:
            raise ValueError(f"review decision {uri} is unreadable ({err}); remove the file to drop it") from err
        key = (utc_iso(decision["at"]), uri)
        held = latest.get(decision["id"])
        if held is None or key > held[:2]:
            latest[decision["id"]] = (*key, decision)
    return {rid: d for rid, (_, _, d) in latest.items() if d["status"] != "undone"}


def apply(record: dict[str, Any], decision: dict[str, Any] | None) -> dict[str, Any]:
    """The record as training sees it after `decision` (None: unchanged)."""
    if decision is None:
        return record
    out = {**record, "review": {k: decision[k] for k in ("status", "by", "at", "source")}}
    if decision["status"] == "corrected":
        out["reviewed_mask"] = decision["reviewed_mask"]
    return out


def training_mask(record: dict[str, Any]) -> str | None:
    """The mask a reviewed record trains on: the corrected one, else the teacher's (store-relative)."""
    return record.get("reviewed_mask") or record.get("pseudo_mask")
