"""The pseudo-labeled store: what the pseudo-labeling job writes and training reads.

    <out>/index.json              format, source (the input store), teacher, records per teacher, runs, complete
    <out>/manifest/               the manifest as shards (`bpiml.data.parts`): one record per labeled image
    <out>/pseudo/<stem>.<fp>.png  one-channel 0/255 mask at the image's size (<stem>: `naming.file_stem(id)`,
                                  <fp>: the record's mask fingerprint, so a relabeled image gets a new file)
    <out>/rejects/                the latest run's rejects (`bpiml.data.rejects` rows)
    <out>/config.json             the latest run's resolved config
    <out>/summary.json            the latest run's counts, throughput and mean pseudo-vs-GT IoU
    <out>/.lock                   held while a job writes (`bpiml.data.lock.LOCK_FILE`)
    <out>/todo/                   while a run labels: its planned rows, wave by wave (`bpiml.pseudolabel.waves`)
    <out>/review/                 human review decisions and corrected masks (`bpiml.pseudolabel.reviews`)

A record is the input record (its `image` and `mask` stay relative to the input store) plus
`pseudo_mask`, `teacher`, `teacher_version`, `teacher_identity`, `fingerprint`, `mask_area`,
`iou_gt`, `width`, `height`, `notes`, the teacher's confidence `confidence` (the image's: the minimum
over its boxes; null for the box teacher or no boxes) and `box_confidence` (one per box, in the order
of `boxes`), and for SAM `sam_pred_iou` and `sam_stability` per box (docs/data-formats.md).
`RECORD_VERSION` is part of every record's fingerprint: a record written before a change of these
fields is relabeled by the next run (its mask keeps its file when the mask is unchanged).

The input store is named once, in `index.json`, by a *source reference* that obeys the same
trust rule as every other path: relative to the pseudo store's parent folder (`../store` beside
`../pseudo`), or a prefix of the pseudo store's own bucket. Anything else (another bucket, an
unrelated local folder) is written as given and read only with `allow_external_source`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from bpiml.data import manifest, naming, parts, storage
from bpiml.data.rejects import REJECTS_DIR

FORMAT = "bpiml-pseudo/2"
RECORD_VERSION = 2  # the output record's fields (2: teacher confidence); in fingerprints, so a change relabels
INDEX_FILE = "index.json"
PSEUDO_DIR = "pseudo"
SUPERSEDE_DIR = "supersede"


def mask_path(record_id: str, mask_fingerprint: str) -> str:
    """Where a record's pseudo mask lives, relative to the pseudo store."""
    return f"{PSEUDO_DIR}/{naming.file_stem(record_id)}.{mask_fingerprint[:10]}.png"


# --- the input store, by reference --------------------------------------------------------------
def source_reference(store: str, out: str) -> dict[str, str]:
    """How `out` names its input `store`: {"base": "parent" | "bucket" | "external", "path": ...}."""
    store, out = storage.absolute(store).rstrip("/"), storage.absolute(out).rstrip("/")
    if storage.is_s3(store) and storage.is_s3(out):
        (bucket, key), (out_bucket, _) = storage.split_s3(store), storage.split_s3(out)
        if bucket == out_bucket and key:
            return {"base": "bucket", "path": key}
    elif not storage.is_s3(store) and not storage.is_s3(out):
        parent = os.path.dirname(out)
        rel = os.path.relpath(store, parent)
        if rel != "." and not rel.startswith(".."):
            return {"base": "parent", "path": rel.replace(os.sep, "/")}
    return {"base": "external", "path": store}


def resolve_source(out: str, reference: Any, allow_external: bool = False) -> str:
    """The input store URI a pseudo store names; ValueError when the reference is not allowed."""
    if not isinstance(reference, dict) or reference.get("base") not in ("parent", "bucket", "external"):
        raise ValueError(f"{out}: source must be a reference {{'base', 'path'}}, got {reference!r}")
    base, path = reference["base"], str(reference.get("path") or "")
    if base == "parent":
        if storage.is_s3(out):
            raise ValueError(f"{out}: a 'parent' source reference is for local stores")
        return storage.resolve_in_store(storage.parent(storage.absolute(out)), path)
    if base == "bucket":
        if not storage.is_s3(out):
            raise ValueError(f"{out}: a 'bucket' source reference is for s3:// stores")
        bucket, _ = storage.split_s3(out)
        return storage.resolve_in_store(storage.s3_uri(bucket), path)
    if not allow_external:
        raise ValueError(
            f"{out} names its input store {path}, outside its own bucket/folder. Reading it could read "
            "anything, so it needs an explicit allow: pass --allow-external-source (or "
            "allow_external_source: true) if you trust this store")
    return path


# --- the index --------------------------------------------------------------------------------
def index_uri(out: str) -> str:
    return storage.join(out, INDEX_FILE)


def read_index(out: str) -> dict[str, Any] | None:
    uri = index_uri(out)
    if not storage.exists(uri):
        return None
    try:
        index = json.loads(storage.read_bytes(uri))
    except ValueError as err:
        raise ValueError(f"{uri} is not valid JSON ({err}); it is rewritten by the next pseudo-labeling run") from err
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{uri}: not a {FORMAT} index (format {index.get('format') if isinstance(index, dict) else '?'})")
    return index


def write_index(out: str, index: dict[str, Any]) -> None:
    storage.write_json(index_uri(out), {"format": FORMAT, **index}, sort_keys=True)


def read_rejects(out: str) -> list[dict[str, Any]]:
    """The latest run's reject rows (small: for tools and tests, not for 100M-image outputs)."""
    return list(parts.iter_table(storage.join(out, REJECTS_DIR)))


@dataclasses.dataclass
class PseudoStore:
    """A pseudo-labeled store opened for reading: where its records' files are (the trust rule applied)."""

    root: str  # the pseudo store
    source: str  # its input store, where `image` and `mask` of a record are
    index: dict[str, Any]

    @classmethod
    def open(cls, uri: str, allow_external: bool = False) -> PseudoStore:
        root = storage.absolute(manifest.store_root(uri))
        index = read_index(root) or {}
        if index and not index.get("complete"):
            raise ValueError(f"pseudo store {root} is incomplete: a pseudo-labeling run into it was interrupted or "
                             "is still running; rerun the same pseudo-labeling command to finish it")
        source = resolve_source(root, index["source"], allow_external) if index.get("source") else root
        return cls(root, source, index)

    def image(self, record: manifest.Record) -> str:
        return storage.resolve_in_store(self.source, record.image)

    def mask(self, record: manifest.Record) -> str | None:
        return storage.resolve_in_store(self.source, record.mask) if record.mask else None

    def pseudo_mask(self, record: manifest.Record) -> str | None:
        rel = record.extra.get("pseudo_mask")
        return storage.resolve_in_store(self.root, rel) if rel else None
