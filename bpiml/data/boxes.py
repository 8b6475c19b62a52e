"""Boxes: derived from masks, loosened like a human's coarse box, and cleaned before use.

A box is `[x0, y0, x1, y1]` in pixels with `x1`/`y1` exclusive, so a one-pixel component at
(x, y) has the box `[x, y, x + 1, y + 1]` and `x1 - x0` is the box width.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)


def boxes_from_mask(mask: np.ndarray, merge_distance: int = 0, min_area: int = 16) -> list[list[int]]:
    """Tight boxes of the mask's 8-connected components, sorted top-to-bottom, left-to-right.

    Components under `min_area` pixels are dropped (noise). Boxes whose gap (background pixels
    between them along x or y, 0 when they touch or overlap) is <= `merge_distance` are merged,
    repeatedly until no pair qualifies; a negative `merge_distance` turns merging off.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    if mask.size == 0:
        return []
    count, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    boxes = [
        [int(x), int(y), int(x + w), int(y + h)]
        for x, y, w, h, area in stats[1:count]
        if area >= min_area
    ]
    if merge_distance >= 0:
        boxes = merge_boxes(boxes, merge_distance)
    return sorted(boxes, key=lambda b: (b[1], b[0], b[3], b[2]))


def merge_boxes(boxes: list[list[int]], merge_distance: int) -> list[list[int]]:
    """Merge boxes whose gap is <= merge_distance into their union, until stable."""
    boxes = [list(b) for b in boxes]
    changed = True
    while changed and len(boxes) > 1:
        changed = False
        arr = np.asarray(boxes, dtype=np.int64)
        gx = np.maximum(arr[None, :, 0] - arr[:, None, 2], arr[:, None, 0] - arr[None, :, 2])
        gy = np.maximum(arr[None, :, 1] - arr[:, None, 3], arr[:, None, 1] - arr[None, :, 3])
        close = np.maximum(np.maximum(gx, gy), 0) <= merge_distance
        np.fill_diagonal(close, False)
        if not close.any():
            break
        # union all boxes linked (transitively) by `close` in one pass
        n_groups, labels = _components(close)
        merged = []
        for g in range(n_groups):
            members = arr[labels == g]
            merged.append([int(members[:, 0].min()), int(members[:, 1].min()),
                           int(members[:, 2].max()), int(members[:, 3].max())])
        changed = len(merged) < len(boxes)
        boxes = merged
    return boxes


def _components(adjacency: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of a boolean adjacency matrix (union-find)."""
    parent = list(range(len(adjacency)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(adjacency))):
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = [find(i) for i in range(len(parent))]
    _, labels = np.unique(roots, return_inverse=True)
    return int(labels.max()) + 1 if len(labels) else 0, labels


def box_pixels(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds `(x0, y0, x1, y1)` (end exclusive) of a float box, clipped to the image.

    Every pixel the box touches is inside (`floor(x0)` .. `ceil(x1)`), so a box `[x, y, x + w, y + h]`
    from a mask component covers exactly that component's bounding rectangle; a box thinner than
    one pixel still covers the pixel it falls in.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    ix0 = min(max(int(np.floor(x0)), 0), width - 1)
    iy0 = min(max(int(np.floor(y0)), 0), height - 1)
    ix1 = min(max(int(np.ceil(x1)), ix0 + 1), width)
    iy1 = min(max(int(np.ceil(y1)), iy0 + 1), height)
    return ix0, iy0, ix1, iy1


def fill_boxes(shape: tuple[int, int], boxes: Any) -> np.ndarray:
    """HxW bool mask with the boxes filled (the union of their `box_pixels`); the one box-fill rule."""
    height, width = shape
    mask = np.zeros((height, width), dtype=bool)
    for box in boxes:
        x0, y0, x1, y1 = box_pixels(box, height, width)
        mask[y0:y1, x0:x1] = True
    return mask


def _clip(box: Sequence[float], width: int, height: int) -> list[float]:
    return [min(max(float(box[0]), 0.0), width), min(max(float(box[1]), 0.0), height),
            min(max(float(box[2]), 0.0), width), min(max(float(box[3]), 0.0), height)]


def pad_boxes(boxes: Any, pad: float, width: int, height: int) -> list[list[float]]:
    """Grow each side by `pad` times the box's side (width for x, height for y), clipped to the image."""
    if not math.isfinite(pad) or pad < 0:
        raise ValueError(f"pad must be a finite number >= 0, got {pad!r}")
    out = []
    for x0, y0, x1, y1 in boxes:
        dx, dy = pad * (x1 - x0), pad * (y1 - y0)
        out.append(_clip([x0 - dx, y0 - dy, x1 + dx, y1 + dy], width, height))
    return out


def jitter_boxes(boxes: Any, jitter: float, rng: np.random.Generator, width: int, height: int) -> list[list[float]]:
    """Move each edge by uniform(-jitter, +jitter) times the box side (a human's coarse box), clipped.

    `jitter` must be in [0, 0.5) so an edge never crosses its opposite; a box that the clip makes
    degenerate (under 1 px) is kept as it was.
    """
    if not math.isfinite(jitter) or not 0 <= jitter < 0.5:
        raise ValueError(f"jitter must be in [0, 0.5), got {jitter!r}")
    boxes = [list(map(float, b)) for b in boxes]
    if not boxes:
        return []
    moves = rng.uniform(-jitter, jitter, size=(len(boxes), 4))
    out = []
    for (x0, y0, x1, y1), m in zip(boxes, moves):
        w, h = x1 - x0, y1 - y0
        new = _clip([x0 + m[0] * w, y0 + m[1] * h, x1 + m[2] * w, y1 + m[3] * h], width, height)
        out.append(new if new[2] - new[0] >= 1 and new[3] - new[1] >= 1 else _clip([x0, y0, x1, y1], width, height))
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("x") else f"{n} {word}s"


def sanitize_boxes(boxes: Any, width: int, height: int, min_side: float = 1.0) -> tuple[np.ndarray, list[str]]:
    """Nx4 float32 boxes clipped to the image, degenerate ones dropped, with notes. Never raises for bad numbers.

    Dropped: malformed entries (not 4 numbers), NaN/inf, x1 <= x0 or y1 <= y0, or a side under
    `min_side` after clipping.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    kept: list[list[float]] = []
    malformed: list[Any] = []
    degenerate: list[Any] = []
    clipped = 0
    for box in _rows(boxes):
        try:
            values = [float(v) for v in box]
        except (TypeError, ValueError):
            malformed.append(box)
            continue
        if len(values) != 4:
            malformed.append(box)
            continue
        if not all(math.isfinite(v) for v in values) or values[2] <= values[0] or values[3] <= values[1]:
            degenerate.append(values)
            continue
        clip = _clip(values, width, height)
        if clip[2] - clip[0] < min_side or clip[3] - clip[1] < min_side:
            degenerate.append(values)
            continue
        clipped += clip != values
        kept.append(clip)
    notes = []
    if clipped:
        notes.append(f"clipped {_plural(clipped, 'box')} to the image {width}x{height}")
    if degenerate:
        shown = ", ".join(str([round(v, 2) for v in b]) for b in degenerate[:3])
        more = ", ..." if len(degenerate) > 3 else ""
        notes.append(f"dropped {_plural(len(degenerate), 'degenerate box')} [{shown}{more}]")
    if malformed:
        notes.append(f"dropped {_plural(len(malformed), 'malformed box')} {malformed[:3]!r}")
    arr = np.asarray(kept, dtype=np.float32).reshape(-1, 4)
    return arr, notes


def _rows(boxes: Any) -> list[Any]:
    """The entries of a list / tuple / array of boxes; anything else is one (malformed) entry."""
    if boxes is None:
        return []
    if isinstance(boxes, np.ndarray):
        if boxes.size == 0:
            return []
        return list(boxes) if boxes.ndim == 2 else [boxes]
    try:
        return list(boxes)
    except TypeError:
        return [boxes]
