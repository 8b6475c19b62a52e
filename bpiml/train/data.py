"""Training data on Ray Data: a pseudo-labeled store -> decoded, augmented batches for each worker.

    read_text(manifest shards) -> sample_rows -> split train / val
        -> decode_samples (CPU tasks: image, target and GT mask, resized to the model's input size)
        -> [materialize: small stores keep the decoded images in the object store]
        -> train only: randomize_block_order (a new order each epoch) -> augment_samples (CPU tasks)
    TorchTrainer(datasets={"train": ..., "val": ...}) gives each worker its shard; the loop takes
    batches with a local shuffle buffer. With several stores (--add-store) each is read and
    decoded this way and an epoch draws from each its weight's share (`bpiml.train.mixing`);
    its samples carry `store`, the store's index (0 = --store).

Targets by supervision: `pseudo`, the teacher's mask (`pseudo_mask`, relative to the pseudo store);
`gt`, the ground-truth mask (the upper bound); `box`, the record's boxes filled. Validation always
scores against ground truth. A sample whose files cannot be read, or whose target does not have its
image's size, arrives with `ok=False` and its reason: the loop skips and counts it.

Human review (`bpiml.pseudolabel.reviews`, decisions read once on the driver) is applied to each record
first: a rejected record is never used, a corrected one trains on its `reviewed_mask`. A train record
whose teacher `confidence` is below `min_confidence` is left out unless a human accepted or corrected it
(a null confidence, e.g. the box teacher's, is kept). `weight` is the confidence (1 when null or reviewed),
used by the loss with --confidence-weight.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import cv2
import numpy as np

from bpiml.data import imageio, manifest, storage
from bpiml.data.boxes import fill_boxes
from bpiml.pseudolabel import reviews
from bpiml.train.augment import Augment
from bpiml.train.config import StoreSpec

logger = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("id", "split", "image", "target", "gt", "boxes", "ok", "reason", "weight", "review")
REJECTED = "rejected in review"  # skip reasons that the registered model's review counts read
FILTERED = "confidence below --min-confidence"
CACHE_LIMIT = 20_000  # stores with at most this many train samples keep their decoded images cached


@dataclasses.dataclass
class StorePart:
    """One training store as the driver sees it (its checks, what each epoch draws from it)."""

    spec: StoreSpec
    n_train: int  # usable train records (after --limit)
    skipped: dict[str, int]  # reason -> records left out before decoding
    train: Any  # its decoded train samples alone: the driver reads the first one as a check
    draws: float = 0.0  # expected samples per epoch (with --add-store; bpiml.train.mixing)
    epoch: Any = None  # one epoch's draws from it, decoded (with --add-store)
    review: dict[str, int] = dataclasses.field(default_factory=dict)  # datasets.review_counts of all its records


@dataclasses.dataclass
class TrainingData:
    train: Any  # ray.data.Dataset of decoded (and, per epoch, augmented) train samples
    val: Any  # ray.data.Dataset of decoded validation samples (GT masks); train samples when there are none
    n_train: int
    n_val: int  # validation samples with a GT mask (0: the loop reports no validation metrics)
    skipped: dict[str, int]  # reason -> records left out before decoding
    teacher: dict[str, Any]  # what made the pseudo masks (from the store's index)
    source: str  # the input store the images come from
    parts: list[StorePart] = dataclasses.field(default_factory=list)  # the stores, --store first
    review: dict[str, int] = dataclasses.field(default_factory=dict)  # reviewed/accepted/corrected/rejected/filtered


# --- records -> samples --------------------------------------------------------------------------
def _sample(record: manifest.Record, root: str, source: str, supervision: str, splits: tuple[str, str],
            min_confidence: float = 0.0) -> dict[str, Any]:
    image = storage.resolve_in_store(source, record.image)
    gt = storage.resolve_in_store(source, record.mask) if record.mask else ""
    review = (record.extra.get("review") or {}).get("status", "")
    confidence = record.extra.get("confidence")
    row = {"id": record.id, "split": "", "image": image, "target": "", "gt": gt, "boxes": json.dumps(record.boxes),
           "ok": True, "reason": "", "review": review,
           "weight": 1.0 if confidence is None or review else float(confidence)}
    if review == "rejected":
        row["reason"] = REJECTED
    elif record.split == splits[0] and not review and confidence is not None and confidence < min_confidence:
        row["reason"] = FILTERED
    elif record.split == splits[1]:
        row.update(split="val" if gt else "", reason="" if gt else "val record without a GT mask")
    elif record.split == splits[0]:
        row["split"] = "train"
        pseudo = reviews.training_mask(record.extra)
        if supervision == "pseudo":
            row.update(target=storage.resolve_in_store(root, pseudo) if pseudo else "",
                       split="train" if pseudo else "", reason="" if pseudo else "no pseudo_mask")
        elif supervision == "gt":
            if not gt and record.boxes:
                row.update(split="", reason="no GT mask")
            row["target"] = gt  # an authentic image (no boxes, no mask) trains on an empty mask
    return row


def sample_rows(batch: dict[str, Any], root: str, source: str, supervision: str, train_split: str,
                val_split: str, decisions: dict[str, dict[str, Any]] | None = None,
                min_confidence: float = 0.0) -> dict[str, np.ndarray]:
    """Manifest lines -> sample rows (URIs resolved; `split` "" = not used, with the reason); `decisions`:
    record id -> its review decision (`reviews.latest_decisions`)."""
    rows = []
    for text in batch["text"]:
        try:
            raw = json.loads(str(text))
            record = manifest.Record.from_dict(reviews.apply(raw, (decisions or {}).get(raw.get("id"))))
            rows.append(_sample(record, root, source, supervision, (train_split, val_split), min_confidence))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            rows.append({"id": "", "split": "", "image": "", "target": "", "gt": "", "boxes": "[]", "ok": False,
                         "reason": f"bad record: {err}", "weight": 1.0, "review": ""})
    types = {"ok": bool, "weight": np.float32}
    return {c: np.asarray([r[c] for r in rows], dtype=types.get(c, object)) for c in SAMPLE_COLUMNS}


# --- decoding ------------------------------------------------------------------------------------
def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool mask -> size x size bool (area-weighted, then >= 0.5: thin shapes survive better)."""
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR) >= 0.5


def decode_sample(row: dict[str, Any], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image size x size x 3 uint8, target size x size bool, GT size x size bool or None); raises on bad files."""
    image, _ = imageio.load_image(row["image"])
    shape = image.shape[:2]
    target = fill_boxes(shape, json.loads(row["boxes"])) if not row["target"] else imageio.load_mask(row["target"])
    if target.shape != shape:
        raise ValueError(f"target mask {row['target']} is {target.shape[1]}x{target.shape[0]}, "
                         f"its image {row['image']} is {shape[1]}x{shape[0]}")
    gt = None
    if row["gt"]:
        gt = target if row["gt"] == row["target"] else imageio.load_mask(row["gt"])
        if gt.shape != shape:
            raise ValueError(f"GT mask {row['gt']} is {gt.shape[1]}x{gt.shape[0]}, its image is {shape[1]}x{shape[0]}")
        gt = resize_mask(gt, size)
    return resize_image(image, size), resize_mask(target, size), gt


def decode_samples(batch: dict[str, Any], size: int) -> dict[str, np.ndarray]:
    """Sample rows -> fixed-size arrays; unreadable samples get ok=False and the reason."""
    n = len(batch["id"])
    images = np.zeros((n, size, size, 3), np.uint8)
    targets = np.zeros((n, size, size), np.uint8)
    gts = np.zeros((n, size, size), np.uint8)
    has_gt = np.zeros(n, bool)
    ok = np.asarray(batch["ok"], bool).copy()
    reasons = [str(r) for r in batch["reason"]]
    for i in range(n):
        if not ok[i]:
            continue
        row = {k: str(batch[k][i]) for k in ("id", "image", "target", "gt", "boxes")}
        try:
            image, target, gt = decode_sample(row, size)
        except (FileNotFoundError, imageio.DecodeError, ValueError, OSError) as err:
            ok[i], reasons[i] = False, f"{type(err).__name__}: {err}"
            continue
        images[i], targets[i] = image, target
        if gt is not None:
            gts[i], has_gt[i] = gt, True
    out = {"id": np.asarray(batch["id"], dtype=object), "image": images, "target": targets, "gt": gts,
           "has_gt": has_gt, "ok": ok, "reason": np.asarray(reasons, dtype=object),
           "source_image": np.asarray(batch["image"], dtype=object),
           "weight": np.asarray(batch.get("weight", np.ones(n)), np.float32)}
    if "store" in batch:  # drawn from one of several stores (bpiml.train.mixing)
        out["store"] = np.asarray(batch["store"])
    return out


def augment_samples(batch: dict[str, Any], augment: dict[str, Any]) -> dict[str, Any]:
    """Augment each readable sample; a fresh draw every epoch (the dataset runs again each epoch)."""
    transform = Augment(**augment)
    rng = np.random.default_rng()
    images, targets = batch["image"].copy(), batch["target"].copy()
    for i in np.flatnonzero(batch["ok"]):
        images[i], mask = transform(images[i], targets[i].astype(bool), rng)
        targets[i] = mask
    return {**batch, "image": images, "target": targets}
