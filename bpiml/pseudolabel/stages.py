"""The CPU stages around the teacher: decode before it, write after it (Ray Data tasks).

    parse_lines    manifest lines -> typed rows (`bpiml.pseudolabel.rows`)
    decode_rows    image bytes -> RGB arrays (`pixels`), boxes cleaned and clipped (`prompts`)
    TeacherLabeler the teacher actors (`bpiml.pseudolabel.labeler`)
    write_masks    masks -> PNG files in the output store, IoU against GT, the output record (`line`)

Each step is a plain function of a batch dict, so it can be called by hand; one bad image costs its
own reject row, which the stage sends to the rejects table at once (`rows.RejectsOut`): the rows it
hands on are only the ones still being labeled, never its batch or the job.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bpiml.data import parts, storage
from bpiml.data.boxes import sanitize_boxes
from bpiml.data.imageio import DecodeError, decode_image, decode_mask, encode_mask_png
from bpiml.data.metrics import pixel_iou
from bpiml.data.retry import StorageUnavailable
from bpiml.pseudolabel.rows import (
    LABEL_COLUMNS,
    RejectsOut,
    parse_lines,
    record_of,
    reject,
)
from bpiml.pseudolabel.store import mask_path

__all__ = ["columns", "decode_rows", "parse_lines", "write_masks"]



ARRAYS = ("boxes", "pixels", "prompts", "mask_out")  # per-row ndarrays (their shapes differ between rows)


def _rows(batch: Any) -> list[dict[str, Any]]:
    """A batch (an Arrow table, or a dict of columns) -> its rows as dicts of plain values."""
    if hasattr(batch, "to_pylist"):
        return batch.to_pylist()
    n = len(batch["id"])
    return [{name: (v.item() if isinstance(v := batch[name][i], np.generic) else v) for name in batch}
            for i in range(n)]


def columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any]:
    """Rows -> the columns `names`: per-row arrays as lists, floats as float64, the rest as strings (strings
    even with no rows: one schema everywhere)."""
    out: dict[str, Any] = {}
    for name in names:
        values = [r[name] for r in rows]
        if name in ARRAYS:
            out[name] = values
        elif name == "iou_gt":
            out[name] = np.asarray(values, dtype=np.float64)
        else:
            out[name] = np.asarray([str(v) for v in values], dtype=str if values else "<U1")
    return out


# --- stage 1: decode (CPU tasks) -----------------------------------------------------------------
def _decode_one(row: dict[str, Any], store: str, max_boxes: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(image, clean boxes, notes) of a row to label; ValueError & co. for a bad one."""
    boxes = row["boxes"]
    if len(boxes) > max_boxes:
        raise ValueError(f"{len(boxes)} boxes > max_boxes {max_boxes}")
    if len(boxes) and row["extra"] and json.loads(row["extra"]).get("authentic") is True:
        raise ValueError(f"record is marked authentic but has {len(boxes)} box(es)")
    uri = storage.resolve_in_store(store, row["image"])
    image, notes = decode_image(storage.read_bytes(uri), row["image"])
    clean, box_notes = sanitize_boxes([list(b) for b in boxes], image.shape[1], image.shape[0])
    if len(boxes) and len(clean) == 0:
        raise ValueError("every box is degenerate or outside the image")
    return image, np.asarray(clean, np.float32).reshape(-1, 4), notes + box_notes


def _decode_reason(err: Exception) -> str:
    if isinstance(err, FileNotFoundError):
        return f"image missing: {err}"
    if isinstance(err, DecodeError):
        return f"image unreadable: {err}"
    if isinstance(err, (ValueError, TypeError, KeyError)):
        return f"bad record: {err}"
    return f"image unreadable: {type(err).__name__}: {err}"


def decode_rows(batch: Any, store: str, out: str, run_id: str, counter: Any = None,
                max_boxes: int = 64) -> dict[str, Any]:
    """Rows to label -> decoded images (`pixels`) and clean boxes (`prompts`); the bad ones go to the
    rejects (stage decode) and no further."""
    kept, bad = [], []
    for row in _rows(batch):
        try:
            image, clean, notes = _decode_one(row, store, max_boxes)
        except StorageUnavailable:
            raise  # the store is down, not the image bad: the job fails naming it (reruns resume)
        except (OSError, ValueError, TypeError, KeyError, DecodeError) as err:
            bad.append(reject(row, "decode", _decode_reason(err)))
            continue
        kept.append({**row, "boxes": np.asarray(row["boxes"], np.float64).reshape(-1, 4), "pixels": image,
                     "prompts": clean, "notes": json.dumps(notes)})
    RejectsOut(out, run_id, counter).write(bad)
    return columns(kept, (*LABEL_COLUMNS, "pixels", "prompts"))


# --- stage 3: write masks, compare with ground truth (CPU tasks) -----------------------------------
def _iou_against_gt(store: str, row: dict[str, Any], mask: np.ndarray, notes: list[str]) -> float | None:
    if not row["mask"]:
        return None
    try:
        gt = decode_mask(storage.read_bytes(storage.resolve_in_store(store, row["mask"])), row["mask"])
    except (FileNotFoundError, DecodeError, ValueError) as err:
        notes.append(f"ground-truth mask unreadable: {err}")
        return None
    if gt.shape != mask.shape:
        notes.append(f"ground-truth mask size {gt.shape} differs from image {mask.shape}: IoU skipped")
        return None
    if len(row["boxes"]) and not gt.any():
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
    record = record_of(row)
    height, width = int(mask.shape[0]), int(mask.shape[1])
    fields = per_record_box(teacher_fields or {"confidence": None, "box_confidence": None},
                            record["boxes"], width, height)
    record.update(pseudo_mask=mask_path(row["id"], row["mask_fp"]), teacher=teacher_version.split("-", 1)[0],
                  teacher_version=teacher_version, teacher_identity=row["teacher_identity"],
                  fingerprint=row["fingerprint"], mask_area=float(mask.mean()), iou_gt=iou,
                  height=height, width=width, notes=notes, **fields)
    return record


# The columns the sink gets: the output record once built and encoded (`line`), and what it counts.
OUT_COLUMNS = ("id", "image", "line", "teacher_version", "iou_gt", "notes")


def write_masks(batch: dict[str, Any], store: str, out: str, run_id: str, counter: Any = None) -> dict[str, Any]:
    """Encode and write each mask as PNG, score it against the GT mask, build the output record once (its
    JSON line in `line`); a mask that cannot be written goes to the rejects (stage write)."""
    rows = _rows(batch)
    done, bad = [], []
    with ThreadPoolExecutor(max_workers=8) as pool:  # object-store writes are latency-bound
        futures = []
        for row in rows:
            mask = np.asarray(row["mask_out"]).astype(bool)
            uri = storage.join(out, mask_path(row["id"], row["mask_fp"]))
            futures.append((row, mask, pool.submit(storage.write_bytes, uri, encode_mask_png(mask))))
        for row, mask, future in futures:
            try:
                future.result()
            except StorageUnavailable:
                raise
            except OSError as err:
                bad.append(reject(row, "write", f"mask write failed: {err}"))
                continue
            notes = json.loads(row["notes"])
            iou = _iou_against_gt(store, row, mask, notes)
            record = output_record(row, mask, str(row["teacher_version"]), iou, notes,
                                   json.loads(row["teacher_fields"]))
            done.append({"id": row["id"], "image": row["image"], "line": parts.encode_rows([record])[0],
                         "teacher_version": str(row["teacher_version"]), "iou_gt": np.nan if iou is None else iou,
                         "notes": json.dumps(notes)})
    RejectsOut(out, run_id, counter).write(bad)
    return columns(done, OUT_COLUMNS)
