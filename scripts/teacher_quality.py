"""Pseudo-mask quality of the model-free teachers against ground truth.

For each forged image of a dataset (`index.json`: `[[image, mask], [image, "Negative"], ...]`),
boxes are derived from the GT mask (tight boxes of its connected components), each teacher
turns them into a mask, and the mean IoU with the GT mask is printed per teacher:

    python scripts/teacher_quality.py --data /work/shared/data/cvip_dev [--limit N] [--variants all]

`--variants` picks GrabCut settings by name from `GRABCUT_VARIANTS` ("default" = `GrabCutConfig()`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import cv2
import numpy as np

from bpiml.pseudolabel.teachers.box import BoxTeacher
from bpiml.pseudolabel.teachers.grabcut import GrabCutConfig, GrabCutTeacher

# name -> GrabCutConfig overrides tried while tuning (the default is the chosen one)
GRABCUT_VARIANTS: dict[str, dict] = {
    "default": {},
    "plain-rect": dict(context=0.0, min_context=10_000, max_side=0, min_fraction=0.0, fill_holes=False,
                       min_component=0.0, hull=False, dilate=0.0),  # plain GC_INIT_WITH_RECT, no cleaning
    "crop-only": dict(min_fraction=0.0, fill_holes=False, min_component=0.0, hull=False, dilate=0.0),
    "no-hull-no-dilate": dict(hull=False, dilate=0.0),
    "no-hull": dict(hull=False),
    "no-dilate": dict(dilate=0.0),
    "dilate-0.05": dict(dilate=0.05),
    "dilate-0.15": dict(dilate=0.15),
    "dilate-0.2": dict(dilate=0.2),
    "fallback-0.05": dict(min_fraction=0.05),
    "fallback-0.25": dict(min_fraction=0.25),
    "context-0.5": dict(context=0.5),
    "context-1.0": dict(context=1.0),
    "iters-5": dict(iterations=5),
    "iters-10": dict(iterations=10),
    "side-192": dict(max_side=192),
    "side-384": dict(max_side=384),
    "lab": dict(color_space="lab"),
    "blur-5": dict(blur=5),
    "core-0.3": dict(core=0.3),
}


def boxes_from_gt(mask: np.ndarray) -> np.ndarray:
    try:
        from bpiml.data.boxes import boxes_from_mask
    except ImportError:
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        boxes = [[x, y, x + w, y + h] for x, y, w, h, area in stats[1:count] if area >= 16]
    else:
        boxes = boxes_from_mask(mask, merge_distance=-1, min_area=16)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder holding index.json")
    parser.add_argument("--limit", type=int, default=0, help="first N forged images only (0 = all)")
    parser.add_argument("--offset", type=int, default=0, help="skip the first N forged images")
    parser.add_argument("--stride", type=int, default=1, help="every N-th forged image (2 with offset 0/1 = halves)")
    parser.add_argument("--variants", default="default", help="comma-separated GrabCut variant names, or 'all'")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    index_path = os.path.join(args.data, "index.json")
    if not os.path.exists(index_path):
        raise FileNotFoundError(f"no index.json in {args.data}")
    pairs = [(im, m) for im, m in json.load(open(index_path)) if m != "Negative"]
    pairs = pairs[args.offset::args.stride]
    if args.limit:
        pairs = pairs[: args.limit]
    names = list(GRABCUT_VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [n for n in names if n not in GRABCUT_VARIANTS]
    if unknown:
        raise ValueError(f"unknown GrabCut variant(s) {unknown}; known: {', '.join(GRABCUT_VARIANTS)}")
    teachers = {"box": BoxTeacher()}
    teachers.update({f"grabcut[{n}]": GrabCutTeacher(GrabCutConfig.from_dict(GRABCUT_VARIANTS[n])) for n in names})
    ious: dict[str, list[float]] = {name: [] for name in teachers}
    seconds = dict.fromkeys(teachers, 0.0)
    box_count = 0
    for image_rel, mask_rel in pairs:
        image = cv2.cvtColor(cv2.imread(os.path.join(args.data, image_rel), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        gt = cv2.imread(os.path.join(args.data, mask_rel), cv2.IMREAD_GRAYSCALE) > 127
        boxes = boxes_from_gt(gt)
        box_count += len(boxes)
        for name, teacher in teachers.items():
            start = time.perf_counter()
            (pred,) = teacher.predict([image], [boxes])
            seconds[name] += time.perf_counter() - start
            ious[name].append(iou(pred, gt))
    print(f"{len(pairs)} forged images, {box_count} boxes from GT components, data {args.data}")
    print(f"{'teacher':<26} {'mean IoU':>8} {'median':>7} {'fallback':>8} {'s/image':>8}")
    for name, teacher in teachers.items():
        values = np.asarray(ious[name])
        fallback = f"{teacher.fallbacks / max(teacher.boxes_seen, 1):.1%}" if isinstance(teacher, GrabCutTeacher) else "-"
        print(f"{name:<26} {values.mean():8.4f} {np.median(values):7.4f} {fallback:>8} {seconds[name] / len(pairs):8.3f}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(parse_args()))
