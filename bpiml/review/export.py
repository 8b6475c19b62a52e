"""`bpiml review export`: the least confident pseudo masks as Label Studio tasks.

    <out>/config.xml   the labeling config: Image, RectangleLabels `box` (the boxes), BrushLabels `mask`
                       (the pseudo mask, to correct), Choices `decision` (accept | reject)
    <out>/tasks.json   one task per record, least confident first: data.image (an URL Label Studio can
                       read), data.bpiml_store / bpiml_id / bpiml_fingerprint (checked on import), and
                       one prediction (score = the record's confidence) with the boxes and the mask
    <out>/export.json  what was exported: store, store id, selection, count

Images: a local store's files go through Label Studio's local-files serving
(`/data/local-files/?d=<path below --document-root>`; start Label Studio with
LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<document root>,
and add a local storage of the images' folder to the project). An s3:// store's images are written as
s3:// URIs (`--s3-urls s3`, resolved by the project's S3 source storage) or presigned HTTPS URLs
(`--s3-urls presign`, valid for --presign-hours).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any
from urllib.parse import quote

from bpiml.data import storage
from bpiml.pseudolabel import reviews
from bpiml.pseudolabel.store import PseudoStore
from bpiml.review import records as review_records
from bpiml.review import rle

logger = logging.getLogger(__name__)

LABEL = "manipulated"
ACCEPT, REJECT = "accept", "reject"
LABEL_CONFIG = f"""<View>
  <Header value="Correct the mask, then accept; or reject the image (it is left out of training)"/>
  <Image name="image" value="$image" zoom="true"/>
  <RectangleLabels name="box" toName="image"><Label value="{LABEL}" background="#00c000"/></RectangleLabels>
  <BrushLabels name="mask" toName="image"><Label value="{LABEL}" background="#ff0000"/></BrushLabels>
  <Choices name="decision" toName="image" choice="single" showInline="true">
    <Choice value="{ACCEPT}"/><Choice value="{REJECT}"/>
  </Choices>
  <Text name="confidence" value="teacher confidence: $confidence"/>
</View>
"""


def image_url(uri: str, document_root: str, s3_urls: str, presign_hours: float) -> str:
    """How Label Studio reaches an image (see the module docstring)."""
    if storage.is_s3(uri):
        if s3_urls == "s3":
            return uri
        fs, path = storage.filesystem(uri)
        return str(fs.url(path, expires=int(presign_hours * 3600)))
    path = os.path.abspath(storage.local_path(uri))
    root = os.path.abspath(document_root)
    if os.path.commonpath([path, root]) != root:
        raise ValueError(f"image {path} is outside --document-root {root}: Label Studio serves only files below it")
    return "/data/local-files/?d=" + quote(os.path.relpath(path, root).replace(os.sep, "/"))


def _box_result(i: int, box: list[float], width: int, height: int, score: Any) -> dict[str, Any]:
    x0, y0, x1, y1 = box
    value = {"x": 100 * x0 / width, "y": 100 * y0 / height, "width": 100 * (x1 - x0) / width,
             "height": 100 * (y1 - y0) / height, "rotation": 0, "rectanglelabels": [LABEL]}
    return {"id": f"box{i}", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "original_width": width, "original_height": height, "image_rotation": 0, "value": value,
            **({"score": score} if score is not None else {})}


def task(opened: PseudoStore, record: dict[str, Any], sid: str, image: str) -> dict[str, Any]:
    """One Label Studio task of a record: its image, identity and the teacher's boxes + mask as a prediction."""
    mask = review_records.pseudo_mask(opened, record)
    height, width = mask.shape
    conf = review_records.confidence(record)
    scores = record.get("box_confidence") or [None] * len(record["boxes"])
    result = [_box_result(i, box, width, height, s) for i, (box, s) in enumerate(zip(record["boxes"], scores))]
    result.append({"id": "mask", "from_name": "mask", "to_name": "image", "type": "brushlabels",
                   "original_width": width, "original_height": height, "image_rotation": 0,
                   "value": {"format": "rle", "rle": rle.encode(mask), "brushlabels": [LABEL]}})
    data = {"image": image, "bpiml_store": sid, "bpiml_id": record["id"],
            "bpiml_fingerprint": record.get("fingerprint"), "confidence": "none" if conf is None else f"{conf:.3f}"}
    prediction = {"model_version": str(record.get("teacher", "teacher")), "result": result}
    if conf is not None:
        prediction["score"] = conf
    return {"data": data, "predictions": [prediction]}


def export_tasks(store: str, out: str, below: float | None = None, lowest: int | None = None,
                 document_root: str = "/", s3_urls: str = "s3", presign_hours: float = 24.0) -> dict[str, Any]:
    """Write config.xml, tasks.json and export.json into `out`; returns export.json's content."""
    opened, records = review_records.load(store)
    chosen = review_records.ranked(records, below, lowest)
    sid = reviews.store_id(opened.root, create=True)
    tasks = [task(opened, r, sid, image_url(opened.image(review_records.record_of(r)), document_root, s3_urls,
                                            presign_hours)) for r in chosen]
    summary = {"store": opened.root, "store_id": sid, "tasks": len(tasks), "of": len(records),
               "below": below, "lowest": lowest, "document_root": os.path.abspath(document_root)}
    storage.write_bytes(storage.join(out, "config.xml"), LABEL_CONFIG.encode())
    storage.write_json(storage.join(out, "tasks.json"), tasks, indent=None)
    storage.write_json(storage.join(out, "export.json"), summary)
    logger.info("%d of %d records, least confident first -> %s", len(tasks), len(records), out)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="pseudo-labeled store (local or s3://)")
    parser.add_argument("--to", default="label-studio", choices=["label-studio"], help="export format")
    parser.add_argument("--out", required=True, help="folder for config.xml, tasks.json, export.json")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--below", type=float, help="only records with a confidence below this (null ones left out)")
    pick.add_argument("--lowest", type=int, help="only the N least confident records")
    parser.add_argument("--document-root", default="/", help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT "
                                                             "(local stores)")
    parser.add_argument("--s3-urls", default="s3", choices=["s3", "presign"],
                        help="s3:// stores: s3:// URIs (an S3 storage of the project resolves them) or presigned URLs")
    parser.add_argument("--presign-hours", type=float, default=24.0, help="lifetime of presigned URLs")


def run(args: argparse.Namespace) -> int:
    if args.lowest is not None and args.lowest < 1:
        raise ValueError(f"--lowest must be >= 1, got {args.lowest}")
    summary = export_tasks(args.store, args.out, args.below, args.lowest, args.document_root, args.s3_urls,
                           args.presign_hours)
    print(f"{summary['tasks']} task(s) of {summary['of']} record(s) -> {storage.join(args.out, 'tasks.json')} "
          f"(labeling config: {storage.join(args.out, 'config.xml')})")
    return 0
