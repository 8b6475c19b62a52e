"""Test sets for evaluation: `name=URI` specs, groups of sets, and the images of one set.

A test set is an IMDL-BenCo list JSON `[[image, mask], [image, "Negative"], ...]` (read by the
importers' parser: paths relative to the list's folder, repeats dropped and reported) or a store
(records of `split` with a GT mask are manipulated, records without boxes and mask authentic,
records with boxes but no mask skipped and counted); a COCO file or a folder of images is imported
into a store once (`bpiml.data.inputs.as_store`) and is then the whole test set.

`EvalSet.dataset` streams a set's items `{set, degradation, id, image, mask, error}`: a store's
manifest (one file or shards, local or s3://) is read by Ray Data's read tasks and its lines become
items in CPU tasks (`manifest_items`, shared with batch prediction), so no record passes through the
driver; an IMDL-BenCo list is one JSON document, small by nature (an image path per entry), and is
read on the driver.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from bpiml.data import inputs, manifest
from bpiml.data.importers.imdl import parse_imdl_list
from bpiml.data.importers.summary import unique_ids
from bpiml.runtime.counter import add_counts
from bpiml.runtime.datasets import READ_CPUS, read_lines

logger = logging.getLogger(__name__)


def parse_datasets(specs: list[str]) -> dict[str, str]:
    """`["a=path/a.json", "s3://b/store"]` -> {"a": ..., "store": ...}; duplicate names are errors."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, uri = spec.partition("=")
        if not sep or "://" in name or "/" in name:
            uri = spec
            base = posixpath.basename(spec.rstrip("/"))
            name = re.sub(r"\.(json|jsonl)$", "", base)
            if name in ("index", "manifest"):
                name = posixpath.basename(posixpath.dirname(spec.rstrip("/"))) or name
        name, uri = name.strip(), uri.strip()
        if not name or not uri:
            raise ValueError(f"test set {spec!r}: expected name=URI")
        if name in out:
            raise ValueError(f"test set name {name!r} given twice")
        out[name] = uri
    return out


def parse_groups(specs: list[str]) -> dict[str, list[str]]:
    """`["in_dist=a,b", "ood=c"]` -> {"in_dist": ["a", "b"], "ood": ["c"]}."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, members = spec.partition("=")
        items = [m.strip() for m in members.split(",") if m.strip()]
        if not sep or not name.strip() or not items:
            raise ValueError(f"group {spec!r}: expected name=set1,set2")
        out[name.strip()] = items
    return out


def load_test_list(uri: str) -> list[dict[str, str]]:
    """Items `{"id", "image", "mask"}` (full URIs; mask "" for authentic images) of an IMDL-BenCo list.

    Read by the importers' parser (`parse_imdl_list`): an image listed twice is scored once, and the
    repeats are reported; a bad entry raises ValueError naming it.
    """
    listed = parse_imdl_list(uri)
    if listed.repeats:
        logger.warning("%s: %d repeated entr%s dropped (each image is scored once)", uri, listed.repeats,
                       "y" if listed.repeats == 1 else "ies")
    bad = [s for s in listed.skipped if s.get("bad")]
    if bad:
        raise ValueError(f"{uri}: {bad[0]['reason']} (entries are [image, mask or \"Negative\"], paths inside "
                         "the list's folder, absolute, or s3:// URIs)")
    ids = unique_ids([image for image, _ in listed.pairs])  # the image's name, as the importer names it
    return [{"id": rid, "image": image, "mask": mask or ""} for rid, (image, mask) in zip(ids, listed.pairs)]


def manifest_items(batch: dict[str, Any], store: str, split: str | None, need_gt: bool = False,
                   counter: Any = None, skipped_key: str = "skipped") -> dict[str, np.ndarray]:
    """Manifest lines -> {id, image URI, mask URI ("" when none), error} rows of the wanted split; a line
    that is no record (or a path that leaves the store) becomes an error row (the line's start as `image`).

    With `need_gt` (evaluation) a record must hold pixel GT or be authentic: records with boxes but
    no mask are left out and counted in `counter` under `skipped_key`.
    """
    rows: dict[str, list[str]] = {"id": [], "image": [], "mask": [], "error": []}
    skipped = 0
    for text in batch["text"]:
        record, rid, err = manifest.parse_record(str(text))
        if record is None:
            values = (rid, str(text)[:200], "", f"bad record: {err}")
        elif split and record.split != split:
            continue
        elif need_gt and record.mask is None and record.boxes:
            skipped += 1
            continue
        else:
            try:  # a path that leaves the store (through a symlink) is that record's reject, not the job's end
                mask = (manifest.mask_uri(store, record) or "") if need_gt else ""
                values = (record.id, manifest.image_uri(store, record), mask, "")
            except ValueError as path_err:
                values = (record.id, record.image, "", f"bad record: {path_err}")
        for key, value in zip(rows, values):
            rows[key].append(value)
    if skipped:
        add_counts(counter, {skipped_key: skipped})
    return {k: np.asarray(v, dtype=object) for k, v in rows.items()}


def with_degradations(batch: dict[str, Any], set_name: str, degradations: list[str]) -> dict[str, np.ndarray]:
    """Item rows -> one copy per degradation, with the set's name: {set, degradation, id, image, mask, error}."""
    n, copies = len(batch["id"]), len(degradations)
    out = {k: np.concatenate([np.asarray(batch[k], dtype=object)] * copies) for k in ("id", "image", "mask", "error")}
    out["set"] = np.full(n * copies, set_name, dtype=object)
    out["degradation"] = np.repeat(np.asarray(degradations, dtype=object), n)
    return out


@dataclass
class EvalSet:
    """One test set, resolved on the driver before the cluster does any work (`open`)."""

    name: str
    uri: str  # the store (COCO files and folders: their import) or the IMDL-BenCo list
    split: str | None  # records of this split of a store (None: all)
    listed: list[dict[str, str]] | None = None  # an IMDL-BenCo list's items, read on the driver
    files: tuple[str, ...] = ()  # a store's manifest files (one, or its shards)

    @classmethod
    def open(cls, name: str, uri: str, split: str | None, import_root: str, limit: int = 0) -> EvalSet:
        """A list is read and checked, a store's manifest found, a COCO file or folder imported (once)."""
        if uri.endswith(".json") and inputs.detect(uri) == "imdl":
            listed = load_test_list(uri)[: limit or None]
            if not listed:
                raise ValueError(f"test set {name!r} ({uri}) has no images")
            return cls(name, uri, None, listed)
        store, kind = inputs.as_store(uri, import_root)
        files = tuple(manifest.manifest_files(store))  # no manifest: FileNotFoundError now, not in a read task
        return cls(name, store, split if kind == "store" else None, files=files)

    def dataset(self, degradations: list[str], counter: Any, limit: int = 0) -> ray.data.Dataset:
        """The set's items for every degradation (the first `limit` images of the set, 0: all)."""
        if self.listed is not None:
            items = ray.data.from_items([{**item, "error": ""} for item in self.listed])
        else:
            items = read_lines(list(self.files)).map_batches(
                manifest_items, batch_format="numpy", num_cpus=READ_CPUS,
                fn_kwargs={"store": self.uri, "split": self.split, "need_gt": True, "counter": counter,
                           "skipped_key": f"skipped/{self.name}"})
            if limit:
                items = items.limit(limit)
        return items.map_batches(with_degradations, fn_kwargs={"set_name": self.name, "degradations": degradations},
                                 batch_format="numpy", num_cpus=READ_CPUS)
