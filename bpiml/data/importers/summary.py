"""What every importer shares: the import summary, ids from file names, splits, and writing the store."""

from __future__ import annotations

import json
import logging
import posixpath
import re
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from typing import Any

import numpy as np

from bpiml.config import check_choice, check_range
from bpiml.data import naming, storage
from bpiml.data.imageio import DecodeError, image_size
from bpiml.data.manifest import SPLITS, Record, write_manifest
from bpiml.data.splits import assign_splits, scene_key

logger = logging.getLogger(__name__)

SUMMARY_NAME = "import_summary.json"


class SkipRecord(Exception):
    """A record that cannot be imported; the message is the reason."""


@dataclass
class ImportSummary:
    """What an import wrote and what it skipped."""

    manifest: str = ""
    n_records: int = 0
    n_tampered: int = 0
    n_authentic: int = 0
    n_boxes: int = 0
    boxes_per_tampered: dict[str, float] = dc_field(default_factory=dict)  # min / mean / median / max
    box_count_histogram: dict[str, int] = dc_field(default_factory=dict)  # "1": images with one box, ...
    mean_box_fill: float | None = None  # mask px / px of its tight boxes' union, before pad/jitter (1.0 = rectangles)
    split_counts: dict[str, int] = dc_field(default_factory=dict)
    n_scenes: dict[str, int] = dc_field(default_factory=dict)
    skipped: list[dict[str, str]] = dc_field(default_factory=list)  # {"image": ..., "reason": ...}
    notes: dict[str, int] = dc_field(default_factory=dict)  # note -> how many records had it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def count_note(self, text: str) -> None:
        """Count a per-record note under a key without its numbers ("clipped 1 box to the image 40x30")."""
        key = re.sub(r"\s*\[.*", "", text)
        key = re.sub(r"\s*\b\d+x\d+\b", "", key)
        key = re.sub(r"(?<![=\w])\d+ ", "", key).strip()
        key = re.sub(r"\bbox(es)?\b", "box(es)", key)
        self.notes[key] = self.notes.get(key, 0) + 1

    def format(self) -> str:
        lines = [f"wrote {self.n_records} records ({self.n_tampered} tampered, {self.n_authentic} authentic, "
                 f"{self.n_boxes} boxes) to {self.manifest}"]
        if self.boxes_per_tampered:
            b = self.boxes_per_tampered
            lines.append(f"boxes per tampered image: min {b['min']:g} mean {b['mean']:.2f} median {b['median']:g} "
                         f"max {b['max']:g}; histogram {self.box_count_histogram}")
        if self.mean_box_fill is not None:
            lines.append(f"mean tight-box fill (mask px / box px, before pad/jitter): {self.mean_box_fill:.3f}")
        if self.split_counts:
            scenes = f"; scenes {self.n_scenes}" if self.n_scenes else ""
            lines.append(f"splits: {self.split_counts}{scenes}")
        for note, count in sorted(self.notes.items()):
            lines.append(f"note: {note}: {count}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines += [f"  {s['image']}: {s['reason']}" for s in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more (see {SUMMARY_NAME})")
        return "\n".join(lines)


def unique_ids(paths: list[str]) -> list[str]:
    """Stable ids from file stems (`naming.slug`), made unique with `-2`, `-3`... in order."""
    ids, seen = [], set()
    for path in paths:
        base = naming.slug(posixpath.splitext(posixpath.basename(path.replace("\\", "/")))[0])
        rid, n = base, 1
        while rid in seen:
            n += 1
            rid = f"{base}-{n}"
        seen.add(rid)
        ids.append(rid)
    return ids


def check_split_options(split: str | None, split_by_scene: bool, val_fraction: float, test_fraction: float,
                        pad: float, jitter: float) -> None:
    if split is not None:
        check_choice("split", split, SPLITS)
    if split is not None and split_by_scene:
        raise ValueError("give either split (one split for all records) or split_by_scene, not both")
    check_range("val_fraction", val_fraction, 0.0, 1.0)
    check_range("test_fraction", test_fraction, 0.0, 1.0 - val_fraction)
    check_range("pad", pad, 0.0)
    if not 0 <= jitter < 0.5:
        raise ValueError(f"jitter must be in [0, 0.5), got {jitter!r}")


def apply_splits(records: list[Record], split: str | None, split_by_scene: bool, val_fraction: float,
                 test_fraction: float, seed: int, scene_pattern: str, summary: ImportSummary) -> None:
    if split_by_scene:
        keys = [scene_key(r.image, scene_pattern) for r in records]
        for r, k, s in zip(records, keys, assign_splits(keys, val_fraction, test_fraction, seed)):
            r.split, r.extra["scene"] = s, k
        for s in SPLITS:
            n = len({k for r, k in zip(records, keys) if r.split == s})
            if n:
                summary.n_scenes[s] = n
    elif split is not None:
        for r in records:
            r.split = split
    for r in records:
        if r.split is not None:
            summary.split_counts[r.split] = summary.split_counts.get(r.split, 0) + 1


def write_import(records: list[Record], summary: ImportSummary, out_store: str,
                 config: dict[str, Any]) -> ImportSummary:
    """Count, write the manifest and `import_summary.json`; returns the completed summary."""
    counts = [len(r.boxes) for r in records if r.boxes]
    summary.n_records = len(records)
    summary.n_tampered = len(counts)
    summary.n_authentic = len(records) - len(counts)
    summary.n_boxes = int(sum(counts))
    if counts:
        summary.boxes_per_tampered = {"min": float(min(counts)), "mean": float(np.mean(counts)),
                                      "median": float(np.median(counts)), "max": float(max(counts))}
        values, freq = np.unique(counts, return_counts=True)
        summary.box_count_histogram = {str(int(v)): int(f) for v, f in zip(values, freq)}
    summary.manifest = write_manifest(records, out_store)
    payload = {"summary": summary.to_dict(), "config": config}
    storage.write_json(storage.join(out_store, SUMMARY_NAME), payload)
    logger.info("import: %d records, %d skipped", summary.n_records, len(summary.skipped))
    return summary


def read_image_size(uri: str) -> tuple[int, int]:
    """(width, height) from the image header; SkipRecord when it is missing or unreadable."""
    try:
        return image_size(storage.read_bytes(uri), name=uri)
    except FileNotFoundError:
        raise SkipRecord("image not found") from None
    except DecodeError as err:
        raise SkipRecord(f"image unreadable: {err.reason}") from None


def read_json(uri: str, what: str) -> Any:
    try:
        return json.loads(storage.read_bytes(uri))
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri}: not valid JSON ({what}): {err}") from None


def tidy_boxes(boxes: np.ndarray) -> list[list[float]]:
    """float32 boxes -> short JSON numbers (2 decimals, well below a pixel)."""
    return [[round(float(v), 2) for v in box] for box in boxes]
