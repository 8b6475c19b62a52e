"""Importers: an IMDL-BenCo list JSON or a COCO detection JSON -> a store manifest.

The store references the data where it lies when it can (no copy of millions of files):

* data under the output store (the common case: `manifest.jsonl` written next to `index.json`):
  manifest paths are plain relative paths;
* `link=True` (local stores): one symlink `<out>/data` -> the data folder, paths go through it;
* `copy=True`: images and masks are copied into `<out>/images/` and `<out>/masks/`;
* otherwise a ValueError says which of these to pick, before any work is done.

A record whose image or mask is missing or unreadable is skipped and listed in the summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import posixpath
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from typing import Any, Callable

import numpy as np

from bpiml.data import storage
from bpiml.data.boxes import boxes_from_mask, jitter_boxes, pad_boxes, sanitize_boxes
from bpiml.config import BaseConfig, check_choice, check_range, field
from bpiml.data.imageio import DecodeError, decode_mask, image_size
from bpiml.data.manifest import SPLITS, Record, write_manifest
from bpiml.data.importers.placement import Placer, parent, resolve_source
from bpiml.data.splits import CVIP_SCENE_PATTERN, assign_splits, scene_key

logger = logging.getLogger(__name__)

SUMMARY_NAME = "import_summary.json"


# --- summary -----------------------------------------------------------------------------------
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


class _Skip(Exception):
    """A record that cannot be imported; the message is the reason."""


# --- ids and splits ----------------------------------------------------------------------------
def unique_ids(paths: list[str]) -> list[str]:
    """Stable ids from file stems (unsafe characters -> `_`), made unique with `-2`, `-3`... in order."""
    ids, seen = [], set()
    for path in paths:
        stem = posixpath.splitext(posixpath.basename(path.replace("\\", "/")))[0]
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "record"
        rid, n = base, 1
        while rid in seen:
            n += 1
            rid = f"{base}-{n}"
        seen.add(rid)
        ids.append(rid)
    return ids


def _apply_splits(records: list[Record], split: str | None, split_by_scene: bool, val_fraction: float,
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


def _finish(records: list[Record], summary: ImportSummary, out_store: str, config: dict[str, Any]) -> ImportSummary:
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
    storage.write_bytes(storage.join(out_store, SUMMARY_NAME), (json.dumps(payload, indent=2) + "\n").encode())
    logger.info("import: %d records, %d skipped", summary.n_records, len(summary.skipped))
    return summary


def _read_json(uri: str, what: str) -> Any:
    try:
        return json.loads(storage.read_bytes(uri))
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri}: not valid JSON ({what}): {err}") from None


def _tidy(boxes: np.ndarray) -> list[list[float]]:
    """float32 boxes -> short JSON numbers (2 decimals, well below a pixel)."""
    return [[round(float(v), 2) for v in box] for box in boxes]


def _note(notes: dict[str, int], text: str) -> None:
    """Count a per-record note under a key without its numbers ("clipped 1 box to the image 40x30" -> ...)."""
    key = re.sub(r"\s*\[.*", "", text)
    key = re.sub(r"\s*\b\d+x\d+\b", "", key)
    key = re.sub(r"(?<![=\w])\d+ ", "", key).strip()
    key = re.sub(r"\bbox(es)?\b", "box(es)", key)
    notes[key] = notes.get(key, 0) + 1


# --- IMDL-BenCo ---------------------------------------------------------------------------------
def import_imdl(index_uri: str, out_store: str, *, data_root: str | None = None, merge_distance: int = 0,
                pad: float = 0.0, jitter: float = 0.0, seed: int = 0, min_area: int = 16, split: str | None = None,
                copy: bool = False, link: bool = False, split_by_scene: bool = False, val_fraction: float = 0.2,
                test_fraction: float = 0.0, scene_pattern: str = CVIP_SCENE_PATTERN, workers: int = 4) -> ImportSummary:
    """IMDL-BenCo list JSON `[[image, mask], [image, "Negative"], ...]` -> `<out_store>/manifest.jsonl`.

    Paths in the JSON are relative to its folder (or `data_root`), or absolute. Boxes are the mask's
    connected components (`boxes_from_mask`), then padded and jittered; "Negative" -> boxes [] and no mask.
    """
    config = {k: v for k, v in locals().items()}
    _check_common(split, split_by_scene, val_fraction, test_fraction, pad, jitter)
    entries = _read_json(index_uri, "IMDL-BenCo list")
    if not isinstance(entries, list):
        raise ValueError(f"{index_uri}: expected a JSON list of [image, mask] pairs, got {type(entries).__name__}")
    base = data_root or parent(index_uri)
    summary = ImportSummary()
    pairs: list[tuple[str, str | None]] = []
    first_entry: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if (not isinstance(entry, (list, tuple)) or len(entry) != 2
                or not all(isinstance(p, str) and p for p in entry)):
            summary.skipped.append({"image": f"{index_uri}[{i}]", "reason": f"malformed entry {entry!r}"})
            continue
        image, mask = resolve_source(base, entry[0]), None if entry[1] == "Negative" else resolve_source(base, entry[1])
        if image in first_entry:  # an image listed twice would be trained on and scored twice
            j = first_entry[image]
            same = "same mask" if entries[j][1] == entry[1] else f"other mask {entry[1]!r}"
            summary.skipped.append({"image": image, "reason": f"duplicate of index entry {j} ({same})"})
            continue
        first_entry[image] = i
        pairs.append((image, mask))
    placer = Placer(out_store, base, copy, link)
    placer.check([p for pair in pairs for p in pair if p is not None])
    ids = unique_ids([img for img, _ in pairs])

    def one(i: int) -> Record | tuple[str, str]:
        image_src, mask_src = pairs[i]
        notes: list[str] = []
        try:
            width, height = _read_size(image_src)
            boxes: list[list[float]] = []
            if mask_src is not None:
                boxes, fill = _boxes_for_mask(mask_src, width, height, merge_distance, min_area, notes)
                boxes = pad_boxes(boxes, pad, width, height) if pad else boxes
                if jitter:
                    boxes = jitter_boxes(boxes, jitter, np.random.default_rng([seed, i]), width, height)
                clean, clean_notes = sanitize_boxes(boxes, width, height)
                notes += clean_notes
                boxes = _tidy(clean)
                notes.append(f"fill={fill:.6f}")
            rec = Record(id=ids[i], image=placer.place(image_src, "images", ids[i]), boxes=boxes,
                         mask=None if mask_src is None else placer.place(mask_src, "masks", ids[i]))
            rec.extra["_notes"] = notes
            return rec
        except _Skip as err:
            return image_src, str(err)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, range(len(pairs))))
    records, fills = [], []
    for res in results:
        if isinstance(res, tuple):
            summary.skipped.append({"image": res[0], "reason": res[1]})
            continue
        for note in res.extra.pop("_notes"):
            if note.startswith("fill="):
                fills.append(float(note[5:]))
            else:
                _note(summary.notes, note)
        records.append(res)
    summary.mean_box_fill = float(np.mean(fills)) if fills else None
    _apply_splits(records, split, split_by_scene, val_fraction, test_fraction, seed, scene_pattern, summary)
    return _finish(records, summary, out_store, config)


def _read_size(uri: str) -> tuple[int, int]:
    try:
        return image_size(storage.read_bytes(uri), name=uri)
    except FileNotFoundError:
        raise _Skip("image not found") from None
    except DecodeError as err:
        raise _Skip(f"image unreadable: {err.reason}") from None


def _boxes_for_mask(uri: str, width: int, height: int, merge_distance: int, min_area: int,
                    notes: list[str]) -> tuple[list[list[int]], float]:
    try:
        mask = decode_mask(storage.read_bytes(uri), name=uri)
    except FileNotFoundError:
        raise _Skip(f"mask not found: {uri}") from None
    except DecodeError as err:
        raise _Skip(f"mask unreadable: {err.reason}: {uri}") from None
    if mask.shape != (height, width):
        raise _Skip(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size {width}x{height}")
    if not mask.any():
        raise _Skip("empty mask (no manipulated pixel) for an image listed as manipulated")
    boxes = boxes_from_mask(mask, merge_distance, min_area)
    if not boxes:
        notes.append(f"all mask components under min_area={min_area} px, kept them")
        boxes = boxes_from_mask(mask, merge_distance, min_area=1)
    union = np.zeros_like(mask)
    for x0, y0, x1, y1 in boxes:
        union[y0:y1, x0:x1] = True
    return boxes, float(mask.sum() / max(int(union.sum()), 1))


def _check_common(split: str | None, split_by_scene: bool, val_fraction: float, test_fraction: float,
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


# --- COCO ---------------------------------------------------------------------------------------
def import_coco(coco_json_uri: str, image_root: str, out_store: str, *, pad: float = 0.0, jitter: float = 0.0,
                seed: int = 0, split: str | None = None, copy: bool = False, link: bool = False,
                split_by_scene: bool = False, val_fraction: float = 0.2, test_fraction: float = 0.0,
                scene_pattern: str = CVIP_SCENE_PATTERN, category_ids: list[int] | None = None,
                min_side: float = 1.0) -> ImportSummary:
    """COCO detection JSON -> manifest: `bbox` [x, y, w, h] -> [x0, y0, x1, y1]; no annotation -> authentic.

    `file_name` is relative to `image_root`. Boxes are clipped to the image's `width`/`height` (read from
    the file when the JSON lacks them); degenerate ones are dropped and counted. `category_ids` keeps
    only those categories.
    """
    config = {k: v for k, v in locals().items()}
    _check_common(split, split_by_scene, val_fraction, test_fraction, pad, jitter)
    coco = _read_json(coco_json_uri, "COCO detection")
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ValueError(f"{coco_json_uri}: expected a COCO object with an 'images' list")
    annotations = coco.get("annotations") or []
    if not isinstance(annotations, list):
        raise ValueError(f"{coco_json_uri}: 'annotations' must be a list")
    summary = ImportSummary()
    images: list[dict[str, Any]] = []
    for i, img in enumerate(coco["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise ValueError(f"{coco_json_uri}: images[{i}] needs 'id' and a string 'file_name', got {img!r}")
        images.append(img)
    boxes_by_image: dict[Any, list[list[float]]] = {img["id"]: [] for img in images}
    wanted = None if category_ids is None else set(category_ids)
    for i, ann in enumerate(annotations):
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if not isinstance(bbox, list) or len(bbox) != 4 or ann.get("image_id") not in boxes_by_image:
            _note(summary.notes, "annotations skipped (no 4-number bbox or unknown image_id)")
            continue
        if wanted is not None and ann.get("category_id") not in wanted:
            continue
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            _note(summary.notes, "annotations skipped (no 4-number bbox or unknown image_id)")
            continue
        boxes_by_image[ann["image_id"]].append([x, y, x + w, y + h])
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
                _note(summary.notes, note)
            if raw and not len(clean):
                raise _Skip(f"all {len(raw)} boxes degenerate")
        except _Skip as err:
            summary.skipped.append({"image": src, "reason": str(err)})
            continue
        records.append(Record(id=ids[i], image=placer.place(src, "images", ids[i]), boxes=_tidy(clean),
                              extra={"coco_id": img["id"]}))
    _apply_splits(records, split, split_by_scene, val_fraction, test_fraction, seed, scene_pattern, summary)
    return _finish(records, summary, out_store, config)


def _coco_size(img: dict[str, Any], src: str) -> tuple[int, int]:
    w, h = img.get("width"), img.get("height")
    if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
        if not storage.exists(src):
            raise _Skip("image not found")
        return w, h
    return _read_size(src)


# --- command line -------------------------------------------------------------------------------
@dataclass
class _SplitOptions(BaseConfig):
    """Options shared by the importers."""

    split: str | None = field(None, help="one split for every record: train | val | test")
    split_by_scene: bool = field(False, help="assign train/val(/test) holding out whole source scenes")
    val_fraction: float = field(0.2, help="fraction of records held out as val (with --split-by-scene)")
    test_fraction: float = field(0.0, help="fraction of records held out as test (with --split-by-scene)")
    scene_pattern: str = field(CVIP_SCENE_PATTERN, help="regex finding the scene key in a file stem (else the stem)")
    seed: int = field(0, help="seed for splits and jitter")
    pad: float = field(0.0, help="grow each box side by this fraction of the box side")
    jitter: float = field(0.0, help="move each box edge by up to this fraction of the box side, in [0, 0.5)")
    copy: bool = field(False, help="copy images/masks into the output store")
    link: bool = field(False, help="symlink the data folder into the (local) output store as 'data'")

    def validate(self) -> None:
        _check_common(self.split, self.split_by_scene, self.val_fraction, self.test_fraction, self.pad, self.jitter)


@dataclass
class ImdlImportConfig(_SplitOptions):
    """IMDL-BenCo list JSON -> store manifest, boxes derived from the masks."""

    index: str = field("", help="IMDL-BenCo list JSON ([[image, mask], [image, \"Negative\"], ...])")
    out: str = field("", help="output store (default: the index's folder)")
    data_root: str | None = field(None, help="folder the index paths are relative to (default: the index's folder)")
    merge_distance: int = field(0, help="merge boxes whose gap is <= this many px (-1: never merge)")
    min_area: int = field(16, help="drop mask components smaller than this many px")
    workers: int = field(4, help="threads reading masks")

    def validate(self) -> None:
        super().validate()
        if not self.index:
            raise ValueError("index is required (--index path/to/index.json)")
        check_range("min_area", self.min_area, 1)
        check_range("workers", self.workers, 1)


@dataclass
class CocoImportConfig(_SplitOptions):
    """COCO detection JSON -> store manifest (bbox [x, y, w, h] -> [x0, y0, x1, y1])."""

    coco_json: str = field("", help="COCO detection JSON")
    image_root: str = field("", help="folder the COCO file_name paths are relative to (default: the JSON's folder)")
    out: str = field("", help="output store (default: the image root)")
    min_side: float = field(1.0, help="drop boxes with a side under this many px after clipping")
    category_ids: list[int] = field([], help="keep only these COCO category ids (default: all)")

    def validate(self) -> None:
        super().validate()
        if not self.coco_json:
            raise ValueError("coco_json is required (--coco-json path/to/instances.json)")


def _run_cli(prog: str, config_cls: type[BaseConfig], argv: list[str], run: Callable[[Any], ImportSummary]) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=(config_cls.__doc__ or "").strip())
    config_cls.add_arguments(parser)
    try:
        config = config_cls.from_args(parser.parse_args(argv))
        summary = run(config)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0 if summary.n_records else 1


def cli_import_imdl(argv: list[str]) -> int:
    """`bpiml import-imdl --index INDEX.json [--out STORE] [--split-by-scene] [--merge-distance N] [--pad F] ...`"""

    def run(c: ImdlImportConfig) -> ImportSummary:
        kwargs = {k: v for k, v in c.to_dict().items() if k not in ("index", "out")}
        return import_imdl(c.index, c.out or parent(c.index), **kwargs)

    return _run_cli("bpiml import-imdl", ImdlImportConfig, argv, run)


def cli_import_coco(argv: list[str]) -> int:
    """`bpiml import-coco --coco-json X.json [--image-root DIR] [--out STORE] ...`"""

    def run(c: CocoImportConfig) -> ImportSummary:
        root = c.image_root or parent(c.coco_json)
        kwargs = {k: v for k, v in c.to_dict().items() if k not in ("coco_json", "image_root", "out")}
        kwargs["category_ids"] = kwargs["category_ids"] or None
        return import_coco(c.coco_json, root, c.out or root, **kwargs)

    return _run_cli("bpiml import-coco", CocoImportConfig, argv, run)
