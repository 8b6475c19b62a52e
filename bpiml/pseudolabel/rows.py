"""The rows that flow through a pseudo-labeling run, and the first step: manifest lines -> rows.

Every row carries `status` (`label` to do, `ok` done, `rejected`, `superseded`), `stage` and
`reason` next to the record (`line`, its JSON) and its fingerprints. Stages only work on the rows
meant for them and pass the others through. This module stays light (no torch, no teachers): the
planning and sink tasks import it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from bpiml.data.manifest import parse_record
from bpiml.pseudolabel.store import RECORD_VERSION

# Columns every row has between the plan and the sink (Ray Data batches need one schema).
ROW_COLUMNS = ("id", "kind", "line", "fingerprint", "mask_fp", "status", "stage", "reason", "notes", "part",
               "pseudo_mask", "teacher_identity", "delete_mask")
# The plan key of a line that is no valid record: unique per file and line. A control character (not
# NUL, which Arrow strings drop) keeps it apart from real ids; the reject row names `file:line`.
BAD_LINE_PREFIX = "\x01bad line "


def fingerprints(record: dict[str, Any], identity: str) -> tuple[str, str]:
    """(record fingerprint, mask fingerprint): what produced the output record, and its mask.

    The record fingerprint covers the teacher, the output record's fields (`RECORD_VERSION`) and the
    whole input record (an edited split is written again); the mask fingerprint only what the mask
    depends on: teacher, image and boxes.
    """
    canonical = json.dumps(record, sort_keys=True, ensure_ascii=False)
    mask_inputs = json.dumps([identity, record["image"], record["boxes"]], sort_keys=True)
    return (hashlib.sha256(f"{identity}\nrecord-v{RECORD_VERSION}\n{canonical}".encode()).hexdigest()[:32],
            hashlib.sha256(mask_inputs.encode()).hexdigest()[:32])


def empty_row(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c: "" for c in ROW_COLUMNS}
    row.update(kind="in", notes="[]", delete_mask=False)
    row.update(values)
    return row


def columns(rows: list[dict[str, Any]], names: tuple[str, ...] = ROW_COLUMNS) -> dict[str, np.ndarray]:
    """Rows -> typed column arrays (strings stay strings even for an empty batch: one schema everywhere)."""
    return {name: np.asarray([bool(r[name]) for r in rows], dtype=bool) if name == "delete_mask"
            else np.asarray([str(r[name]) for r in rows], dtype=str if rows else "<U1") for name in names}


def rows_of(batch: dict[str, Any], names: tuple[str, ...] = ROW_COLUMNS) -> list[dict[str, Any]]:
    n = len(batch["id"])
    return [{name: plain(batch[name][i]) for name in names} for i in range(n)]


def plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# --- stage 0: manifest lines -> rows -------------------------------------------------------------
def parse_line_row(text: str, identity: str, where: str = "") -> dict[str, Any]:
    """One manifest line (at `where`, `file:line`) -> a row to plan; a line that is not a valid record
    becomes a reject row of its own, keyed by its id or, without one, by `where`."""
    parsed, rid, err = parse_record(text)
    if parsed is None:
        key = rid or BAD_LINE_PREFIX + (where or hashlib.sha256(text.encode()).hexdigest()[:24])
        return empty_row(id=key, status="rejected", stage="manifest", line=text[:500],
                         reason=f"{where + ': ' if where else ''}bad record: {err}")
    record = parsed.to_dict()
    fingerprint, mask_fp = fingerprints(record, identity)
    return empty_row(id=record["id"], line=json.dumps(record, ensure_ascii=False), fingerprint=fingerprint,
                     mask_fp=mask_fp, status="label", teacher_identity=identity)


def parse_lines(batch: dict[str, Any], identity: str) -> dict[str, list[Any]]:
    """Manifest lines -> rows; `line` and `path` columns, where present, name each line's place."""
    n = len(batch["text"])
    paths, numbers = batch.get("path", [""] * n), batch.get("line", [None] * n)
    return columns([parse_line_row(str(text), identity, f"{path}:{number}" if number is not None else "")
                    for text, path, number in zip(batch["text"], paths, numbers)])
