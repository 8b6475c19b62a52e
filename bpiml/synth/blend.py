"""Compositing a positioned patch into a photo: feathered alpha or Poisson blending, and colour matching.

The forged mask is always the binary region handed to `paste`: an alpha paste keeps alpha > 0.5
exactly on that region (`feather`), and a Poisson paste only rewrites pixels inside it, so the
image and the mask agree.
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

from bpiml.config import check_choice, check_range
from bpiml.synth.regions import check_image, check_mask, mask_box

logger = logging.getLogger(__name__)

BLENDS = ("alpha", "poisson")
FEATHER_SIGMA = 3.0  # largest feathering sigma `paste` draws, in pixels
INSIDE = 0.5 + 1 / 255  # the least alpha a region pixel keeps, so alpha > 0.5 is exactly the region
POISSON_PAD = 4  # background kept (reflected where the image ends) around a Poisson region
POISSON_MIN_SIDE = 3  # Poisson needs a region at least this many pixels across; smaller ones are alpha-pasted
GAIN_RANGE = (0.5, 2.0)  # colour matching never scales a channel's spread by more than this
# pixels beyond the region that a feathered paste reads from the patch (OpenCV's float Gaussian reaches 4 sigma)
FEATHER_MARGIN = math.ceil(4 * FEATHER_SIGMA) + 1


def feather(mask: np.ndarray, rng: np.random.Generator, max_sigma: float = FEATHER_SIGMA) -> np.ndarray:
    """HxW bool mask -> HxW float32 alpha in [0, 1]: the edge blurred by a Gaussian of sigma ~ uniform(0, max_sigma).

    Sigma under 0.3 px gives the hard mask. Region pixels keep alpha > 0.5 and the others <= 0.5,
    so thresholding the alpha at 0.5 gives back exactly `mask`.
    """
    if not math.isfinite(max_sigma):
        raise ValueError(f"max_sigma must be a finite number >= 0, got {max_sigma!r}")
    check_range("max_sigma", max_sigma, 0.0)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    sigma = float(rng.uniform(0.0, max_sigma))
    hard = mask.astype(np.float32)
    if sigma < 0.3:
        return hard
    soft = cv2.GaussianBlur(hard, (0, 0), sigma)
    return np.where(mask, np.clip(soft, INSIDE, 1.0), np.minimum(soft, 0.5)).astype(np.float32)


def _lab_stats(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32, 3 each) of the masked pixels in OpenCV's 8-bit Lab."""
    x0, y0, x1, y1 = mask_box(mask)
    lab = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2LAB)
    pixels = lab[mask[y0:y1, x0:x1]].astype(np.float32)
    return pixels.mean(axis=0), pixels.std(axis=0)


def match_colour(patch: np.ndarray, patch_mask: np.ndarray, reference: np.ndarray, reference_mask: np.ndarray,
                 strength: float = 1.0) -> np.ndarray:
    """Reinhard colour transfer: HxWx3 uint8 `patch` with its `patch_mask` region's Lab mean/std moved toward
    those of `reference` under `reference_mask` (any size), by `strength` in [0, 1]; returns HxWx3 uint8.

    The change covers the region's box plus the feathering margin (a feathered paste reads patch
    pixels just outside the region); each channel's spread is scaled by at most GAIN_RANGE.
    """
    check_image("patch", patch)
    check_image("reference", reference)
    patch_mask = check_mask("patch_mask", patch_mask, patch.shape[:2])
    reference_mask = check_mask("reference_mask", reference_mask, reference.shape[:2])
    if not math.isfinite(strength):
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    check_range("strength", strength, 0.0, 1.0)
    out = patch.copy()
    if strength == 0:
        return out
    mean_ref, std_ref = _lab_stats(reference, reference_mask)
    mean, std = _lab_stats(patch, patch_mask)
    gain = np.clip(std_ref / np.maximum(std, 1.0), *GAIN_RANGE)
    x0, y0, x1, y1 = mask_box(patch_mask, pad=FEATHER_MARGIN)
    lab = cv2.cvtColor(np.ascontiguousarray(patch[y0:y1, x0:x1]), cv2.COLOR_RGB2LAB).astype(np.float32)
    moved = (lab - mean) * gain + mean_ref
    lab += np.float32(strength) * (moved - lab)
    out[y0:y1, x0:x1] = cv2.cvtColor(np.clip(lab.round(), 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return out


def _alpha_paste(base: np.ndarray, patch: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Feathered alpha composite, computed only in the mask's box plus the feathering margin."""
    x0, y0, x1, y1 = mask_box(mask, pad=FEATHER_MARGIN)
    alpha = feather(mask[y0:y1, x0:x1], rng, FEATHER_SIGMA)[..., None]
    below = base[y0:y1, x0:x1].astype(np.float32)
    mixed = below + alpha * (patch[y0:y1, x0:x1].astype(np.float32) - below)
    out = base.copy()
    out[y0:y1, x0:x1] = np.clip(mixed.round(), 0, 255).astype(np.uint8)
    return out


def _poisson_paste(base: np.ndarray, patch: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """cv2.seamlessClone (NORMAL_CLONE) of the aligned patch over the mask, or None where OpenCV cannot.

    It runs on a crop of the mask's box plus POISSON_PAD, reflected where the image ends, so a
    region touching the border works; only region pixels are written back.
    """
    x0, y0, x1, y1 = mask_box(mask)
    if min(x1 - x0, y1 - y0) < POISSON_MIN_SIDE:
        return None
    cx0, cy0, cx1, cy1 = mask_box(mask, pad=POISSON_PAD)
    border = (POISSON_PAD - (y0 - cy0), POISSON_PAD - (cy1 - y1), POISSON_PAD - (x0 - cx0), POISSON_PAD - (cx1 - x1))
    inside = mask[cy0:cy1, cx0:cx1]
    below = cv2.copyMakeBorder(base[cy0:cy1, cx0:cx1], *border, cv2.BORDER_REFLECT)
    above = cv2.copyMakeBorder(patch[cy0:cy1, cx0:cx1], *border, cv2.BORDER_REFLECT)
    stencil = cv2.copyMakeBorder(inside.astype(np.uint8) * 255, *border, cv2.BORDER_CONSTANT, value=0)
    # OpenCV puts the mask's box at centre - size // 2: the box's own place, as the patch is aligned
    centre = (POISSON_PAD + (x1 - x0) // 2, POISSON_PAD + (y1 - y0) // 2)
    try:
        cloned = cv2.seamlessClone(above, below, stencil, centre, cv2.NORMAL_CLONE)
    except cv2.error as err:
        logger.debug("seamlessClone failed on a %dx%d region (%s); alpha-pasting instead", x1 - x0, y1 - y0,
                     str(err).strip().splitlines()[-1])
        return None
    top, left = border[0], border[2]
    out = base.copy()
    window = out[cy0:cy1, cx0:cx1]
    window[inside] = cloned[top:top + cy1 - cy0, left:left + cx1 - cx0][inside]
    return out


def paste(base: np.ndarray, patch: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
          method: str) -> tuple[np.ndarray, str]:
    """Composite `patch` (HxWx3 uint8, already positioned over `base`) into `base` (HxWx3 uint8) over `mask`
    (HxW bool, non-empty); returns (HxWx3 uint8, the method used).

    "alpha": feathered by `feather` (sigma up to FEATHER_SIGMA); "poisson": cv2.seamlessClone, falling
    back to "alpha" for a region under POISSON_MIN_SIDE pixels across or one OpenCV rejects.
    """
    check_image("base", base)
    check_image("patch", patch)
    if patch.shape != base.shape:
        raise ValueError(f"patch must have the base's shape {base.shape}, got {patch.shape}")
    mask = check_mask("mask", mask, base.shape[:2])
    check_choice("method", method, BLENDS)
    if method == "poisson":
        out = _poisson_paste(base, patch, mask)
        if out is not None:
            return out, "poisson"
    return _alpha_paste(base, patch, mask, rng), "alpha"
