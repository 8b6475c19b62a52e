"""COCO detection JSON -> a store manifest: each `bbox` [x, y, w, h] becomes a box [x0, y0, x1, y1]."""

from __future__ import annotations

from typing import Any

import numpy as np

from bpiml.data import storage
from bpiml.data.boxes import jitter_boxes, pad_boxes, sanitize_boxes
from bpiml.data.importers.placement import Placer, resolve_source
from bpiml.data.importers.summary import (
    ImportSummary,
    SkipRecord,
    apply_splits,
    check_split_options,
    read_image_size,
    read_json,
    tidy_boxes,
    unique_ids,
    write_import,
)
from bpiml.data.manifest import Record
from bpiml.data.splits import CVIP_SCENE_PATTERN

_BAD_ANNOTATION = "annotations skipped (no 4-number bbox or unknown image_id)"


def _read_coco(uri: str) -> tuple[list[dict[str, Any]], list[Any]]:
    coco = read_json(uri, "COCO detection")
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ValueError(f"{uri}: expected a COCO object with an 'images' list")
    annotations = coco.get("annotations") or []
    if not isinstance(annotations, list):
        raise ValueError(f"{uri}: 'annotations' must be a list")
    for i, img in enumerate(coco["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise ValueError(f"{uri}: images[{i}] needs 'id' and a string 'file_name', got {img!r}")
    return coco["images"], annotations


def _boxes_by_image(images: list[dict[str, Any]], annotations: list[Any], category_ids: list[int] | None,
                    summary: ImportSummary) -> dict[Any, list[list[float]]]:
    boxes: dict[Any, list[list[float]]] = {img["id"]: [] for img in images}
    wanted = None if category_ids is None else set(category_ids)
    for ann in annotations:
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if not isinstance(bbox, list) or len(bbox) != 4 or ann.get("image_id") not in boxes:
            summary.count_note(_BAD_ANNOTATION)
            continue
        if wanted is not None and ann.get("category_id") not in wanted:
            continue
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            summary.count_note(_BAD_ANNOTATION)
            continue
        boxes[ann["image_id"]].append([x, y, x + w, y + h])
    return boxes


def _coco_size(img: dict[str, Any], src: str) -> tuple[int, int]:
    w, h = img.get("width"), img.get("height")
    if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
        if not storage.exists(src):
            raise SkipRecord("image not found")
        return w, h
    return read_image_size(src)


def import_coco(coco_json_uri: str, image_root: str, out_store: str, *, pad: float = 0.0, jitter: float = 0.0,
                seed: int = 0, split: str | None = None, copy: bool = False, link: bool = False,
                split_by_scene: bool = False, val_fraction: float = 0.2, test_fraction: float = 0.0,
                scene_pattern: str = CVIP_SCENE_PATTERN, category_ids: list[int] | None = None,
                min_side: float = 1.0) -> ImportSummary:
    """COCO detection JSON -> manifest; an image without annotations is authentic.

    `file_name` is relative to `image_root`. Boxes are clipped to the image's `width`/`height` (read from
    the file when the JSON lacks them); degenerate ones are dropped and counted. `category_ids` keeps
    only those categories.
    """
    config = dict(locals())
    check_split_options(split, split_by_scene, val_fraction, test_fraction, pad, jitter)
    images, annotations = _read_coco(coco_json_uri)
    summary = ImportSummary()
    boxes_by_image = _boxes_by_image(images, annotations, category_ids, summary)
    sources = [resolve_source(image_root, img["file_name"]) for img in images]
    placer = Placer(out_store, image_root, copy, link)
    placer.check(sources)
    ids = unique_ids([img["file_name"] for img in images])
    records = []
    for i, (img, src) in enumerate(zip(images, sources)):
        raw = boxes_by_image[img["id"]]
        try:
            width, height = _coco_size(img, src)
            boxes = pad_boxes(raw, pad, width, height) if pad else raw
            if jitter:
                boxes = jitter_boxes(boxes, jitter, np.random.default_rng([seed, i]), width, height)
            clean, notes = sanitize_boxes(boxes, width, height, min_side=min_side)
            for note in notes:
                summary.count_note(note)
            if raw and not len(clean):
                raise SkipRecord(f"all {len(raw)} boxes degenerate")
        except SkipRecord as err:
            summary.skipped.append({"image": src, "reason": str(err)})
            continue
        records.append(Record(id=ids[i], image=placer.place(src, "images", ids[i]), boxes=tidy_boxes(clean),
                              extra={"coco_id": img["id"]}))
    apply_splits(records, split, split_by_scene, val_fraction, test_fraction, seed, scene_pattern, summary)
    return write_import(records, summary, out_store, config)
