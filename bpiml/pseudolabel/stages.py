"""The CPU stages around the teacher: decode before it, write after it (Ray Data tasks).

    parse_lines    manifest lines -> rows (`bpiml.pseudolabel.rows`)
    decode_rows    image bytes -> RGB arrays, boxes cleaned and clipped
    TeacherLabeler the teacher actors (`bpiml.pseudolabel.labeler`)
    write_masks    masks -> PNG files in the output store, IoU against GT, the output records

Each step is a plain function of a batch dict, so it can be called by hand; one bad image costs its
own row (a reject with its stage and reason), never its batch or the job.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bpiml.data import storage
from bpiml.data.retry import StorageUnavailable
from bpiml.data.boxes import sanitize_boxes
from bpiml.data.imageio import DecodeError, decode_image, decode_mask, encode_mask_png
from bpiml.data.manifest import Record
from bpiml.evaluation.metrics import pixel_iou
from bpiml.pseudolabel.rows import columns, parse_lines, rows_of
from bpiml.pseudolabel.store import mask_path

__all__ = ["decode_rows", "parse_lines", "write_masks"]


# --- stage 1: decode (CPU tasks) -----------------------------------------------------------------
def _decode_one(row: dict[str, Any], store: str, max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, clean boxes) of a row to label; updates the row's status/notes on failure or fixes."""
    record = Record.from_dict(json.loads(row["line"]))
    if len(record.boxes) > max_boxes:
        raise ValueError(f"{len(record.boxes)} boxes > max_boxes {max_boxes}")
    if record.boxes and record.extra.get("authentic") is True:
        raise ValueError(f"record is marked authentic but has {len(record.boxes)} box(es)")
    uri = storage.resolve_in_store(store, record.image)
    image, notes = decode_image(storage.read_bytes(uri), record.image)
    boxes, box_notes = sanitize_boxes(record.boxes, image.shape[1], image.shape[0])
    if record.boxes and len(boxes) == 0:
        raise ValueError("every box is degenerate or outside the image")
    row["notes"] = json.dumps(notes + box_notes)
    return image, boxes


def decode_rows(batch: dict[str, Any], store: str, max_boxes: int = 64) -> dict[str, list[Any]]:
    """Rows to label -> decoded images and clean boxes; bad ones become rejects (stage decode)."""
    rows = rows_of(batch)
    images, boxes = [], []
    for row in rows:
        image, clean = np.zeros((1, 1, 3), np.uint8), np.zeros((0, 4), np.float32)
        if row["status"] == "label":
            try:
                image, clean = _decode_one(row, store, max_boxes)
                row["status"] = "ok"
            except StorageUnavailable:
                raise  # the store is down, not the image bad: the job fails naming it (reruns resume)
            except FileNotFoundError as err:
                row.update(status="rejected", stage="decode", reason=f"image missing: {err}")
            except DecodeError as err:
                row.update(status="rejected", stage="decode", reason=f"image unreadable: {err}")
            except (ValueError, TypeError, KeyError) as err:
                row.update(status="rejected", stage="decode", reason=f"bad record: {err}")
            except OSError as err:
                row.update(status="rejected", stage="decode", reason=f"image unreadable: {type(err).__name__}: {err}")
        images.append(image)
        boxes.append(np.asarray(clean, np.float32).reshape(-1, 4))
    return {**columns(rows), "image": images, "boxes": boxes}


# --- stage 3: write masks, compare with ground truth (CPU tasks) -----------------------------------
def _iou_against_gt(store: str, record: Record, mask: np.ndarray, notes: list[str]) -> float | None:
    if record.mask is None:
        return None
    try:
        gt = decode_mask(storage.read_bytes(storage.resolve_in_store(store, record.mask)), record.mask)
    except (FileNotFoundError, DecodeError, ValueError) as err:
        notes.append(f"ground-truth mask unreadable: {err}")
        return None
    if gt.shape != mask.shape:
        notes.append(f"ground-truth mask size {gt.shape} differs from image {mask.shape}: IoU skipped")
        return None
    if record.boxes and not gt.any():
        notes.append("boxes on an image whose ground-truth mask is empty")
    return pixel_iou(mask, gt)


def per_record_box(fields: dict[str, Any], boxes: list[Any], width: int, height: int) -> dict[str, Any]:
    """The teacher's per-box lists (one per box it was given: the boxes `sanitize_boxes` kept) -> one entry per
    box of the record, in its order, None for a box that was dropped (degenerate, malformed)."""
    kept = [i for i, box in enumerate(boxes) if len(sanitize_boxes([box], width, height)[0])]
    if len(kept) == len(boxes):
        return fields
    out = dict(fields)
    for key, values in fields.items():
        if isinstance(values, list) and len(values) == len(kept):
            expanded: list[Any] = [None] * len(boxes)
            for i, value in zip(kept, values):
                expanded[i] = value
            out[key] = expanded
    return out


def output_record(row: dict[str, Any], mask: np.ndarray, teacher_version: str, iou: float | None,
                  notes: list[str], teacher_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The output record: the input record + the pseudo mask, teacher, confidence (`teacher_fields`) and checks."""
    record = json.loads(row["line"])
    height, width = int(mask.shape[0]), int(mask.shape[1])
    fields = per_record_box(teacher_fields or {"confidence": None, "box_confidence": None},
                            record.get("boxes") or [], width, height)
    record.update(pseudo_mask=mask_path(row["id"], row["mask_fp"]), teacher=teacher_version.split("-", 1)[0],
                  teacher_version=teacher_version, teacher_identity=row["teacher_identity"],
                  fingerprint=row["fingerprint"], mask_area=float(mask.mean()), iou_gt=iou,
                  height=height, width=width, notes=notes, **fields)
    return record


def write_masks(batch: dict[str, Any], store: str, out: str) -> dict[str, list[Any]]:
    """Encode and write each mask as PNG, score it against the GT mask, put the output record in `line`."""
    rows = rows_of(batch)
    futures = {}
    with ThreadPoolExecutor(max_workers=8) as pool:  # object-store writes are latency-bound
        for i, row in enumerate(rows):
            if row["status"] == "ok":
                mask = np.asarray(batch["mask"][i]).astype(bool)
                uri = storage.join(out, mask_path(row["id"], row["mask_fp"]))
                futures[i] = (mask, pool.submit(storage.write_bytes, uri, encode_mask_png(mask)))
        for i, (mask, future) in futures.items():
            row = rows[i]
            try:
                future.result()
            except StorageUnavailable:
                raise
            except OSError as err:
                row.update(status="rejected", stage="write", reason=f"mask write failed: {err}")
                continue
            notes = json.loads(row["notes"])
            iou = _iou_against_gt(store, Record.from_dict(json.loads(row["line"])), mask, notes)
            fields = json.loads(str(batch["teacher_fields"][i])) if "teacher_fields" in batch else None
            record = output_record(row, mask, str(batch["teacher_version"][i]), iou, notes, fields)
            row.update(line=json.dumps(record, ensure_ascii=False), notes=json.dumps(notes))
    return columns(rows)
