"""A small deterministic synthetic store: splicing and copy-move forgeries of scikit-image's bundled photos.

No network and no shared data: the photos are the files shipped inside the scikit-image package
(read directly, never through its downloader). Same arguments -> byte-identical store.

    <out>/manifest.jsonl   records with boxes from the true masks (+ a small pad), split train / val
    <out>/images/<id>.jpg  JPEG q95, size x size
    <out>/masks/<id>.png   true mask, 0/255 (all zero for authentic images)
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from dataclasses import dataclass

import cv2
import numpy as np
import skimage.data
from PIL import Image

from bpiml.config import BaseConfig, HelpFormatter, check_range, field
from bpiml.data import storage
from bpiml.data.boxes import boxes_from_mask, pad_boxes
from bpiml.data.imageio import encode_image, encode_mask_png
from bpiml.data.manifest import Record, write_manifest

logger = logging.getLogger(__name__)

# Bundled in the scikit-image wheel (skimage/data/), so no download is ever needed.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
          "ihc.png", "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png", "clock_motion.png")
BOX_PAD = 0.05  # boxes: tight mask boxes grown by 5% of their side
MERGE_DISTANCE = 4


@functools.lru_cache(maxsize=1)
def bundled_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """(name, HxWx3 uint8) for each bundled photo present in the installed scikit-image."""
    folder = os.path.dirname(skimage.data.__file__)
    photos = []
    for name in PHOTOS:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with Image.open(path) as img:
                photos.append((os.path.splitext(name)[0], np.asarray(img.convert("RGB"))))
    if len(photos) < 2:
        raise FileNotFoundError(f"need at least 2 of {PHOTOS} in {folder}; found {len(photos)}")
    return tuple(photos)


def write_bundled_photos(folder: str) -> list[str]:
    """Write the bundled photos into `folder` as PNG (the synthesizer's embedded default pool)."""
    uris = []
    for name, photo in bundled_photos():
        uri = storage.join(folder, f"{name}.png")
        if not storage.exists(uri):
            storage.write_bytes(uri, encode_image(photo, "png"))
        uris.append(uri)
    return uris


def _crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (50-100% of the short side) resized to size x size."""
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.5, 1.0))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return cv2.resize(photo[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)


def _blob(size: int, rng: np.random.Generator, margin: float = 0.25) -> np.ndarray:
    """A soft irregular region: float32 alpha in [0, 1] (a jagged polygon, smoothed and feathered)."""
    cy, cx = rng.uniform(size * margin, size * (1 - margin), size=2)
    radius = size * rng.uniform(0.08, 0.18)
    n = int(rng.integers(6, 12))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.5, 1.3, n)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1).round().astype(np.int32)
    shape = np.zeros((size, size), np.uint8)
    cv2.fillPoly(shape, [pts], 255)
    smoothed = (cv2.GaussianBlur(shape, (0, 0), radius * 0.15) > 127).astype(np.float32)
    alpha = cv2.GaussianBlur(smoothed, (0, 0), 1.5)
    # A thin polygon in a small image can smooth or feather away: then it is kept as drawn.
    return alpha if (alpha > 0.5).any() else (shape > 0).astype(np.float32)


def _splice(base: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    alpha = _blob(base.shape[0], rng)[..., None]
    out = alpha * donor.astype(np.float32) + (1 - alpha) * base.astype(np.float32)
    return np.clip(out.round(), 0, 255).astype(np.uint8), alpha[..., 0] > 0.5


def _copy_move(base: np.ndarray, rng: np.random.Generator, with_source: bool) -> tuple[np.ndarray, np.ndarray]:
    size = base.shape[0]
    alpha = _blob(size, rng, margin=0.3)
    ys, xs = np.nonzero(alpha > 0.5)
    center = (float(xs.mean()), float(ys.mean()))
    matrix = cv2.getRotationMatrix2D(center, float(rng.uniform(-20, 20)), float(rng.uniform(0.85, 1.15)))
    extent = max(xs.max() - xs.min(), ys.max() - ys.min())
    for _ in range(20):  # a shift that keeps the copy inside the image and off its source
        shift = rng.uniform(-0.45, 0.45, size=2) * size
        target = (center[0] + shift[0], center[1] + shift[1])
        if np.hypot(*shift) > extent * 0.9 and all(extent / 2 < t < size - extent / 2 for t in target):
            break
    matrix[:, 2] += shift
    moved = cv2.warpAffine(base, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    moved_alpha = cv2.warpAffine(alpha, matrix, (size, size), flags=cv2.INTER_LINEAR)[..., None]
    out = moved_alpha * moved.astype(np.float32) + (1 - moved_alpha) * base.astype(np.float32)
    mask = moved_alpha[..., 0] > 0.5
    if with_source:
        mask |= alpha > 0.5
    return np.clip(out.round(), 0, 255).astype(np.uint8), mask


def make_sample_store(out: str, n_images: int = 24, seed: int = 0, size: int = 256, authentic_fraction: float = 0.15,
                      val_fraction: float = 0.25) -> str:
    """Write the synthetic store to `out` (local or s3://) and return `out`."""
    check_range("n_images", n_images, 1)
    check_range("size", size, 32)
    check_range("authentic_fraction", authentic_fraction, 0.0, 1.0)
    check_range("val_fraction", val_fraction, 0.0, 1.0)
    photos = bundled_photos()
    rng = np.random.default_rng(seed)
    n_auth = int(round(n_images * authentic_fraction))
    kinds = ["authentic"] * n_auth + [("splice", "copy-move")[j % 2] for j in range(n_images - n_auth)]
    kinds = [kinds[i] for i in rng.permutation(n_images)]
    val = set(rng.permutation(n_images)[: int(round(n_images * val_fraction))].tolist())
    records = []
    for i, kind in enumerate(kinds):
        rid = f"sample_{i:03d}"
        a = int(rng.integers(len(photos)))
        image = _crop(photos[a][1], size, rng)
        extra: dict[str, object] = {"kind": kind, "photo": photos[a][0]}
        if kind == "splice":
            b = (a + 1 + int(rng.integers(len(photos) - 1))) % len(photos)
            image, mask = _splice(image, _crop(photos[b][1], size, rng), rng)
            extra["donor"] = photos[b][0]
        elif kind == "copy-move":
            with_source = bool(rng.random() < 0.5)
            image, mask = _copy_move(image, rng, with_source)
            extra["mask_covers"] = "source+target" if with_source else "target"
        else:
            mask = np.zeros((size, size), bool)
        boxes = pad_boxes(boxes_from_mask(mask, MERGE_DISTANCE, min_area=16), BOX_PAD, size, size)
        storage.write_bytes(storage.join(out, f"images/{rid}.jpg"), encode_image(image, "jpeg", 95))
        storage.write_bytes(storage.join(out, f"masks/{rid}.png"), encode_mask_png(mask))
        records.append(Record(id=rid, image=f"images/{rid}.jpg", mask=f"masks/{rid}.png",
                              boxes=[[round(v, 2) for v in b] for b in boxes],
                              split="val" if i in val else "train", extra=extra))
    write_manifest(records, out)
    logger.info("sample store: %d images (%d authentic) in %s", n_images, n_auth, out)
    return out


@dataclass
class SampleConfig(BaseConfig):
    """Write the deterministic synthetic sample store."""

    out: str = field("", help="output store (local folder or s3://bucket/prefix)")
    n: int = field(24, help="number of images")
    seed: int = field(0, help="random seed (same seed -> identical store)")
    size: int = field(256, help="image side in pixels")
    authentic_fraction: float = field(0.15, help="fraction of authentic images (boxes [])")
    val_fraction: float = field(0.25, help="fraction of images in the val split")

    def validate(self) -> None:
        if not self.out:
            raise ValueError("out is required (--out DIR)")
        check_range("n", self.n, 1)
        check_range("size", self.size, 32)
        check_range("authentic_fraction", self.authentic_fraction, 0.0, 1.0)
        check_range("val_fraction", self.val_fraction, 0.0, 1.0)


def cli_make_sample(argv: list[str]) -> int:
    """`bpiml make-sample --out DIR [--n N] [--seed S] [--size PX]`"""
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="bpiml make-sample", description=SampleConfig.__doc__)
    SampleConfig.add_arguments(parser)
    try:
        c = SampleConfig.from_args(parser.parse_args(argv))
        out = make_sample_store(c.out, c.n, c.seed, c.size, c.authentic_fraction, c.val_fraction)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        print(f"bpiml make-sample: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {c.n} images to {out}")
    return 0
