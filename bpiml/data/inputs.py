"""One input vocabulary for every job that reads images: a store, an IMDL-BenCo list, a COCO file
or a plain folder of images, recognised by what the path holds.

    store, kind = inputs.as_store("data/casia/index.json", import_root="out/inputs")

- a **store** (`<root>/manifest.jsonl`, shards `<root>/manifest/*.jsonl`, or a `.jsonl` file) is
  used as it is;
- an **IMDL-BenCo list** (`.json` holding a list of `[image, mask or "Negative"]`), a **COCO file**
  (`.json` with `images` and `annotations`) and a **folder** (or `s3://` prefix) of images are
  imported once into `<import_root>/<kind>-<name>-<fingerprint>/` and that store is used. Local
  data is referenced through one declared symlink (nothing copied); `s3://` data is copied, since
  S3 has no links. The fingerprint covers the input's bytes (or, for a folder, its listing) and the
  import options, so an unchanged input is imported once and a changed one again.

The import folder is chosen by the job (beside its outputs), never inside the user's input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from typing import Any

from bpiml.data import manifest, naming, storage
from bpiml.data.importers.coco import import_coco
from bpiml.data.importers.imdl import import_imdl
from bpiml.data.importers.placement import Placer, inside
from bpiml.data.importers.summary import ImportSummary, SkipRecord, read_image_size, read_json, write_import
from bpiml.data.manifest import Record

logger = logging.getLogger(__name__)

KINDS = ("store", "imdl", "coco", "folder")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
DONE_NAME = "bpiml_import.json"  # written last: an import folder without it is redone
FOR_TRAINING = {"split_by_scene": True, "val_fraction": 0.2}  # an imported list holds out whole scenes as val
FORMS = ("a store (manifest.jsonl or manifest/*.jsonl), an IMDL-BenCo list (.json: [[image, mask or "
         "\"Negative\"], ...]), a COCO file (.json with images and annotations), or a folder of images")


def _json_kind(uri: str) -> str:
    data = read_json(uri, "an IMDL-BenCo list or a COCO file")
    if isinstance(data, list):
        return "imdl"
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return "coco"
    raise ValueError(f"{uri}: a JSON input must be an IMDL-BenCo list or a COCO file (images + annotations); "
                     f"this one is a {type(data).__name__}" + (f" with keys {sorted(data)[:6]}" if isinstance(data, dict) else ""))


def image_files(uri: str) -> list[str]:
    """Every image below a folder or prefix (recursive, sorted), as full URIs."""
    fs, path = storage.filesystem(uri)
    try:
        found = fs.find(path)
    except FileNotFoundError:
        return []
    names = found if isinstance(found, list) else list(found)
    prefix = "s3://" if storage.is_s3(uri) else ""
    return sorted(prefix + n for n in names if n.lower().endswith(IMAGE_SUFFIXES))


def detect(uri: str) -> str:
    """`store`, `imdl`, `coco` or `folder`; FileNotFoundError naming the four forms when it is none."""
    try:  # names a missing path, a missing bucket, refused or missing credentials
        storage.check_readable(uri)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; an input is {FORMS}") from None
    if uri.endswith(".jsonl"):
        return "store"
    if uri.endswith(".json"):
        return _json_kind(uri)
    try:
        manifest.manifest_files(uri)
        return "store"
    except FileNotFoundError:
        pass
    if image_files(uri):
        return "folder"
    raise FileNotFoundError(f"{uri} holds no manifest and no images; an input is {FORMS}")


def _fingerprint(uri: str, kind: str, options: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps({"uri": uri, "kind": kind, "options": options}, sort_keys=True).encode())
    if kind == "folder":
        for image in image_files(uri):
            digest.update(f"{image}\0{storage.size(image)}\n".encode())
    else:
        digest.update(storage.read_bytes(uri))
    return digest.hexdigest()[:12]


def import_folder(folder: str, out_store: str, *, copy: bool = False, link: bool = False,
                  split: str | None = None) -> ImportSummary:
    """A folder of images -> a store of authentic-or-unknown records (no boxes, no masks): for
    prediction, or for evaluating image-level scores. Ids are the file stems, made unique."""
    images = image_files(folder)
    placer = Placer(out_store, folder, copy, link)
    placer.check(images)
    summary = ImportSummary()
    records = []
    for image in images:
        rid = posixpath.splitext(inside(folder, image) or posixpath.basename(image))[0]  # its path below: unique
        try:
            read_image_size(image)
        except SkipRecord as err:
            summary.skipped.append({"image": image, "reason": str(err)})
            continue
        records.append(Record(id=rid, image=placer.place(image, "images", rid), boxes=[], split=split))
    return write_import(records, summary, out_store, {"folder": folder, "split": split})


def _run_import(kind: str, uri: str, dest: str, options: dict[str, Any]) -> ImportSummary:
    placement = {"copy": True} if storage.is_s3(uri) or storage.is_s3(dest) else {"link": True}
    if kind == "imdl":
        return import_imdl(uri, dest, **placement, **options)
    if kind == "coco":
        return import_coco(uri, storage.parent(uri), dest, **placement, **options)
    return import_folder(uri, dest, **placement, split=options.get("split"))


def import_dir(uri: str, kind: str, import_root: str, options: dict[str, Any]) -> str:
    name = naming.slug(posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0])
    if name in ("index", "annotations", "item"):  # a generic file name: say which dataset
        name = naming.slug(posixpath.basename(storage.parent(uri.rstrip("/"))))
    return storage.join(import_root, f"{kind}-{name}-{_fingerprint(uri, kind, options)}")


def require_boxes(uri: str, kind: str, job: str) -> None:
    """A folder of images has no boxes: say what `job` needs instead of labeling or training on nothing."""
    if kind == "folder":
        raise ValueError(f"{uri} is a folder of images without boxes or masks: {job} needs a store whose "
                         "manifest.jsonl gives each image's boxes (docs/data-formats.md), an IMDL-BenCo list or a "
                         "COCO file; a plain folder is for jobs/predict.py")


def as_store(uri: str, import_root: str, options: dict[str, Any] | None = None) -> tuple[str, str]:
    """(store URI, kind) for any input form; non-store inputs are imported under `import_root` once.

    `options` go to the importer (e.g. `{"split": "test"}`, or box padding for IMDL lists)."""
    kind = detect(uri)
    if kind == "store":
        return uri, kind
    options = dict(options or {})
    dest = import_dir(storage.absolute(uri), kind, import_root, options)
    done = storage.join(dest, DONE_NAME)
    if storage.exists(done):
        logger.info("%s (%s): using its import %s", uri, kind, dest)
        return dest, kind
    logger.info("%s is %s: importing it into %s (once; reused while it is unchanged)", uri,
                {"imdl": "an IMDL-BenCo list", "coco": "a COCO file", "folder": "a folder of images"}[kind], dest)
    summary = _run_import(kind, uri, dest, options)
    if not summary.n_records:
        raise ValueError(f"{uri}: no usable images ({len(summary.skipped)} skipped, e.g. "
                         f"{summary.skipped[0] if summary.skipped else 'none listed'})")
    logger.info("imported %d records from %s (%d skipped)", summary.n_records, uri, len(summary.skipped))
    storage.write_json(done, {"input": uri, "kind": kind, "options": options, "records": summary.n_records})
    return dest, kind
