"""A tiny pseudo store with issue 31's confidence fields, and Label Studio exports made with label-studio-sdk's RLE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bpiml.data import imageio
from bpiml.pseudolabel.store import write_index
from bpiml.review import rle

WIDTH, HEIGHT = 48, 40  # not square: a swapped width/height shows


def make_review_store(root: Path, confidences: list[float | None] = (0.9, 0.2, None, 0.5, 0.05, 0.7)) -> Path:
    """Input store + pseudo store (index.json, manifest shard) whose records carry confidence and box_confidence.
    Record i: a bright square; its pseudo mask is the square's left half (a teacher that missed half)."""
    rng = np.random.default_rng(0)
    source, pseudo = root / "input", root / "pseudo"
    for folder in (source / "images", source / "masks", pseudo / "pseudo", pseudo / "manifest"):
        folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, conf in enumerate(confidences):
        rid = f"rec{i}"
        image = rng.uniform(0, 80, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        x0, y0 = 4 + 3 * i, 6 + 2 * i
        image[y0:y0 + 16, x0:x0 + 20] = 230
        gt = np.zeros((HEIGHT, WIDTH), bool)
        gt[y0:y0 + 16, x0:x0 + 20] = True
        half = gt.copy()
        half[:, x0 + 10:] = False
        (source / "images" / f"{rid}.png").write_bytes(imageio.encode_image(image, "png"))
        (source / "masks" / f"{rid}.png").write_bytes(imageio.encode_mask_png(gt))
        (pseudo / "pseudo" / f"{rid}.png").write_bytes(imageio.encode_mask_png(half))
        lines.append({"id": rid, "image": f"images/{rid}.png", "boxes": [[x0, y0, x0 + 20, y0 + 16]],
                      "mask": f"masks/{rid}.png", "split": "val" if i == len(confidences) - 1 else "train",
                      "pseudo_mask": f"pseudo/{rid}.png", "teacher": "grabcut", "teacher_version": "1",
                      "fingerprint": f"fp{i}", "mask_area": float(half.mean()), "width": WIDTH, "height": HEIGHT,
                      "confidence": conf, "box_confidence": [conf]})
    (pseudo / "manifest" / "shard-r1-0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (pseudo / "manifest" / "_r1.compacted").write_text("")
    write_index(str(pseudo), {"complete": True, "teacher": {"name": "grabcut"}, "source": {"base": "parent", "path": "input"}})
    return pseudo


def gt_square(i: int) -> np.ndarray:
    """The full square of record i (what a reviewer paints)."""
    x0, y0 = 4 + 3 * i, 6 + 2 * i
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[y0:y0 + 16, x0:x0 + 20] = True
    return mask


def brush(mask: np.ndarray, width: int = WIDTH, height: int = HEIGHT) -> dict[str, Any]:
    return {"id": "m1", "type": "brushlabels", "from_name": "mask", "to_name": "image", "original_width": width,
            "original_height": height, "value": {"format": "rle", "rle": rle.encode(mask), "brushlabels": ["manipulated"]}}


def choice(value: str) -> dict[str, Any]:
    return {"id": "c1", "type": "choices", "from_name": "decision", "to_name": "image", "value": {"choices": [value]}}


def annotated(task: dict[str, Any], task_id: int, result: list[dict[str, Any]], at: str = "2026-12-05T10:00:00.000000Z",
              annotation_id: int = 1) -> dict[str, Any]:
    """A task as Label Studio's JSON export holds it, with one annotation."""
    return {"id": task_id, "data": task["data"], "annotations": [
        {"id": annotation_id, "completed_by": {"id": 1, "email": "rev@example.com"}, "result": result,
         "was_cancelled": False, "created_at": at, "updated_at": at}]}
