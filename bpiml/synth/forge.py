"""Forgeries with exact masks: splicing, copy-move and removal (inpainting) of object-shaped regions.

Each maker takes HxWx3 uint8 RGB photos and a `np.random.Generator` and returns a `Forgery` of the
same size whose mask is exactly the pixels it rewrote (see bpiml.synth.blend). Same generator state
-> byte-identical output. A region under MIN_AREA of the image, or a copy with no room, is drawn
again up to TRIES times; then ValueError (the job records it as a reject).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from bpiml.config import check_choice
from bpiml.synth.blend import BLENDS, FEATHER_MARGIN, match_colour, paste
from bpiml.synth.regions import check_image, mask_box, random_region

logger = logging.getLogger(__name__)

KINDS = ("splice", "copy-move", "removal")
MIN_AREA = 0.002  # smallest usable forged region, as a fraction of the image
TRIES = 5  # region draws before a forgery gives up
PLACE_TRIES = 30  # random positions tried for a copy before drawing a new region
POISSON_P = 0.35  # probability of Poisson blending (else feathered alpha)
COLOUR_P = 0.5  # probability that a splice is colour-matched to its new surroundings
SCALE, ANGLE, FLIP_P = (0.7, 1.3), (-30.0, 30.0), 0.3  # copy-move transform ranges
INPAINT_RADIUS = (3, 9)  # cv2.inpaint radius, pixels
INPAINT_PIXELS = 4000  # larger holes are inpainted on a shrunk crop (cost grows with hole pixels x radius^2)
INPAINT_FLAGS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


@dataclass
class Forgery:
    image: np.ndarray  # HxWx3 uint8 RGB, the forged photo
    mask: np.ndarray  # HxW bool, True exactly where pixels were forged
    info: dict[str, Any]  # how it was made (kind, region, blend, transform...): JSON-serialisable plain types


def _retry(kind: str, base: np.ndarray, attempt: Callable[[], Forgery | str]) -> Forgery:
    """Call `attempt` until it returns a Forgery (not a reason string), at most TRIES times."""
    reasons = []
    for _ in range(TRIES):
        result = attempt()
        if isinstance(result, Forgery):
            return result
        reasons.append(result)
    height, width = base.shape[:2]
    raise ValueError(f"{kind}: no usable region in {TRIES} draws on a {width}x{height} image: {'; '.join(reasons)}")


def _region(image: np.ndarray, rng: np.random.Generator, shapes: Sequence[np.ndarray]) -> tuple[np.ndarray, str, str]:
    """(mask, method, reason): reason is "" for a usable region, else why it is too small."""
    region, method = random_region(image, rng, shapes)
    fraction = float(region.mean())
    reason = "" if fraction >= MIN_AREA else f"{method} region {fraction:.2%} < {MIN_AREA:.1%}"
    return region, method, reason


def _surround(mask: np.ndarray) -> np.ndarray:
    """HxW bool: the region's box grown by half its longer side, minus the region (its new neighbourhood)."""
    x0, y0, x1, y1 = mask_box(mask, pad=0)
    x0, y0, x1, y1 = mask_box(mask, pad=max(x1 - x0, y1 - y0) // 2 + 1)
    ring = np.zeros_like(mask)
    ring[y0:y1, x0:x1] = True
    ring &= ~mask
    return ring if ring.any() else ~mask


def splice(base: np.ndarray, donor: np.ndarray, rng: np.random.Generator, shapes: Sequence[np.ndarray] = ()) -> Forgery:
    """A `donor` region (object-shaped, resized with the donor to the base's size) pasted at a random place in `base`."""
    check_image("base", base)
    check_image("donor", donor)
    height, width = base.shape[:2]
    resized = donor.shape[:2] != base.shape[:2]
    if resized:
        shrink = donor.shape[0] * donor.shape[1] > height * width
        donor = cv2.resize(donor, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def attempt() -> Forgery | str:
        region, method, reason = _region(donor, rng, shapes)
        if reason:
            return reason
        x0, y0, x1, y1 = mask_box(region)
        dx, dy = int(rng.integers(-x0, width - x1 + 1)), int(rng.integers(-y0, height - y1 + 1))
        mask = np.roll(region, (dy, dx), axis=(0, 1))  # the box stays inside, so nothing wraps
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        patch = cv2.warpAffine(donor, shift, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
        strength = round(float(rng.uniform(0.3, 1.0)), 3) if rng.random() < COLOUR_P else 0.0
        if strength:
            patch = match_colour(patch, mask, base, _surround(mask), strength)
        image, blend = paste(base, patch, mask, rng, BLENDS[int(rng.random() < POISSON_P)])
        return Forgery(image, mask, {
            "kind": "splice", "region": method, "blend": blend, "area": round(float(mask.mean()), 5),
            "offset": [dx, dy], "colour_matched": bool(strength), "colour_strength": strength,
            "donor_resized": bool(resized)})

    return _retry("splice", base, attempt)


def _transform(region: np.ndarray, scale: float, angle: float, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """The region scaled, turned by `angle` degrees and mirrored about its box centre: (th x tw bool copy
    cropped to its box, 2x3 float64 matrix taking image pixels to the copy's pixels)."""
    x0, y0, x1, y1 = mask_box(region)
    centre = np.array([(x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2])
    cos, sin = math.cos(math.radians(angle)) * scale, math.sin(math.radians(angle)) * scale
    mirror = -1.0 if flip else 1.0
    linear = np.array([[cos * mirror, -sin], [sin * mirror, cos]])
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64) - 0.5 - centre
    low = np.floor((corners @ linear.T).min(axis=0)) - 1
    high = np.ceil((corners @ linear.T).max(axis=0)) + 1
    matrix = np.hstack([linear, np.round(-linear @ centre - low)[:, None]])  # whole pixels: no half-pixel resampling
    size = (int(high[0] - low[0]) + 1, int(high[1] - low[1]) + 1)
    moved = cv2.warpAffine(region.astype(np.float32), matrix, size, flags=cv2.INTER_LINEAR) >= 0.5
    if not moved.any():
        return moved, matrix
    tx0, ty0, tx1, ty1 = mask_box(moved)
    matrix[:, 2] -= (tx0, ty0)
    return moved[ty0:ty1, tx0:tx1], matrix


def _place_copy(region: np.ndarray, copy: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """Top-left (x, y) for `copy` inside the image, 2+ px away from `region`; None after PLACE_TRIES misses."""
    (height, width), (th, tw) = region.shape, copy.shape
    if th > height or tw > width:
        return None
    keep_off = cv2.dilate(region.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    for _ in range(PLACE_TRIES):
        x, y = int(rng.integers(0, width - tw + 1)), int(rng.integers(0, height - th + 1))
        if not (keep_off[y:y + th, x:x + tw] & copy).any():
            return x, y
    return None


def _warp_near(image: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`image` with the mask's box (plus the feathering margin) replaced by `image` warped through `matrix`."""
    x0, y0, x1, y1 = mask_box(mask, pad=FEATHER_MARGIN)
    local = matrix.copy()
    local[:, 2] -= (x0, y0)
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.warpAffine(image, local, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REFLECT)
    return out


def copy_move(base: np.ndarray, rng: np.random.Generator, shapes: Sequence[np.ndarray] = ()) -> Forgery:
    """A `base` region copied (scaled 0.7-1.3, turned -30..30 degrees, mirrored with p 0.3) to a place that
    does not overlap it. The mask is the pasted copy only (info["mask_covers"] == "target")."""
    check_image("base", base)
    height, width = base.shape[:2]

    def attempt() -> Forgery | str:
        region, method, reason = _region(base, rng, shapes)
        if reason:
            return reason
        scale, angle = round(float(rng.uniform(*SCALE)), 3), round(float(rng.uniform(*ANGLE)), 2)
        flip = bool(rng.random() < FLIP_P)
        copy, matrix = _transform(region, scale, angle, flip)
        if copy.sum() < MIN_AREA * height * width:
            return f"{method} copy at scale {scale} under {MIN_AREA:.1%}"
        where = _place_copy(region, copy, rng)
        if where is None:
            return f"no room for a {copy.shape[1]}x{copy.shape[0]} copy beside its {method} source"
        x, y = where
        matrix[:, 2] += (x, y)
        mask = np.zeros((height, width), dtype=bool)
        mask[y:y + copy.shape[0], x:x + copy.shape[1]] = copy
        image, blend = paste(base, _warp_near(base, matrix, mask), mask, rng, BLENDS[int(rng.random() < POISSON_P)])
        sx0, sy0, sx1, sy1 = mask_box(region)
        return Forgery(image, mask, {
            "kind": "copy-move", "region": method, "blend": blend, "area": round(float(mask.mean()), 5),
            "scale": scale, "angle": angle, "flip": flip, "source_box": [sx0, sy0, sx1, sy1],
            "target_box": list(mask_box(mask)), "mask_covers": "target"})

    return _retry("copy-move", base, attempt)


def _inpaint(image: np.ndarray, hole: np.ndarray, radius: int, algorithm: str) -> tuple[np.ndarray, float]:
    """(`image` with the `hole` pixels, and only those, inpainted; the scale it ran at). It runs on a crop
    around the hole, shrunk so the hole holds about INPAINT_PIXELS pixels (radius shrunk alike)."""
    x0, y0, x1, y1 = mask_box(hole, pad=2 * radius + 2)
    crop, inside = image[y0:y1, x0:x1], hole[y0:y1, x0:x1]
    scale = min(1.0, math.sqrt(INPAINT_PIXELS / int(inside.sum())))
    small, small_hole, small_radius = crop, inside.astype(np.uint8), radius
    if scale < 1:
        size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
        small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        small_hole = (cv2.resize(inside.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
        small_radius = max(1, round(radius * scale))
    filled = cv2.inpaint(np.ascontiguousarray(small), small_hole, small_radius, INPAINT_FLAGS[algorithm])
    if scale < 1:
        filled = cv2.resize(filled, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    out = image.copy()
    out[y0:y1, x0:x1][inside] = filled[inside]
    return out, scale


def removal(base: np.ndarray, rng: np.random.Generator, shapes: Sequence[np.ndarray] = ()) -> Forgery:
    """An object-shaped `base` region inpainted away (cv2.inpaint, Telea or Navier-Stokes, radius 3-9 px).
    The mask is exactly the inpainted region."""
    check_image("base", base)

    def attempt() -> Forgery | str:
        region, method, reason = _region(base, rng, shapes)
        if reason:
            return reason
        algorithm = sorted(INPAINT_FLAGS)[int(rng.integers(len(INPAINT_FLAGS)))]
        radius = int(rng.integers(INPAINT_RADIUS[0], INPAINT_RADIUS[1] + 1))
        image, scale = _inpaint(base, region, radius, algorithm)
        return Forgery(image, region, {
            "kind": "removal", "region": method, "area": round(float(region.mean()), 5), "inpaint": algorithm,
            "radius": radius, "inpaint_scale": round(scale, 3)})

    return _retry("removal", base, attempt)


def forge(kind: str, base: np.ndarray, donor: np.ndarray | None, rng: np.random.Generator,
          shapes: Sequence[np.ndarray] = ()) -> Forgery:
    """Make one forgery of `kind` (one of KINDS) from `base`; `donor` is used (and required) only for "splice"."""
    check_choice("kind", kind, KINDS)
    if kind == "splice":
        if donor is None:
            raise ValueError("donor is required for kind 'splice', got None")
        return splice(base, donor, rng, shapes)
    if kind == "copy-move":
        return copy_move(base, rng, shapes)
    return removal(base, rng, shapes)
