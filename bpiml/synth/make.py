"""One synthetic image, start to finish: draw -> forge -> post-process -> encode -> manifest record.

Image `i` of a store depends only on the recipe (`SynthConfig.recipe`), the photo pool and `i`:
its random generator is seeded with `(seed, i)`, so any subset of images can be made in any
order, on any node, and a redone image is byte-identical to the first attempt.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from bpiml.data import imageio, naming, storage
from bpiml.data.boxes import boxes_from_mask, jitter_boxes, pad_boxes
from bpiml.synth import forge, post
from bpiml.synth.pool import Pool

logger = logging.getLogger(__name__)

PHOTO_CACHE = 256  # pool photos kept per worker process, shrunk (~2 MB each at max_side 512)
MIN_CROP = 0.6  # a crop keeps at least this share of each side of its photo


@dataclass(frozen=True)
class Recipe:
    """What a synthesis task needs besides the index (built once on the driver from the config)."""

    seed: int
    mix: tuple[tuple[str, float], ...]  # (kind, probability), kinds of `forge.KINDS` and "authentic"
    max_side: int
    post_steps: int
    val_fraction: float
    box_pad: float
    box_jitter: float
    merge_distance: int


def record_id(seed: int, index: int) -> str:
    return f"synth-s{seed}-{index:09d}"


@functools.lru_cache(maxsize=PHOTO_CACHE)
def load_photo(uri: str, max_side: int) -> np.ndarray:
    """A pool photo as HxWx3 uint8, shrunk so that its smallest crop still has `max_side` pixels on its
    long side (cached per process; raises imageio.DecodeError on a bad file)."""
    image, _ = imageio.load_image(uri)
    scale = max_side / MIN_CROP / max(image.shape[:2])
    if scale < 1.0:
        size = (max(8, round(image.shape[1] * scale)), max(8, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


@functools.lru_cache(maxsize=PHOTO_CACHE)
def load_shape(uri: str) -> np.ndarray:
    return imageio.load_mask(uri)


def crop_resize(photo: np.ndarray, max_side: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop (60-100% of each side), resized so its long side is at most `max_side`."""
    h, w = photo.shape[:2]
    ch, cw = max(8, int(h * rng.uniform(MIN_CROP, 1.0))), max(8, int(w * rng.uniform(MIN_CROP, 1.0)))
    ch, cw = min(ch, h), min(cw, w)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = photo[y:y + ch, x:x + cw]
    scale = min(1.0, max_side / max(ch, cw))
    if scale < 1.0:
        size = (max(8, round(cw * scale)), max(8, round(ch * scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop)


def human_boxes(mask: np.ndarray, recipe: Recipe, rng: np.random.Generator) -> list[list[float]]:
    """The importer's boxes for a mask: merged components, padded, jittered, rounded to 0.01 px."""
    h, w = mask.shape
    boxes = boxes_from_mask(mask, recipe.merge_distance, min_area=16)
    boxes = pad_boxes(boxes, recipe.box_pad, w, h)
    if recipe.box_jitter > 0:
        boxes = jitter_boxes(boxes, recipe.box_jitter, rng, w, h)
    return [[round(float(v), 2) for v in b] for b in boxes]


def _draw_kind(recipe: Recipe, rng: np.random.Generator) -> str:
    kinds = [k for k, _ in recipe.mix]
    return kinds[int(rng.choice(len(kinds), p=np.asarray([p for _, p in recipe.mix])))]


def _forge(kind: str, base: np.ndarray, pool: Pool, shapes: Pool | None, recipe: Recipe,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    if kind == "authentic":
        return base, np.zeros(base.shape[:2], bool), {"kind": "authentic"}
    donor, donor_name = None, None
    if kind == "splice":
        donor_name = pool.paths[int(rng.integers(len(pool.paths)))]
        donor = crop_resize(load_photo(storage.join(pool.root, donor_name), recipe.max_side), recipe.max_side, rng)
    shape_masks = []
    if shapes is not None:
        shape_masks = [load_shape(storage.join(shapes.root, shapes.paths[int(rng.integers(len(shapes.paths)))]))]
    made = forge.forge(kind, base, donor, rng, shape_masks)
    info = dict(made.info)
    if donor_name is not None:
        info["donor"] = donor_name
    return made.image, made.mask, info


def make_one(index: int, pool: Pool, shapes: Pool | None, recipe: Recipe
             ) -> tuple[dict[str, Any], bytes, bytes]:
    """Image `index` -> (manifest record, encoded image, mask PNG). Raises on a photo that cannot be read."""
    rng = np.random.default_rng([recipe.seed, index])
    rid = record_id(recipe.seed, index)
    kind = _draw_kind(recipe, rng)
    photo = pool.paths[int(rng.integers(len(pool.paths)))]
    base = crop_resize(load_photo(storage.join(pool.root, photo), recipe.max_side), recipe.max_side, rng)
    image, mask, info = _forge(kind, base, pool, shapes, recipe, rng)
    chain = post.random_chain(rng, recipe.post_steps) if recipe.post_steps else []
    image, mask = post.apply_chain(image, mask, chain)
    fmt, quality = post.random_save(rng)
    boxes = human_boxes(mask, recipe, rng) if mask.any() else []
    split = "val" if rng.random() < recipe.val_fraction else "train"
    stem = naming.file_stem(rid)
    ext = "jpg" if fmt == "jpeg" else fmt
    record = {"id": rid, "image": f"images/{stem}.{ext}", "mask": f"masks/{stem}.png", "boxes": boxes,
              "split": split, "kind": kind,
              "synth": {**info, "photo": photo, "post": post.describe(chain), "save": f"{fmt}:{quality}" if quality else fmt}}
    return record, imageio.encode_image(image, fmt, quality or 95), imageio.encode_mask_png(mask)


def write_one(out: str, record: dict[str, Any], image: bytes, mask: bytes) -> None:
    storage.write_bytes(storage.join(out, record["image"]), image)
    storage.write_bytes(storage.join(out, record["mask"]), mask)
