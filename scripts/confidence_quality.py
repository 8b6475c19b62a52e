"""Does a teacher's confidence mean anything? Its rank correlation with the pseudo mask's IoU against GT.

For each forged image of an IMDL-BenCo dataset (`index.json`: `[[image, mask], [image, "Negative"], ...]`)
the boxes are derived from the GT mask as the importer derives them (components merged within 4 px,
padded 5% like a human's coarse box), each teacher labels the image, and per teacher this prints:
Spearman's rho of the image confidence with the image's pseudo-vs-GT IoU, the mean IoU of the 10%
least confident images against the rest, and the seconds per image (GrabCut: also the share spent
on its confidence):

    python scripts/confidence_quality.py --data ../shared/data/cvip_dev [--limit N] [--checkpoint vit_b]

The data is read in place, never copied. SAM runs only with `--checkpoint` (official weights; the
test suite's tiny random SAM proves plumbing, not meaning).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from bpiml.data import storage
from bpiml.data.boxes import boxes_from_mask, pad_boxes
from bpiml.data.imageio import decode_image, decode_mask
from bpiml.data.metrics import pixel_iou
from bpiml.pseudolabel.teachers import build_teacher
from bpiml.pseudolabel.teachers import grabcut as grabcut_module

MERGE_DISTANCE, PAD = 4, 0.05  # as scripts/experiment_cvip.py imports cvip_dev
LOW_FRACTION = 0.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder holding index.json (read in place)")
    parser.add_argument("--limit", type=int, default=0, help="first N forged images only (0 = all)")
    parser.add_argument("--teachers", default="grabcut,box", help="comma-separated: grabcut, box, sam")
    parser.add_argument("--checkpoint", default=None, help="SAM weights (vit_b | vit_l | vit_h, a path); needed for sam")
    parser.add_argument("--json", default="", help="also write the per-image rows and the table here")
    return parser.parse_args(argv)


class _Timed:
    """Wraps grabcut.colour_agreement to sum the time GrabCut spends on its confidence."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.inner = grabcut_module.colour_agreement

    def __call__(self, *args: Any) -> float:
        start = time.perf_counter()
        try:
            return self.inner(*args)
        finally:
            self.seconds += time.perf_counter() - start


def _pairs(data: str, limit: int) -> list[tuple[str, str]]:
    index = os.path.join(data, "index.json")
    if not os.path.isfile(index):
        raise FileNotFoundError(f"--data {data}: no index.json there")
    pairs = [(im, m) for im, m in json.load(open(index)) if m != "Negative"]
    return pairs[:limit] if limit else pairs


def score(confidence: list[float | None], iou: list[float]) -> dict[str, Any]:
    """Spearman's rho of confidence with IoU and the mean IoU of the least confident 10% vs the rest."""
    pairs = [(c, i) for c, i in zip(confidence, iou) if c is not None]
    if len(pairs) < 3:
        return {"images": len(iou), "with_confidence": len(pairs), "spearman": None, "p_value": None,
                "iou_low10": None, "iou_rest": None, "mean_iou": float(np.mean(iou)) if iou else None}
    conf, ious = np.asarray(pairs).T
    rho, p_value = spearmanr(conf, ious)
    order = np.argsort(conf, kind="stable")
    low = order[:max(1, int(round(LOW_FRACTION * len(order))))]
    rest = np.setdiff1d(order, low)
    return {"images": len(iou), "with_confidence": len(pairs), "spearman": float(rho), "p_value": float(p_value),
            "iou_low10": float(ious[low].mean()), "iou_rest": float(ious[rest].mean()), "mean_iou": float(np.mean(iou)),
            "mean_confidence": float(conf.mean())}


def main(args: argparse.Namespace) -> int:
    pairs = _pairs(args.data, args.limit)
    names = [n.strip() for n in args.teachers.split(",") if n.strip()]
    if "sam" in names and not args.checkpoint:
        raise ValueError("--teachers sam needs --checkpoint (official SAM weights; none can be fetched offline)")
    teachers = {n: build_teacher(n, checkpoint=args.checkpoint if n == "sam" else None) for n in names}
    timer = _Timed()
    grabcut_module.colour_agreement = timer
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    seconds = dict.fromkeys(names, 0.0)
    boxes_total = 0
    for k, (image_rel, mask_rel) in enumerate(pairs):
        image, _ = decode_image(storage.read_bytes(os.path.join(args.data, image_rel)), image_rel)
        gt = decode_mask(storage.read_bytes(os.path.join(args.data, mask_rel)), mask_rel)
        height, width = gt.shape
        boxes = np.asarray(pad_boxes(boxes_from_mask(gt, MERGE_DISTANCE), PAD, width, height), np.float32).reshape(-1, 4)
        boxes_total += len(boxes)
        for name, teacher in teachers.items():
            start = time.perf_counter()
            (labels,) = teacher.label([image], [boxes])
            seconds[name] += time.perf_counter() - start
            rows[name].append({"image": image_rel, "boxes": len(boxes), "iou": pixel_iou(labels.mask, gt),
                               "confidence": labels.confidence, "box_confidence": labels.box_confidence})
        if (k + 1) % 50 == 0:
            logging.getLogger("confidence_quality").warning("%d / %d images", k + 1, len(pairs))
    table = {n: {**score([r["confidence"] for r in rows[n]], [r["iou"] for r in rows[n]]),
                 "seconds_per_image": seconds[n] / max(len(pairs), 1)} for n in names}
    if "grabcut" in table:
        table["grabcut"]["confidence_share_of_time"] = timer.seconds / max(seconds["grabcut"], 1e-9)
    print(f"{len(pairs)} forged images, {boxes_total} boxes (GT components merged within {MERGE_DISTANCE} px, "
          f"padded {PAD:.0%}), data {args.data}")
    print("| teacher | images (with confidence) | mean IoU | mean confidence | Spearman rho (p) | "
          "IoU, least confident 10% | IoU, rest | s/image |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, t in table.items():
        fmt = lambda v, spec=".3f": "n/a" if v is None else format(v, spec)  # noqa: E731
        rho = "n/a (null)" if t["spearman"] is None else f"{t['spearman']:.3f} ({t['p_value']:.1e})"
        print(f"| {name} | {t['images']} ({t['with_confidence']}) | {fmt(t['mean_iou'])} | "
              f"{fmt(t.get('mean_confidence'))} | {rho} | {fmt(t['iou_low10'])} | {fmt(t['iou_rest'])} | "
              f"{t['seconds_per_image']:.3f} |")
    if "grabcut" in table:
        print(f"GrabCut: {table['grabcut']['confidence_share_of_time']:.1%} of its time is the confidence")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"table": table, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(parse_args()))
