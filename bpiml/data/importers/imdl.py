"""IMDL-BenCo list JSON -> a store manifest, with boxes derived from the ground-truth masks.

The list is the field's common format: `[[image, mask], [image, "Negative"], ...]`, paths relative
to the list's folder (or `data_root`), absolute, or URIs. `parse_imdl_list` is the one reader of
such lists (the evaluation job uses it too): paths are normalised (`a/../b` -> `b`), and an image
listed more than once is kept once, the repeats reported (the CVIP index lists 18 images 7 times).

The store references the data where it lies when it can (no copy of millions of files):

* data under the output store (the common case: `manifest.jsonl` written next to `index.json`):
  manifest paths are plain relative paths;
* `link=True` (local stores): one symlink `<out>/data` -> the data folder, paths go through it;
* `copy=True`: images and masks are copied into `<out>/images/` and `<out>/masks/`;
* otherwise a ValueError says which of these to pick, before any work is done.

A record whose image or mask is missing or unreadable is skipped and listed in the summary.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from bpiml.data import storage
from bpiml.data.boxes import (
    boxes_from_mask,
    fill_boxes,
    jitter_boxes,
    pad_boxes,
    sanitize_boxes,
)
from bpiml.data.imageio import DecodeError, decode_mask
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

NEGATIVE = "Negative"


@dataclass
class ImdlList:
    """A parsed IMDL-BenCo list: (image URI, mask URI or None for authentic) pairs, in list order."""

    pairs: list[tuple[str, str | None]]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"image", "reason"[, "bad"]}: malformed, escaping, repeated
    repeats: int = 0  # entries dropped because their image was listed before


def _dedupe_key(uri: str) -> str:
    return uri if storage.is_s3(uri) else os.path.realpath(storage.local_path(uri))


def parse_imdl_list(uri: str, data_root: str | None = None) -> ImdlList:
    """Read an IMDL-BenCo list; malformed entries and repeated images are skipped with a reason."""
    entries = read_json(uri, "IMDL-BenCo list")
    if not isinstance(entries, list):
        raise ValueError(f"{uri}: expected a JSON list of [image, mask] pairs, got {type(entries).__name__}")
    base = data_root or storage.parent(uri)
    out = ImdlList(pairs=[])
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not all(isinstance(p, str) and p for p in entry):
            out.skipped.append({"image": f"{uri}[{i}]", "reason": f"entry {i}: malformed {entry!r}", "bad": "1"})
            continue
        try:
            image = resolve_source(base, entry[0])
            mask = None if entry[1] == NEGATIVE else resolve_source(base, entry[1])
        except ValueError as err:
            out.skipped.append({"image": f"{uri}[{i}]", "reason": f"entry {i}: {err}", "bad": "1"})
            continue
        key = _dedupe_key(image)
        if key in first:  # an image listed twice would be trained on and scored twice
            j = first[key]
            same = "same mask" if entries[j][1] == entry[1] else f"other mask {entry[1]!r}"
            out.skipped.append({"image": image, "reason": f"duplicate of index entry {j} ({same})"})
            out.repeats += 1
            continue
        first[key] = i
        out.pairs.append((image, mask))
    return out


@dataclass
class _BoxOptions:
    merge_distance: int
    min_area: int
    pad: float
    jitter: float
    seed: int


def _boxes_for_mask(uri: str, width: int, height: int, options: _BoxOptions,
                    notes: list[str]) -> tuple[list[list[int]], float]:
    try:
        mask = decode_mask(storage.read_bytes(uri), name=uri)
    except FileNotFoundError:
        raise SkipRecord(f"mask not found: {uri}") from None
    except DecodeError as err:
        raise SkipRecord(f"mask unreadable: {err.reason}: {uri}") from None
    if mask.shape != (height, width):
        raise SkipRecord(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size {width}x{height}")
    if not mask.any():
        raise SkipRecord("empty mask (no manipulated pixel) for an image listed as manipulated")
    boxes = boxes_from_mask(mask, options.merge_distance, options.min_area)
    if not boxes:
        notes.append(f"all mask components under min_area={options.min_area} px, kept them")
        boxes = boxes_from_mask(mask, options.merge_distance, min_area=1)
    union = fill_boxes(mask.shape, boxes)
    return boxes, float(mask.sum() / max(int(union.sum()), 1))


def _import_pair(i: int, rid: str, image_src: str, mask_src: str | None, placer: Placer,
                 options: _BoxOptions) -> tuple[Record, list[str], float | None]:
    """One list entry -> (record, notes, tight-box fill or None); raises SkipRecord."""
    notes: list[str] = []
    width, height = read_image_size(image_src)
    boxes: list[list[float]] = []
    fill = None
    if mask_src is not None:
        boxes, fill = _boxes_for_mask(mask_src, width, height, options, notes)
        boxes = pad_boxes(boxes, options.pad, width, height) if options.pad else boxes
        if options.jitter:
            boxes = jitter_boxes(boxes, options.jitter, np.random.default_rng([options.seed, i]), width, height)
        clean, clean_notes = sanitize_boxes(boxes, width, height)
        notes += clean_notes
        boxes = tidy_boxes(clean)
    record = Record(id=rid, image=placer.place(image_src, "images", rid), boxes=boxes,
                    mask=None if mask_src is None else placer.place(mask_src, "masks", rid))
    return record, notes, fill


def import_imdl(index_uri: str, out_store: str, *, data_root: str | None = None, merge_distance: int = 0,
                pad: float = 0.0, jitter: float = 0.0, seed: int = 0, min_area: int = 16, split: str | None = None,
                copy: bool = False, link: bool = False, split_by_scene: bool = False, val_fraction: float = 0.2,
                test_fraction: float = 0.0, scene_pattern: str = CVIP_SCENE_PATTERN, workers: int = 4) -> ImportSummary:
    """IMDL-BenCo list JSON `[[image, mask], [image, "Negative"], ...]` -> `<out_store>/manifest.jsonl`.

    Boxes are the mask's connected components (`boxes_from_mask`), then padded and jittered;
    "Negative" -> boxes [] and no mask.
    """
    config = dict(locals())
    check_split_options(split, split_by_scene, val_fraction, test_fraction, pad, jitter)
    listed = parse_imdl_list(index_uri, data_root)
    summary = ImportSummary(skipped=[{"image": s["image"], "reason": s["reason"]} for s in listed.skipped])
    placer = Placer(out_store, data_root or storage.parent(index_uri), copy, link)
    placer.check([p for pair in listed.pairs for p in pair if p is not None])
    ids = unique_ids([img for img, _ in listed.pairs])
    options = _BoxOptions(merge_distance, min_area, pad, jitter, seed)

    def one(i: int) -> tuple[Record, list[str], float | None] | tuple[str, str]:
        try:
            return _import_pair(i, ids[i], *listed.pairs[i], placer, options)
        except SkipRecord as err:
            return listed.pairs[i][0], str(err)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, range(len(listed.pairs))))
    records, fills = [], []
    for res in results:
        if len(res) == 2:
            summary.skipped.append({"image": res[0], "reason": res[1]})
            continue
        record, notes, fill = res
        for note in notes:
            summary.count_note(note)
        if fill is not None:
            fills.append(fill)
        records.append(record)
    summary.mean_box_fill = float(np.mean(fills)) if fills else None
    apply_splits(records, split, split_by_scene, val_fraction, test_fraction, seed, scene_pattern, summary)
    return write_import(records, summary, out_store, config)
