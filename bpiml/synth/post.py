"""Post-processing after forging, so the region's edge is not the only cue: a random chain of
bpiml.data.degrade steps (resize, blur, noise, JPEG) applied to the image, and to the mask where
the size changes, then the final encoding.

A JPEG step followed by a JPEG save gives double compression, as in forgeries found in the wild.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from bpiml.data import degrade
from bpiml.synth.regions import check_image

# kind: (probability, low, high, decimals) of a post-processing step; JPEG quality is an integer
STEPS = {
    "resize": (0.3, 0.5, 1.5, 2),
    "blur": (0.2, 0.3, 1.5, 2),
    "noise": (0.2, 1.0, 6.0, 1),
    "jpeg": (0.5, 60, 95, 0),
}
JPEG_SAVE_P = 0.7  # probability that the forged image is saved as JPEG (else PNG)
JPEG_SAVE_QUALITY = (70, 98)


@dataclass(frozen=True)
class Step(degrade.Degradation):
    kind: str  # a bpiml.data.degrade.KINDS key: "jpeg", "resize", "blur" or "noise"
    value: float  # quality, scale factor or sigma, within that kind's degrade range

    def __post_init__(self) -> None:
        if self.kind not in degrade.KINDS:
            raise ValueError(f"Step kind must be one of {sorted(degrade.KINDS)}, got {self.kind!r}")
        low, high, what = degrade.KINDS[self.kind]
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value) or not low <= self.value <= high:
            raise ValueError(f"Step value for {self.kind!r} ({what}) must be in [{low}, {high}], got {self.value!r}")
        if self.kind == "jpeg" and not float(self.value).is_integer():
            raise ValueError(f"Step value for 'jpeg' (JPEG quality) must be an integer, got {self.value!r}")


def random_chain(rng: np.random.Generator, max_steps: int = 3) -> list[Step]:
    """0..max_steps steps, each kind at most once with STEPS' probability, in a random order."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"max_steps must be an integer >= 0, got {max_steps!r}")
    kinds = list(STEPS)
    chain: list[Step] = []
    for index in rng.permutation(len(kinds)):
        if len(chain) == max_steps:
            break
        kind = kinds[int(index)]
        probability, low, high, decimals = STEPS[kind]
        if rng.random() < probability:
            value = rng.integers(low, high + 1) if kind == "jpeg" else round(float(rng.uniform(low, high)), decimals)
            chain.append(Step(kind, float(value)))
    return chain


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """HxW bool -> height x width bool, resampled as degrade resizes images (area down, bilinear up), split at 0.5."""
    shrink = height * width < mask.shape[0] * mask.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(mask.astype(np.float32), (width, height), interpolation=interp).reshape(height, width) >= 0.5


def apply_chain(image: np.ndarray, mask: np.ndarray, chain: Sequence[Step]) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8, HxW bool) -> the image through each step of `chain` (bpiml.data.degrade.apply) and the mask
    resized along, so the returned mask always has the returned image's height and width. The mask may be empty."""
    check_image("image", image)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask must have the image's shape {image.shape[:2]}, got {mask.shape}")
    mask = mask.astype(bool)
    for i, step in enumerate(chain):
        if not isinstance(step, Step):
            raise ValueError(f"chain[{i}] must be a Step, got {step!r}")  # noqa: TRY004 (bad arguments: ValueError)
        image = degrade.apply(image, step)
        if image.shape[:2] != mask.shape:
            mask = _resize_mask(mask, *image.shape[:2])
    return image, mask


def random_save(rng: np.random.Generator) -> tuple[str, int]:
    """The final encoding: ("jpeg", quality in JPEG_SAVE_QUALITY) with probability JPEG_SAVE_P, else ("png", 0)."""
    if rng.random() < JPEG_SAVE_P:
        return "jpeg", int(rng.integers(JPEG_SAVE_QUALITY[0], JPEG_SAVE_QUALITY[1] + 1))
    return "png", 0


def describe(chain: Sequence[Step]) -> list[str]:
    """The chain for a manifest record, e.g. ["resize:0.8", "jpeg:75"] (degrade's `kind:value` spelling)."""
    return [step.name for step in chain]
