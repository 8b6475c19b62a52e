"""Object-shaped regions to forge: smooth polygons, grown superpixels, and supplied object masks.

Every region is an HxW bool mask, never empty, fully inside the image, whose area is a fraction of
the image drawn uniformly from `area` (a shape too elongated to fit at that size is shrunk until it
fits, so it may fall below). Same `rng` state -> the same mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from skimage.segmentation import slic

AREA = (0.01, 0.12)  # default region area as a fraction of the image
SLIC_SIDE = 192  # superpixels are computed with the long side shrunk to this (SLIC cost grows with pixels)
SLIC_SEGMENTS = (100, 250)  # drawn number of SLIC superpixels over the image
POLYGON_SIDE = 128  # polygons are drawn and smoothed on a canvas this big, then scaled into place
METHODS = ("polygon", "superpixels", "shape")


def check_image(name: str, image: np.ndarray) -> None:
    """ValueError naming `name` unless `image` is an HxWx3 uint8 array with pixels."""
    shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{name} must be an HxWx3 uint8 RGB array, got shape {shape} dtype {dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} has no pixels: shape {shape}")


def check_mask(name: str, mask: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """`mask` as an HxW bool array with at least one True pixel (of `shape` when given); ValueError naming `name`."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or (shape is not None and mask.shape != tuple(shape)):
        want = "HxW" if shape is None else f"{tuple(shape)}"
        raise ValueError(f"{name} must be a {want} mask, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        raise ValueError(f"{name} is empty (no True pixel), shape {mask.shape}")
    return mask


def mask_box(mask: np.ndarray, pad: int = 0) -> tuple[int, int, int, int]:
    """`(x0, y0, x1, y1)` (end exclusive, as in bpiml.data.boxes) of a non-empty HxW mask, grown by `pad`, clipped."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        raise ValueError(f"mask is empty (no True pixel), shape {mask.shape}")
    height, width = mask.shape
    return (max(int(cols[0]) - pad, 0), max(int(rows[0]) - pad, 0),
            min(int(cols[-1]) + 1 + pad, width), min(int(rows[-1]) + 1 + pad, height))


def _check_area(area: tuple[float, float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in area)
    except (TypeError, ValueError):
        raise ValueError(f"area must be a pair (low, high) of fractions, got {area!r}") from None
    if not 0 < low <= high <= 1:
        raise ValueError(f"area must satisfy 0 < low <= high <= 1, got {area!r}")
    return low, high


def _check_size(height: int, width: int) -> None:
    if int(height) < 2 or int(width) < 2:
        raise ValueError(f"height and width must be >= 2, got height={height!r} width={width!r}")


def _place(template: np.ndarray, height: int, width: int, target: float, rng: np.random.Generator) -> np.ndarray:
    """Scale a template (h x w, values in [0, 1], cropped to its box) to `target` pixels and drop it inside HxW."""
    template = template.astype(np.float32)
    th, tw = template.shape
    scale = min(math.sqrt(target / max(float(template.sum()), 1e-6)), height / th, width / tw)
    h, w = min(height, max(1, round(th * scale))), min(width, max(1, round(tw * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    shape = cv2.resize(template, (w, h), interpolation=interp).reshape(h, w)
    placed = shape >= 0.5
    if not placed.any():  # a hairline shape shrunk below a pixel: keep its strongest pixel
        placed[np.unravel_index(int(np.argmax(shape)), shape.shape)] = True
    y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    out = np.zeros((height, width), dtype=bool)
    out[y:y + h, x:x + w] = placed
    return out


def _polygon_template(rng: np.random.Generator, side: int = POLYGON_SIDE) -> np.ndarray:
    """A smooth random star-shaped polygon (6-16 vertices) on a side x side canvas, cropped to its box: bool."""
    n = int(rng.integers(6, 17))
    angles = (np.arange(n) + rng.uniform(-0.4, 0.4, n)) * (2 * np.pi / n)  # sorted: a star-shaped outline
    radii = rng.uniform(0.4, 1.0, n)
    stretch, turn = rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi)
    x, y = radii * np.cos(angles), radii * np.sin(angles) * stretch
    x, y = x * np.cos(turn) - y * np.sin(turn), x * np.sin(turn) + y * np.cos(turn)
    points = np.stack([x, y], axis=1) * (side * 0.4) + side / 2
    canvas = np.zeros((side, side), np.uint8)
    cv2.fillPoly(canvas, [points.round().astype(np.int32)], 255)
    smooth = cv2.GaussianBlur(canvas, (0, 0), side * rng.uniform(0.02, 0.06)) > 127
    if not smooth.any():  # a needle-thin polygon blurred away: keep its raw outline
        smooth = canvas > 0
    x0, y0, x1, y1 = mask_box(smooth)
    return smooth[y0:y1, x0:x1]


def polygon_region(height: int, width: int, rng: np.random.Generator, area: tuple[float, float] = AREA) -> np.ndarray:
    """HxW bool mask of a smooth random polygon covering ~uniform(*area) of the image."""
    _check_size(height, width)
    low, high = _check_area(area)
    target = rng.uniform(low, high) * height * width
    return _place(_polygon_template(rng), int(height), int(width), target, rng)


def shape_region(shape_mask: np.ndarray, height: int, width: int, rng: np.random.Generator,
                 area: tuple[float, float] = AREA) -> np.ndarray:
    """HxW bool mask: `shape_mask` (any h x w bool, e.g. a GT object mask) cropped, scaled and placed at random."""
    _check_size(height, width)
    low, high = _check_area(area)
    shape_mask = check_mask("shape_mask", shape_mask)
    x0, y0, x1, y1 = mask_box(shape_mask)
    target = rng.uniform(low, high) * height * width
    return _place(shape_mask[y0:y1, x0:x1], int(height), int(width), target, rng)


def _adjacency(labels: np.ndarray, n: int) -> np.ndarray:
    """n x n int64: how many 4-neighbour pixel pairs each two labels share (their border length)."""
    u = np.concatenate([labels[:, :-1].ravel(), labels[:-1].ravel()])
    v = np.concatenate([labels[:, 1:].ravel(), labels[1:].ravel()])
    differ = u != v
    counts = np.bincount(u[differ] * n + v[differ], minlength=n * n).reshape(n, n)
    return counts + counts.T


def _grow(labels: np.ndarray, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """Bool lookup over labels: a random seed label grown by neighbours (more shared border, likelier)
    until the union covers `low` of the pixels, never adding one that would push it past `high`."""
    n = int(labels.max()) + 1
    sizes = np.bincount(labels.ravel(), minlength=n)
    adjacency = _adjacency(labels, n)
    room = high * labels.size
    small = np.flatnonzero(sizes <= room)
    seed = int(rng.choice(small)) if len(small) else int(np.argmin(sizes))
    chosen = np.zeros(n, dtype=bool)
    chosen[seed] = True
    got, contact = int(sizes[seed]), adjacency[seed].astype(np.float64)
    while got < low * labels.size:
        candidates = np.flatnonzero((contact > 0) & ~chosen & (sizes + got <= room))
        if not len(candidates):
            break
        weights = contact[candidates]
        pick = int(rng.choice(candidates, p=weights / weights.sum()))
        chosen[pick] = True
        got += int(sizes[pick])
        contact += adjacency[pick]
    return chosen


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def superpixel_region(image: np.ndarray, rng: np.random.Generator, area: tuple[float, float] = AREA) -> np.ndarray:
    """HxW bool mask: adjacent SLIC superpixels of the HxWx3 uint8 `image` grown from a random seed.

    It follows the image's edges, so it looks like (part of) an object. SLIC runs with the long
    side shrunk to SLIC_SIDE; the grown region is scaled back (bilinear, split at 0.5) and its
    largest 8-connected component kept.
    """
    check_image("image", image)
    low, high = _check_area(area)
    height, width = image.shape[:2]
    scale = min(1.0, SLIC_SIDE / max(height, width))
    small = image
    if scale < 1:
        size = (max(2, round(width * scale)), max(2, round(height * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    segments = int(rng.integers(SLIC_SEGMENTS[0], SLIC_SEGMENTS[1] + 1))
    labels = slic(small, n_segments=segments, compactness=10, max_num_iter=5, start_label=0, channel_axis=-1)
    target = rng.uniform(low, high)
    region = _grow(labels, target, high, rng)[labels]
    if scale < 1:
        grown = cv2.resize(region.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5
        region = grown if grown.any() else cv2.resize(region.astype(np.uint8), (width, height),
                                                      interpolation=cv2.INTER_NEAREST) > 0
    return _largest_component(region)


def random_region(image: np.ndarray, rng: np.random.Generator, shapes: Sequence[np.ndarray] = (),
                  area: tuple[float, float] = AREA) -> tuple[np.ndarray, str]:
    """(HxW bool mask, method): "polygon" (p 0.4) or "superpixels" (0.6); with `shapes` (bool masks of
    any size) "polygon" 0.25, "superpixels" 0.45, "shape" 0.3 (one of `shapes`, drawn uniformly)."""
    check_image("image", image)
    height, width = image.shape[:2]
    if len(shapes):
        method = METHODS[int(rng.choice(3, p=[0.25, 0.45, 0.3]))]
    else:
        method = METHODS[int(rng.choice(2, p=[0.4, 0.6]))]
    if method == "polygon":
        return polygon_region(height, width, rng, area), method
    if method == "superpixels":
        return superpixel_region(image, rng, area), method
    shape = shapes[int(rng.integers(len(shapes)))]
    return shape_region(shape, height, width, rng, area), method
