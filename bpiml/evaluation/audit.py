"""Pseudo-mask audit: how close are a pseudo-labeled store's teacher masks to the ground truth?

For every record holding both a `pseudo_mask` (relative to the pseudo-labeled store) and a GT `mask`
(relative to the input store named by `source`), compute IoU and boundary F1 (pixel tolerance) of
pseudo vs GT; summarise per teacher: count, mean, median, a 10-bin histogram over [0, 1] and the
worst-k records. Records without a GT mask are counted as skipped; unreadable ones as failed.
"""

from __future__ import annotations

import argparse
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from bpiml.config import HelpFormatter
from bpiml.data import imageio, manifest, metrics, storage
from bpiml.pseudolabel.store import PseudoStore

logger = logging.getLogger(__name__)


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def audit_record(store: PseudoStore, record: manifest.Record, tolerance: float = 2.0) -> dict[str, Any]:
    """One record -> {"id", "teacher", "iou", "boundary_f1", ...}; raises on unreadable files."""
    mask_uri, pseudo_uri = store.mask(record), store.pseudo_mask(record)
    gt = imageio.load_mask(mask_uri)
    pseudo = imageio.load_mask(pseudo_uri)
    resized = pseudo.shape != gt.shape
    if resized:
        pseudo = _resize_nearest(pseudo, gt.shape)
    return {
        "id": record.id,
        "teacher": str(record.extra.get("teacher") or "unknown"),
        "image": store.image(record),
        "mask": mask_uri,
        "pseudo_mask": pseudo_uri,
        "boxes": record.boxes,
        "iou": metrics.pixel_iou(pseudo, gt),
        "boundary_f1": metrics.boundary_f1(pseudo, gt, tolerance),
        "resized": resized,
    }


def histogram(values: list[float], bins: int = 10) -> list[int]:
    """Counts of `values` in `bins` equal bins over [0, 1] (1.0 falls in the last bin)."""
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return [int(c) for c in counts]


def summarize_rows(rows: list[dict[str, Any]], worst_k: int = 10) -> dict[str, Any]:
    iou = [r["iou"] for r in rows]
    bf1 = [r["boundary_f1"] for r in rows]
    worst = sorted(rows, key=lambda r: (r["iou"], r["boundary_f1"], r["id"]))[:worst_k]
    return {
        "n": len(rows),
        "iou_mean": float(np.mean(iou)) if iou else math.nan,
        "iou_median": float(np.median(iou)) if iou else math.nan,
        "boundary_f1_mean": float(np.mean(bf1)) if bf1 else math.nan,
        "boundary_f1_median": float(np.median(bf1)) if bf1 else math.nan,
        "iou_histogram": histogram(iou),
        "boundary_f1_histogram": histogram(bf1),
        "worst": [{k: r[k] for k in ("id", "iou", "boundary_f1", "image", "pseudo_mask")} for r in worst],
    }


def audit_pseudo_labels(store: str, tolerance: float = 2.0, worst_k: int = 10, workers: int = 8) -> dict[str, Any]:
    """Audit a pseudo-labeled store; returns {"teachers": {name: summary}, "all": summary, counts, "rows"}."""
    opened = PseudoStore.open(store)
    records = manifest.read_manifest(opened.root)
    usable = [r for r in records if r.mask and r.extra.get("pseudo_mask")]
    skipped = len(records) - len(usable)
    if not usable:
        raise ValueError(f"{store}: no record has both a 'pseudo_mask' and a GT 'mask' ({len(records)} records)")

    def one(record: Any) -> dict[str, Any]:
        try:
            return audit_record(opened, record, tolerance)
        except Exception as err:  # one unreadable pair never sinks the audit
            return {"id": record.id, "error": f"{type(err).__name__}: {err}"}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, usable))
    rows = [r for r in results if "error" not in r]
    failed = [r for r in results if "error" in r]
    for r in failed[:10]:
        logger.warning("audit: %s: %s", r["id"], r["error"])
    teachers = sorted({r["teacher"] for r in rows})
    report = {
        "store": store,
        "tolerance": tolerance,
        "records": len(records),
        "audited": len(rows),
        "skipped_no_gt": skipped,
        "failed": [{"id": r["id"], "reason": r["error"]} for r in failed],
        "resized": sum(1 for r in rows if r["resized"]),
        "teachers": {t: summarize_rows([r for r in rows if r["teacher"] == t], worst_k) for t in teachers},
        "all": summarize_rows(rows, worst_k),
        "rows": rows,
    }
    return report


def format_audit(report: dict[str, Any]) -> str:
    lines = [f"pseudo-mask audit of {report['store']}: {report['audited']} audited, "
             f"{report['skipped_no_gt']} without GT, {len(report['failed'])} failed "
             f"(boundary tolerance {report['tolerance']} px)", ""]
    header = f"{'teacher':<14} {'n':>5} {'IoU mean':>9} {'IoU med':>8} {'BF1 mean':>9} {'BF1 med':>8}  IoU histogram (0..1, 10 bins)"
    lines += [header, "-" * len(header)]
    for name, s in [*report["teachers"].items(), ("[all]", report["all"])]:
        lines.append(f"{name:<14} {s['n']:>5} {s['iou_mean']:>9.4f} {s['iou_median']:>8.4f} "
                     f"{s['boundary_f1_mean']:>9.4f} {s['boundary_f1_median']:>8.4f}  {s['iou_histogram']}")
    for name, s in report["teachers"].items():
        lines += ["", f"worst {len(s['worst'])} for {name}:"]
        lines += [f"  {w['id']:<30} IoU {w['iou']:.4f}  BF1 {w['boundary_f1']:.4f}" for w in s["worst"]]
    return "\n".join(lines)


def cli_audit(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="bpiml audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="pseudo-labeled store (its manifest.jsonl names the GT masks)")
    parser.add_argument("--tolerance", type=float, default=2.0, help="boundary F1 tolerance in pixels")
    parser.add_argument("--worst-k", type=int, default=10, help="worst records listed per teacher")
    parser.add_argument("--out", default=None, help="also write the audit (with per-image rows) as JSON here")
    args = parser.parse_args(argv)
    if args.tolerance < 0 or args.worst_k < 0:
        raise ValueError(f"--tolerance and --worst-k must be >= 0, got {args.tolerance}, {args.worst_k}")
    report = audit_pseudo_labels(args.store, args.tolerance, args.worst_k)
    print(format_audit(report))
    if args.out:
        storage.write_json(args.out, report, default=str)
        print(f"\naudit written to {args.out}")
    return 0
