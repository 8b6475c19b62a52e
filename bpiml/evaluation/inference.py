"""Inference: a registered model or checkpoint -> probability maps at any image size.

`load_model` accepts `models:/<name>@<alias>`, `models:/<name>/<version>`, `runs:/<id>/<path>` (MLflow;
an exported student, `bpiml.model.checkpoint.load_exported`: safetensors, never a pickle), or a
checkpoint written by training (`bpiml.model.checkpoint`: a torch file, a checkpoint folder or a
run folder, local or s3://). `predict_batch` resizes HxWx3 uint8 images to the model's input size, runs
them in one pass and resizes the sigmoid maps back to each image's size (bilinear).
"""

from __future__ import annotations

import tempfile
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bpiml.model import checkpoint
from bpiml.runtime.tracking import (  # noqa: F401 - MLFLOW_SCHEMES, is_mlflow_uri: their home is runtime.tracking
    MLFLOW_SCHEMES,
    check_registered_model,
    download_model,
    is_mlflow_uri,
    resolve_tracking_uri,
)

DEFAULT_IMG_SIZE = 224


def load_model(uri: str, tracking_uri: str = "") -> Any:
    """Load a student for inference on CPU, in eval mode (see module doc for accepted URIs).

    MLflow URIs are resolved against `tracking_uri`, else MLFLOW_TRACKING_URI, else the project's
    embedded sqlite store (where training registers models by default).
    """
    if not is_mlflow_uri(uri):
        return checkpoint.load_student(uri)
    with tempfile.TemporaryDirectory() as tmp:
        return checkpoint.load_exported(download_model(uri, resolve_tracking_uri(tracking_uri), tmp))


def check_model(uri: str, tracking_uri: str = "") -> str:
    """Fail fast when a model is missing; returns the tracking URI that Ray workers must use."""
    if not is_mlflow_uri(uri):
        checkpoint.find_checkpoint_file(uri)
        return ""
    resolved = resolve_tracking_uri(tracking_uri)
    check_registered_model(uri, resolved)
    return resolved


def model_img_size(model: Any) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "img_size", DEFAULT_IMG_SIZE) or DEFAULT_IMG_SIZE)


def check_image(image: np.ndarray) -> np.ndarray:
    """`image` as an HxWx3 uint8 array; ValueError naming the shape and dtype otherwise."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image has no pixels: shape {image.shape}")
    return image


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
