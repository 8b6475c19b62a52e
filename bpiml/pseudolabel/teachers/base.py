"""The teacher interface: images and their boxes in, one pseudo mask per image out.

A teacher turns each image's boxes (`Nx4` float32 `[x0, y0, x1, y1]` pixels, already clipped to
the image) into one `HxW` bool mask, the union of the per-box masks. An image with no boxes gets
an all-False mask without running the model. Images in one call may have different sizes.

`label` returns the same mask with the teacher's confidence (`Labels`): one value in [0, 1] (or
None, where the teacher has no evidence) per box, in the boxes' order, and the image's confidence
by the one rule `image_confidence` (the minimum over its boxes). What each teacher's number is:
docs/data-formats.md#teacher-confidence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


def image_confidence(box_confidence: Sequence[float | None]) -> float | None:
    """An image's teacher confidence: the minimum over its boxes that have one (its weakest box decides
    whether a person should look at it); None when no box has one (no boxes, or the box teacher)."""
    values = [float(c) for c in box_confidence if c is not None]
    return min(values) if values else None


@dataclasses.dataclass
class Labels:
    """One image's teacher output: the union mask and the confidence of each box."""

    mask: np.ndarray  # HxW bool, union of the box masks
    box_confidence: list[float | None]  # one per box, same order as the boxes, each in [0, 1] or None
    extra: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # per-box teacher fields, record keys

    @property
    def confidence(self) -> float | None:
        return image_confidence(self.box_confidence)

    def record_fields(self) -> dict[str, Any]:
        """The output record's confidence keys: `confidence`, `box_confidence` and the teacher's own."""
        box = None if self.box_confidence and all(c is None for c in self.box_confidence) else list(self.box_confidence)
        return {"confidence": self.confidence, "box_confidence": box, **self.extra}


@runtime_checkable
class Teacher(Protocol):
    name: str  # "sam" | "grabcut" | "box"
    version: str  # e.g. "sam-vit_b-<sha256[:12] of checkpoint>-fast", "grabcut-v2-<params hash>", "box-v1"

    def predict(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """images: HxWx3 uint8 RGB (sizes may differ); boxes: Nx4 float32 [x0,y0,x1,y1] pixels, already clipped.
        Returns one HxW bool mask per image = union of its box masks. An image with no boxes -> all False,
        without running the model."""
        ...

    def label(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[Labels]:
        """As `predict`, with each box's confidence (see `Labels`)."""
        ...


def validate_batch(images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Validate a predict() call; returns the boxes as `Nx4` float32 arrays (N may be 0).

    Raises ValueError naming the offending index, the expected and the actual value.
    """
    if len(images) != len(boxes):
        raise ValueError(f"got {len(images)} images but {len(boxes)} box arrays; expected one box array per image")
    out = []
    for i, (image, image_boxes) in enumerate(zip(images, boxes)):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise ValueError(f"images[{i}]: expected an HxWx3 uint8 RGB array, got shape {shape} dtype {dtype}")
        try:
            arr = np.asarray(image_boxes, dtype=np.float32)
        except (TypeError, ValueError):  # e.g. an object array of per-box arrays (Ray Data batches)
            try:
                arr = np.asarray([np.asarray(b, dtype=np.float32) for b in image_boxes], dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise ValueError(f"boxes[{i}]: expected an Nx4 array [x0, y0, x1, y1], got {image_boxes!r}") from err
        if arr.size == 0:
            arr = arr.reshape(0, 4)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"boxes[{i}]: expected an Nx4 array [x0, y0, x1, y1], got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"boxes[{i}]: boxes must be finite, got {arr.tolist()}")
        out.append(arr)
    return out


def params_hash(params: dict[str, Any]) -> str:
    """A short stable hash of a teacher's parameters, used in its `version`."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]
