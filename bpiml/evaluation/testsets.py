"""Test sets for evaluation: `name=URI` specs, groups of sets, and the images of one set.

A test set is an IMDL-BenCo list JSON `[[image, mask], [image, "Negative"], ...]` (read by the
importers' parser: paths relative to the list's folder, repeats dropped and reported) or a store
(records of `split` with a GT mask are manipulated, records without boxes and mask authentic,
records with boxes but no mask skipped and counted).
"""

from __future__ import annotations

import logging
import posixpath
import re

from bpiml.data import manifest
from bpiml.data.importers.imdl import parse_imdl_list
from bpiml.data.importers.summary import unique_ids

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


def load_test_set(uri: str, split: str | None = "test") -> list[dict[str, str]]:
    """Items `{"id", "image", "mask"}` (full URIs; mask "" for authentic images) of one test set.

    An IMDL-BenCo list is read by the importers' parser (`parse_imdl_list`): an image listed twice
    is scored once, and the repeats are reported.
    """
    if uri.endswith(".json"):
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
    records = manifest.read_manifest(uri)
    if split:
        records = [r for r in records if r.split == split]
    items, skipped = [], 0
    for r in records:
        if r.mask is None and r.boxes:
            skipped += 1
            continue
        items.append({"id": r.id, "image": manifest.image_uri(uri, r), "mask": manifest.mask_uri(uri, r) or ""})
    if skipped:
        logger.warning("%s: %d record(s) with boxes but no GT mask skipped", uri, skipped)
    return items


