"""The store manifest: one JSON object per line naming an image, its boxes and (optionally) its mask.

A store is a root URI holding `manifest.jsonl`; every path in a record is relative to that root
and may not escape it (no `..` above the root, no absolute paths, no other bucket). Records are
validated structurally here; whether boxes fit the image is checked later, when the image's size
is known (`bpiml.boxes.sanitize_boxes`).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from bpiml.data import storage

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
SHARDS_DIR = "manifest"  # sharded form: <root>/manifest/*.jsonl
SPLITS = ("train", "val", "test")
_KNOWN_KEYS = ("id", "image", "boxes", "mask", "split")


@dataclass
class Record:
    """One image of a store."""

    id: str  # stable, unique within the store
    image: str  # path relative to the store root
    boxes: list[list[float]]  # [[x0, y0, x1, y1], ...] in pixels; [] for an authentic image
    mask: str | None = None  # ground-truth mask path (evaluation only, never training)
    split: str | None = None  # "train" | "val" | "test" | None
    extra: dict[str, Any] = field(default_factory=dict)  # any other keys, preserved on round trip

    @property
    def is_authentic(self) -> bool:
        return not self.boxes

    def to_dict(self) -> dict[str, Any]:
        """Flat dict: the known keys first, then `extra` merged at top level."""
        d: dict[str, Any] = {
            "id": self.id,
            "image": self.image,
            "boxes": [[float(v) for v in box] for box in self.boxes],
            "mask": self.mask,
            "split": self.split,
        }
        for key, value in self.extra.items():
            if key in d:
                raise ValueError(f"record {self.id!r}: extra key {key!r} clashes with a manifest field")
            d[key] = value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> Record:
        """Validate and build a record; ValueError naming `where` (e.g. "manifest.jsonl:12") and the key."""
        at = f"{where}: " if where else ""
        if not isinstance(d, dict):
            raise ValueError(f"{at}expected a JSON object, got {type(d).__name__}")
        for key in ("id", "image", "boxes"):
            if key not in d:
                raise ValueError(f"{at}missing required key {key!r}")
        rid = d["id"]
        if not isinstance(rid, str) or not rid:
            raise ValueError(f"{at}'id' must be a non-empty string, got {rid!r}")
        at = f"{where}: record {rid!r}: " if where else f"record {rid!r}: "
        image = d["image"]
        if not isinstance(image, str):
            raise ValueError(f"{at}'image' must be a string path, got {type(image).__name__}")
        _check_relative(image, "image", at)
        mask = d.get("mask")
        if mask is not None:
            if not isinstance(mask, str):
                raise ValueError(f"{at}'mask' must be a string path or null, got {type(mask).__name__}")
            _check_relative(mask, "mask", at)
        split = d.get("split")
        if split is not None and split not in SPLITS:
            raise ValueError(f"{at}'split' must be one of {list(SPLITS)} or null, got {split!r}")
        boxes = _parse_boxes(d["boxes"], at)
        extra = {k: v for k, v in d.items() if k not in _KNOWN_KEYS}
        return cls(id=rid, image=image, boxes=boxes, mask=mask, split=split, extra=extra)


def _check_relative(path: str, key: str, at: str) -> None:
    try:
        storage.relative_path(path)
    except ValueError as err:
        raise ValueError(f"{at}{key!r}: {err}") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _parse_boxes(boxes: Any, at: str) -> list[list[float]]:
    if not isinstance(boxes, (list, tuple)):
        raise ValueError(f"{at}'boxes' must be a list of [x0, y0, x1, y1], got {type(boxes).__name__}")
    out = []
    for i, box in enumerate(boxes):
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise ValueError(f"{at}'boxes'[{i}] must be 4 numbers [x0, y0, x1, y1], got {box!r}")
        if not all(math.isfinite(v) for v in box):
            raise ValueError(f"{at}'boxes'[{i}] has a non-finite number: {box!r}")
        out.append([float(v) for v in box])
    return out


# --- locations -------------------------------------------------------------------------------
def store_root(store_or_uri: str) -> str:
    """The store root of a store root or of a manifest URI (its folder)."""
    return storage.parent(store_or_uri) if store_or_uri.endswith(".jsonl") else store_or_uri


def manifest_uri(store: str) -> str:
    """Store root -> `<root>/manifest.jsonl` (the single-file form); a `.jsonl` URI is returned as is."""
    return store if store.endswith(".jsonl") else storage.join(store, MANIFEST_NAME)


def manifest_files(store: str) -> list[str]:
    """The manifest files of a store: `<root>/manifest.jsonl`, else the shards `<root>/manifest/*.jsonl`.

    Large stores keep their manifest as shards (the pseudo-labeling job writes them that way);
    small stores and hand-written ones use the single file. FileNotFoundError names both places.
    """
    if store.endswith(".jsonl"):
        if not storage.exists(store):
            raise FileNotFoundError(f"no manifest at {store}")
        return [store]
    single = storage.join(store, MANIFEST_NAME)
    if storage.exists(single):
        return [single]
    shards = storage.list_files(storage.join(store, SHARDS_DIR), ".jsonl")
    if shards:
        return shards
    raise FileNotFoundError(
        f"no manifest at {single} (nor shards in {storage.join(store, SHARDS_DIR)}/): a store is a folder or "
        "s3:// prefix holding manifest.jsonl, one JSON record per image (see docs/data-formats.md)")


def image_uri(store: str, record: Record) -> str:
    return storage.resolve_in_store(store_root(store), record.image)


def mask_uri(store: str, record: Record) -> str | None:
    return None if record.mask is None else storage.resolve_in_store(store_root(store), record.mask)


# --- read / write ----------------------------------------------------------------------------
def iter_manifest_lines(store_or_uri: str) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
    """Tolerant reader: (`file:line`, parsed dict or the exception) per non-blank line of every manifest file.

    For jobs that reject bad rows instead of failing; validate each dict with
    `Record.from_dict(d, where=...)`.
    """
    for uri in manifest_files(store_or_uri):
        with storage.open_uri(uri, "rb") as f:
            for number, raw in enumerate(f, start=1):
                where = f"{uri}:{number}"
                text = raw.decode("utf-8", errors="replace").strip()
                if text:
                    yield where, parse_line(text, where)


def parse_line(text: str, where: str = "") -> dict[str, Any] | ValueError:
    """One manifest line -> its JSON object, or a ValueError saying what is wrong with it."""
    at = f"{where}: " if where else ""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return ValueError(f"{at}invalid JSON: {err.msg} (column {err.colno})")
    if not isinstance(value, dict):
        return ValueError(f"{at}expected a JSON object, got {type(value).__name__}")
    return value


def parse_record(text: str) -> tuple[Record | None, str, ValueError | None]:
    """One manifest line -> (record, its id, None), or (None, the id if it has one, what is wrong)."""
    value = parse_line(text)
    rid = str(value.get("id", "")) if isinstance(value, dict) else ""
    if isinstance(value, Exception):
        return None, rid, value
    try:
        return Record.from_dict(value), rid, None
    except ValueError as err:
        return None, rid, err


def read_manifest(store_or_uri: str) -> list[Record]:
    """All records (of every shard), strictly: the first bad line raises ValueError naming `file:line`;
    duplicate ids raise. For small stores and tools; jobs stream the manifest with Ray Data instead."""
    records = []
    for where, item in iter_manifest_lines(store_or_uri):
        if isinstance(item, Exception):
            raise item
        records.append(Record.from_dict(item, where=where))
    check_unique_ids(records, store_or_uri)
    return records


def check_unique_ids(records: Iterable[Record], where: str = "") -> None:
    seen: set[str] = set()
    dups: list[str] = []
    for r in records:
        if r.id in seen and r.id not in dups:
            dups.append(r.id)
        seen.add(r.id)
    if dups:
        shown = ", ".join(repr(d) for d in dups[:10]) + (f" and {len(dups) - 10} more" if len(dups) > 10 else "")
        raise ValueError(f"{where + ': ' if where else ''}duplicate record id(s): {shown}")


def write_manifest(records: Iterable[Record | dict[str, Any]], store_or_uri: str) -> str:
    """Validate and write records as JSONL (atomically on local disk); returns the URI written."""
    uri = manifest_uri(store_or_uri)
    parsed = [r if isinstance(r, Record) else Record.from_dict(r, where=f"record #{i}") for i, r in enumerate(records)]
    for r in parsed:  # Records built in code skip from_dict: validate them the same way
        Record.from_dict(r.to_dict())
    check_unique_ids(parsed, uri)
    lines = [json.dumps(r.to_dict(), ensure_ascii=False, allow_nan=False) for r in parsed]
    storage.write_bytes(uri, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
    logger.info("wrote %d records to %s", len(parsed), uri)
    return uri
