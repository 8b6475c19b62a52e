"""The box teacher: each box filled as a rectangle (the ablation baseline, no model).

It has no evidence about its masks, so its confidence is None (null in records), never a number."""

from __future__ import annotations

import numpy as np

from bpiml.data.boxes import fill_boxes
from bpiml.pseudolabel.teachers.base import Labels, validate_batch

VERSION = "box-v1"  # the box teacher's identity: what it produces never changes with options

class BoxTeacher:
    """Pseudo mask = union of the filled boxes."""

    name = "box"
    version = VERSION

    def predict(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        boxes = validate_batch(images, boxes)
        return [fill_boxes(image.shape[:2], image_boxes) for image, image_boxes in zip(images, boxes)]

    def label(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[Labels]:
        masks = self.predict(images, boxes)
        return [Labels(mask, [None] * len(image_boxes)) for mask, image_boxes in zip(masks, boxes)]


def build_box_teacher(**options: object) -> BoxTeacher:
    if options:
        raise ValueError(f"the box teacher takes no options, got: {', '.join(sorted(options))}")
    return BoxTeacher()
