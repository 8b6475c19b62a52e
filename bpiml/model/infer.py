"""A student on images of any size: HxWx3 uint8 images in, HxW probability maps out.

`predict_batch` resizes the images to the model's input size, runs them in one pass and resizes the
sigmoid maps back to each image's size (bilinear). Every path that turns images into probabilities
uses it: `jobs/predict.py`, `jobs/evaluate.py`, `bpiml predict` (through `bpiml.evaluation.inference`)
and the registered MLflow Model (`bpiml.model.pyfunc_student`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bpiml.data.imageio import check_image  # its home is imageio (light: no torch); callers import it here too

DEFAULT_IMG_SIZE = 224


def model_img_size(model: Any) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "img_size", DEFAULT_IMG_SIZE) or DEFAULT_IMG_SIZE)


def _to_input(image: np.ndarray, size: int) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xSxS float in [0, 1] (bilinear, antialiased when shrinking)."""
    x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255.0  # a copy: inputs may be read-only
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0)


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        output = output[0]
    if isinstance(output, dict):
        output = output["logits"]
    return output


def predict_batch(model: Any, images: Sequence[np.ndarray], device: str | None = None) -> list[np.ndarray]:
    """Probability maps (HxW float32 in [0, 1]) for images of any sizes, one forward pass."""
    if not images:
        return []
    images = [check_image(im) for im in images]
    size = model_img_size(model)
    if device is None:
        device = str(next(model.parameters()).device) if any(True for _ in model.parameters()) else "cpu"
    x = torch.cat([_to_input(im, size) for im in images]).to(device)
    out = []
    with torch.inference_mode():
        probs = torch.sigmoid(_logits(model(x)).float())
        for i, im in enumerate(images):
            p = probs[i: i + 1]
            if p.shape[-2:] != im.shape[:2]:
                p = F.interpolate(p, size=im.shape[:2], mode="bilinear", align_corners=False)
            out.append(p[0, 0].clamp(0.0, 1.0).cpu().numpy().astype(np.float32))
    return out


def predict_probs(model: Any, image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> HxW float32 probability map at the image's own size."""
    return predict_batch(model, [image])[0]
