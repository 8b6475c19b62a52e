"""The photo pool a synthesizer run draws from, and the optional pool of object shapes.

The pool is a folder (or s3:// prefix) of images, or a store whose authentic records (no boxes)
are used. It is listed once on the driver, sorted, and named by paths relative to its root; its
hash is part of an output's recipe, so photos added to the folder later cannot silently change
what index `i` of an existing output means.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from bpiml.data import inputs, manifest, storage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pool:
    root: str  # folder or store root (absolute or s3://)
    paths: tuple[str, ...]  # sorted, relative to root

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.paths).encode()).hexdigest()[:16]


def _store_paths(root: str, *, want_masks: bool, all_records: bool, split: str) -> list[str]:
    """Paths (relative to `root`) of a store's images or GT masks, from the records of `split` ('' = every
    split); each passes the store's escape rule (no `..` out of it, no symlink leaving it) or is skipped."""
    out, prefix = [], root.rstrip("/") + "/"
    for where, item in manifest.iter_manifest_lines(root):
        if isinstance(item, Exception):
            logger.warning("skipped %s", item)
            continue
        try:
            record = manifest.Record.from_dict(item, where=where)
            if split and (record.split or "train") != split:
                continue
            if want_masks:
                uri = manifest.mask_uri(root, record) if record.mask and record.boxes else None
            else:
                uri = manifest.image_uri(root, record) if all_records or not record.boxes else None
        except ValueError as err:
            logger.warning("skipped %s", err)
            continue
        if uri is not None and uri.startswith(prefix):
            out.append(uri[len(prefix):])
    return out


def photo_pool(photos: str, all_photos: bool = False, split: str = "train") -> Pool:
    """The photos of a folder or store; FileNotFoundError/ValueError naming `photos` when there are none."""
    root = storage.absolute(photos)
    kind = inputs.detect(root)
    if kind == "folder":  # paths as listed below the root (a symlinked photo keeps its link's name)
        prefix = root.rstrip("/") + "/"
        paths = [u[len(prefix):] for u in inputs.image_files(root) if u.startswith(prefix)]
    elif kind == "store":
        root = manifest.store_root(root)
        paths = _store_paths(root, want_masks=False, all_records=all_photos, split=split)
    else:
        raise ValueError(f"photos {photos}: a {kind} input; give a folder of images or a store (import it first "
                         f"with `bpiml import-{kind}`)")
    if not paths:
        what = "records" if all_photos else "authentic records (no boxes; --all-photos uses every record)"
        what += f" in split {split!r} (--pool-split '' uses every split)" if split else ""
        raise ValueError(f"photos {photos}: no {what if kind == 'store' else 'images'} to make forgeries from")
    return Pool(root, tuple(sorted(set(paths))))


def shape_pool(shapes: str, split: str = "train") -> Pool | None:
    """GT masks of the forged records of a store's `split` (object shapes for regions), or None for ''."""
    if not shapes:
        return None
    root = manifest.store_root(storage.absolute(shapes))
    paths = _store_paths(root, want_masks=True, all_records=True, split=split)
    if not paths:
        raise ValueError(f"shapes {shapes}: no records with boxes and a GT mask" + (f" in split {split!r}" if split else ""))
    return Pool(root, tuple(sorted(set(paths))))
