"""gallery.html: the first samples of a synthetic store, image with its boxes beside its exact mask.

    <out>/gallery.html
    <out>/gallery/<stem>.jpg   image (boxes drawn in green) | mask, 256 px high
"""

from __future__ import annotations

import html
import json
import logging

import cv2
import numpy as np

from bpiml.config import redact
from bpiml.data import imageio, naming, storage
from bpiml.data.manifest import SHARDS_DIR

logger = logging.getLogger(__name__)

THUMB_HEIGHT = 256


def first_records(out: str, k: int) -> list[dict]:
    """The first `k` records in part order (reads only the parts it needs)."""
    records: list[dict] = []
    for uri in storage.list_files(storage.join(out, SHARDS_DIR), ".jsonl"):
        for line in storage.read_bytes(uri).decode().splitlines():
            if line.strip():
                records.append(json.loads(line))
                if len(records) >= k:
                    return records
    return records


def panel(image: np.ndarray, mask: np.ndarray, boxes: list[list[float]]) -> np.ndarray:
    """image with `boxes` drawn | mask in white, scaled to THUMB_HEIGHT: H x 2W x 3 uint8."""
    drawn = image.copy()
    width = max(1, round(max(image.shape[:2]) / 256))
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(drawn, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), (0, 255, 0), width)
    both = np.concatenate([drawn, np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=2)], axis=1)
    scale = THUMB_HEIGHT / both.shape[0]
    return cv2.resize(both, (max(1, round(both.shape[1] * scale)), THUMB_HEIGHT), interpolation=cv2.INTER_AREA)


def _caption(record: dict) -> str:
    info = record.get("synth", {})
    details = [record.get("kind", "?"), info.get("region", ""), info.get("blend", ""),
               " ".join(info.get("post", [])), info.get("save", "")]
    return html.escape(f"{record['id']}: " + ", ".join(d for d in details if d))


def write_gallery(out: str, k: int) -> str:
    """Write the gallery of the first `k` records; returns the page's URI."""
    cells = []
    for record in first_records(out, k):
        try:
            image, _ = imageio.load_image(storage.join(out, record["image"]))
            mask = imageio.load_mask(storage.join(out, record["mask"]))
        except (imageio.DecodeError, FileNotFoundError, OSError) as err:
            logger.warning("gallery: left out %s (%s)", record.get("id"), err)
            continue
        name = f"gallery/{naming.file_stem(record['id'])}.jpg"
        storage.write_bytes(storage.join(out, name), imageio.encode_image(panel(image, mask, record["boxes"]), "jpeg", 85))
        cells.append(f'<figure><img src="{name}" loading="lazy"><figcaption>{_caption(record)}</figcaption></figure>')
    page = ("<!doctype html><meta charset='utf-8'><title>bpiml synthetic store</title><style>body{font-family:sans-serif}"
            "figure{display:inline-block;margin:6px}figcaption{font-size:12px;max-width:520px}</style>"
            f"<h1>{html.escape(redact(out))}</h1><p>image with its boxes | exact mask</p>" + "\n".join(cells))
    uri = storage.join(out, "gallery.html")
    storage.write_bytes(uri, page.encode())
    return uri
