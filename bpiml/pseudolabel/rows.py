"""The rows of a pseudo-labeling run, parsed once: manifest lines -> typed columns.

A manifest line is parsed once, here, into the record's fields as columns: `id`, `image`, `boxes`
(a list of [x0, y0, x1, y1]), `mask` and `split` ("" for none), `extra` (the record's other keys,
as JSON), its fingerprints and the teacher identity. The output's done records (`plan.done_rows`) get
the same columns, so that both meet in one dataset (`kind` says which a row is). A line that is no
valid record keeps its `reason` and goes no further than the plan, which writes it to the rejects
(`bpiml.pseudolabel.plan`). After the plan only rows to label flow; each stage sends the rows it
rejects to the rejects table at once (`RejectsOut`), and the output record is built once, after
the mask is written (`stages.write_masks`). This module stays light (no torch, no teachers): the
planning and sink tasks import it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from bpiml.data import parts, rejects, storage
from bpiml.data.manifest import parse_record
from bpiml.data.rejects import REJECTS_DIR
from bpiml.pseudolabel.store import RECORD_VERSION
from bpiml.runtime.counter import add_counts

# The columns of a row between the manifest and the plan (input and done rows alike), typed: Ray Data
# shuffles them by id as Arrow columns, never as JSON.
PLAN_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()),  # kind: "in" (a manifest line) or "done" (an output record)
    ("image", pa.string()), ("boxes", pa.list_(pa.list_(pa.float64()))), ("mask", pa.string()),
    ("split", pa.string()), ("extra", pa.string()),  # the input record; extra: its other keys, JSON
    ("fingerprint", pa.string()), ("mask_fp", pa.string()), ("teacher_identity", pa.string()),
    ("part", pa.string()), ("pseudo_mask", pa.string()),  # a done row's file and mask
    ("reason", pa.string()),  # an input line that is no valid record: why ("" otherwise)
])
# The columns of a row being labeled, from the decode stage to the write stage (besides the per-row arrays
# that pass between the stages: `pixels` and `prompts` into the teacher, `mask_out` out of it).
LABEL_COLUMNS = ("id", "image", "boxes", "mask", "split", "extra", "fingerprint", "mask_fp", "teacher_identity", "notes")
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


def plan_row(**values: Any) -> dict[str, Any]:
    """A row of `PLAN_SCHEMA`: the given values, "" (no boxes) for the others, an input row by default."""
    row: dict[str, Any] = {name: "" for name in PLAN_SCHEMA.names}
    row.update(kind="in", boxes=[])
    row.update(values)
    return row


def table(rows: list[dict[str, Any]], schema: pa.Schema = PLAN_SCHEMA) -> pa.Table:
    """Rows -> an Arrow table of `schema` (one schema everywhere, even for no rows)."""
    return pa.Table.from_pylist(rows, schema=schema)


def record_of(row: dict[str, Any]) -> dict[str, Any]:
    """The input record of a row (the record's fields as the manifest holds them)."""
    record = {"id": row["id"], "image": row["image"], "boxes": [[float(v) for v in box] for box in row["boxes"]],
              "mask": row["mask"] or None, "split": row["split"] or None}
    record.update(json.loads(row["extra"]) if row["extra"] else {})
    return record


# --- stage 0: manifest lines -> rows -------------------------------------------------------------
def parse_line_row(text: str, identity: str, where: str = "") -> dict[str, Any]:
    """One manifest line (at `where`, `file:line`) -> a row to plan; a line that is not a valid record
    becomes a row with its `reason`, keyed by its id or, without one, by `where`."""
    parsed, rid, err = parse_record(text)
    if parsed is None:
        key = rid or BAD_LINE_PREFIX + (where or hashlib.sha256(text.encode()).hexdigest()[:24])
        return plan_row(id=key, image=_image_of_bad_line(text), reason=f"{where + ': ' if where else ''}bad record: {err}")
    record = parsed.to_dict()
    fingerprint, mask_fp = fingerprints(record, identity)
    return plan_row(id=parsed.id, image=parsed.image, boxes=record["boxes"], mask=parsed.mask or "",
                    split=parsed.split or "", extra=json.dumps(parsed.extra, ensure_ascii=False) if parsed.extra else "",
                    fingerprint=fingerprint, mask_fp=mask_fp, teacher_identity=identity)


def _image_of_bad_line(text: str) -> str:
    """What a reject row names as the image of a line that is no valid record: its `image`, or the line."""
    try:
        value = json.loads(text[:500])
    except json.JSONDecodeError:
        return text[:200]
    return str(value.get("image") or "") if isinstance(value, dict) else text[:200]


def parse_lines(batch: dict[str, Any], identity: str) -> pa.Table:
    """Manifest lines -> rows; `line` and `path` columns, where present, name each line's place."""
    n = len(batch["text"])
    paths, numbers = batch.get("path", [""] * n), batch.get("line", [None] * n)
    return table([parse_line_row(str(text), identity, f"{path}:{number}" if number is not None else "")
                  for text, path, number in zip(batch["text"], paths, numbers)])


# --- the side stream: rejects, written by the stage that rejects them ------------------------------
class RejectsOut:
    """Where a stage sends the rows it rejects: a part of `<out>/rejects/` for run `run_id`, named by its
    content (a retried task rewrites the same file), its counts once to `counter` (keyed by that part)."""

    def __init__(self, out: str, run_id: str, counter: Any = None) -> None:
        self.out, self.run_id, self.counter = out, run_id, counter

    def write(self, rows: list[rejects.Reject]) -> None:
        if not rows:
            return
        uri = parts.write_part(storage.join(self.out, REJECTS_DIR), self.run_id, [r.to_dict() for r in rows])
        counts: dict[str, float] = {"rejected": float(len(rows))}
        for r in rows:
            counts[f"rejected:{r.stage}"] = counts.get(f"rejected:{r.stage}", 0) + 1
        add_counts(self.counter, counts, uri)


def reject(row: dict[str, Any], stage: str, reason: str) -> rejects.Reject:
    """The reject row of an input row (a line with no usable id names none)."""
    rid = "" if str(row["id"]).startswith(BAD_LINE_PREFIX) else str(row["id"])
    return rejects.Reject(rid, str(row["image"]) or None, stage, reason)
