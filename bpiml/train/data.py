"""Training data: pseudo-labeled store -> samples -> a torch Dataset with mask-aligned augmentation.

The driver reads the pseudo-labeled store's manifest once (`load_samples`) and hands plain
`Sample` dicts to the workers; each worker decodes its images, resizes them to the model's input
size once and keeps them in memory (`cache=True`, the right choice for small stores).

Targets by supervision:
- `pseudo`: the teacher's mask, `pseudo_mask` relative to the pseudo-labeled store;
- `gt`: the ground-truth mask, `mask` relative to the input store named by `source` (upper bound);
- `box`: the record's boxes filled (the weakest label).
Validation always scores against ground truth, never against pseudo masks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np
import torch

from bpiml.data import imageio, manifest, storage

logger = logging.getLogger(__name__)

SUPERVISIONS = ("pseudo", "gt", "box")


@dataclasses.dataclass
class Sample:
    """One image with the URIs a worker needs; plain data, shipped to workers as a dict."""

    id: str
    image: str  # image URI
    boxes: list[list[float]]  # pixel boxes of the original image
    target: str | None  # target mask URI (pseudo or GT); None for `box` supervision
    gt: str | None  # ground-truth mask URI (validation), None when the store has none


@dataclasses.dataclass
class StoreSamples:
    """What the driver learned from the store."""

    train: list[Sample]
    val: list[Sample]
    skipped: dict[str, int]  # reason -> count of train records left out
    teacher: dict[str, str]  # teacher name/version of the pseudo masks (may be empty)


def absolute(uri: str) -> str:
    """s3:// URIs as they are; local paths made absolute (Ray workers run in other folders)."""
    if storage.is_s3(uri):
        return uri
    return os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)


def _source_root(store: str, source: Any, where: str) -> str:
    """The input store of a record: `source` (relative local paths are taken from the working
    directory, like the pseudo-labeling job that wrote them); the store itself when absent."""
    if source is None:
        return store
    if not isinstance(source, str) or not source:
        raise ValueError(f"{where}: 'source' must name the input store, got {source!r}")
    return absolute(source)


def _teacher_info(store: str, records: list[manifest.Record]) -> dict[str, str]:
    info: dict[str, str] = {}
    config_uri = storage.join(store, "config.json")
    if storage.exists(config_uri):
        try:
            cfg = json.loads(storage.read_bytes(config_uri))
        except json.JSONDecodeError as err:
            logger.warning("%s is not valid JSON (%s); teacher taken from the manifest", config_uri, err)
            cfg = {}
        if isinstance(cfg, dict) and isinstance(cfg.get("teacher"), (str, dict)):
            info["teacher"] = json.dumps(cfg["teacher"]) if isinstance(cfg["teacher"], dict) else cfg["teacher"]
    names = sorted({str(r.extra["teacher"]) for r in records if r.extra.get("teacher")})
    versions = sorted({str(r.extra["teacher_version"]) for r in records if r.extra.get("teacher_version")})
    if names:
        info.setdefault("teacher", ",".join(names))
    if versions:
        info["teacher_version"] = ",".join(versions)
    return info


def load_samples(store: str, supervision: str = "pseudo", train_split: str = "train",
                 val_split: str = "val", limit: int = 0) -> StoreSamples:
    """Read the pseudo-labeled store's manifest into train and validation samples.

    Train: records of `train_split` that have a target for `supervision` (others are counted in
    `skipped`). Validation: records of `val_split` that have a ground-truth mask. `limit` > 0
    keeps the first `limit` records of each.
    """
    if supervision not in SUPERVISIONS:
        raise ValueError(f"supervision must be one of {list(SUPERVISIONS)}, got {supervision!r}")
    store = absolute(manifest.store_root(store))
    records = manifest.read_manifest(store)
    where = manifest.manifest_uri(store)
    train: list[Sample] = []
    val: list[Sample] = []
    skipped: dict[str, int] = {}
    for rec in records:
        source = _source_root(store, rec.extra.get("source"), f"{where}: record {rec.id!r}")
        image = storage.resolve_in_store(source, rec.image)
        gt = storage.resolve_in_store(source, rec.mask) if rec.mask else None
        if rec.split == val_split:
            if gt is not None:
                val.append(Sample(rec.id, image, rec.boxes, gt, gt))
            continue
        if rec.split != train_split:
            continue
        pseudo = rec.extra.get("pseudo_mask")
        if supervision == "pseudo":
            if not pseudo:
                skipped["no pseudo_mask"] = skipped.get("no pseudo_mask", 0) + 1
                continue
            target: str | None = storage.resolve_in_store(store, pseudo)
        elif supervision == "gt":
            if gt is None and rec.boxes:
                skipped["no GT mask"] = skipped.get("no GT mask", 0) + 1
                continue
            target = gt  # an authentic image (no boxes, no mask) trains on an empty mask
        else:
            target = None
        train.append(Sample(rec.id, image, rec.boxes, target, gt))
    if limit > 0:
        train, val = train[:limit], val[:limit]
    return StoreSamples(train=train, val=val, skipped=skipped, teacher=_teacher_info(store, records))


# --- decoding -------------------------------------------------------------------------------
def fill_boxes(shape: tuple[int, int], boxes: list[list[float]]) -> np.ndarray:
    """HxW bool mask with the pixel boxes [x0, y0, x1, y1] filled (clipped to the image)."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        c0, c1 = int(np.clip(np.floor(min(x0, x1)), 0, w)), int(np.clip(np.ceil(max(x0, x1)), 0, w))
        r0, r1 = int(np.clip(np.floor(min(y0, y1)), 0, h)), int(np.clip(np.ceil(max(y0, y1)), 0, h))
        mask[r0:r1, c0:c1] = True
    return mask


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool mask -> size x size bool (area-weighted, then >= 0.5: thin shapes survive better)."""
    import cv2

    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR) >= 0.5


def decode_sample(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image size x size x 3 uint8, target size x size bool, GT size x size bool or None)."""
    image, _ = imageio.load_image(sample.image)
    if sample.target is None:
        target = fill_boxes(image.shape[:2], sample.boxes)
    else:
        target = imageio.load_mask(sample.target)
    gt = None
    if sample.gt is not None:
        gt = target if sample.gt == sample.target else imageio.load_mask(sample.gt)
        gt = resize_mask(gt, size)
    return resize_image(image, size), resize_mask(target, size), gt


def sample_to_dict(sample: Sample) -> dict[str, Any]:
    return dataclasses.asdict(sample)


def sample_from_dict(values: dict[str, Any]) -> Sample:
    return Sample(**values)


# --- augmentation ---------------------------------------------------------------------------
@dataclasses.dataclass
class Augment:
    """Mask-aligned augmentation of a cached size x size image and mask."""

    scale_min: float = 0.35  # random resized crop: smallest crop area as a share of the image
    hflip: bool = True  # flip horizontally with probability 1/2
    color: float = 0.2  # brightness / contrast / saturation jitter strength (0 = off)
    jpeg_prob: float = 0.0  # probability of a JPEG re-compression (quality 60-95)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        size = image.shape[0]
        if self.scale_min < 1.0:
            image, mask = self._crop(image, mask, size, rng)
        if self.hflip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.color > 0:
            image = self._jitter(image, rng)
        if self.jpeg_prob > 0 and rng.random() < self.jpeg_prob:
            image = self._jpeg(image, int(rng.integers(60, 96)))
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def _crop(self, image: np.ndarray, mask: np.ndarray, size: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        area = rng.uniform(self.scale_min, 1.0) * size * size
        ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        w = int(round(min(size, np.sqrt(area * ratio))))
        h = int(round(min(size, np.sqrt(area / ratio))))
        x0 = int(rng.integers(0, size - w + 1))
        y0 = int(rng.integers(0, size - h + 1))
        crop = image[y0:y0 + h, x0:x0 + w]
        crop_mask = mask[y0:y0 + h, x0:x0 + w].astype(np.float32)
        image = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(crop_mask, (size, size), interpolation=cv2.INTER_LINEAR) >= 0.5
        return image, mask

    def _jitter(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = image.astype(np.float32)
        x *= rng.uniform(1 - self.color, 1 + self.color)  # brightness
        mean = x.mean()
        x = (x - mean) * rng.uniform(1 - self.color, 1 + self.color) + mean  # contrast
        gray = x.mean(axis=2, keepdims=True)
        x = (x - gray) * rng.uniform(1 - self.color, 1 + self.color) + gray  # saturation
        return np.clip(x, 0, 255).astype(np.uint8)

    @staticmethod
    def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
        import cv2

        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            return image
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(3xSxS float in [0, 1], 1xSxS float 0/1) torch tensors."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    y = torch.from_numpy(np.ascontiguousarray(mask)).float().unsqueeze(0)
    return x, y


class MaskDataset(torch.utils.data.Dataset):
    """torch-style Dataset over samples: decode once (cached), augment per epoch.

    Randomness comes from (seed, epoch, index) only, so results do not depend on the number of
    DataLoader workers or on which training worker sees the item; call `set_epoch` every epoch.
    """

    def __init__(self, samples: list[Sample], size: int, augment: Augment | None = None,
                 cache: bool = True, seed: int = 0) -> None:
        self.samples = samples
        self.size = size
        self.augment = augment
        self.cache = cache
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self.unreadable: set[int] = set()  # indices whose files failed to load (logged once each)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def decoded(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(image, target, GT or None) at size x size, from the cache when enabled."""
        if index in self._cache:
            return self._cache[index]
        item = decode_sample(self.samples[index], self.size)
        if self.cache:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self._first_readable(index)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, target = self.augment(image, target, rng)
        return to_tensors(image, target)

    def _first_readable(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index`, or the next readable one when its files are missing or corrupt: one bad
        file costs one warning, not the run. Raises when no item can be read."""
        for step in range(len(self.samples)):
            i = (index + step) % len(self.samples)
            if i in self.unreadable:
                continue
            try:
                image, target, _ = self.decoded(i)
                return image, target
            except (FileNotFoundError, imageio.DecodeError, ValueError) as err:
                self.unreadable.add(i)
                logger.warning("skipping training image %r: %s", self.samples[i].id, err)
        raise RuntimeError(f"none of the {len(self.samples)} training images could be read; see the warnings above")
