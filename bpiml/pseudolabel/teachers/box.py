"""The box teacher: each box filled as a rectangle (the ablation baseline, no model)."""

from __future__ import annotations

import numpy as np

from bpiml.pseudolabel.teachers.base import box_pixels, check_inputs


class BoxTeacher:
    """Pseudo mask = union of the filled boxes."""

    name = "box"
    version = "box-v1"

    def predict(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        boxes = check_inputs(images, boxes)
        masks = []
        for image, image_boxes in zip(images, boxes):
            height, width = image.shape[:2]
            mask = np.zeros((height, width), dtype=bool)
            for box in image_boxes:
                x0, y0, x1, y1 = box_pixels(box, height, width)
                mask[y0:y1, x0:x1] = True
            masks.append(mask)
        return masks


def build_box_teacher(**options: object) -> BoxTeacher:
    if options:
        raise ValueError(f"the box teacher takes no options, got: {', '.join(sorted(options))}")
    return BoxTeacher()
