"""Inference: a registered model or checkpoint -> probability maps at any image size.

`load_model` accepts `models:/<name>@<alias>`, `models:/<name>/<version>`, `runs:/<id>/<path>` (MLflow:
the registered MLflow Model, `bpiml.model.mlflow_model`, or an older bare exported folder; either way
the student is read from `model.safetensors` + `model_config.json` by `checkpoint.load_exported`, never
from a pickle, and MLflow's own loader is not run), or a checkpoint written by training
(`bpiml.model.checkpoint`: a torch file, a checkpoint folder or a run folder, local or s3://).
`predict_batch` (home: `bpiml.model.infer`) resizes HxWx3 uint8 images to the model's input size, runs
them in one pass and resizes the sigmoid maps back to each image's size (bilinear).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from bpiml.model import checkpoint
from bpiml.model.infer import (  # noqa: F401 - the prediction rule's home is model.infer; callers import it here
    DEFAULT_IMG_SIZE,
    check_image,
    model_img_size,
    predict_batch,
    predict_probs,
)
from bpiml.runtime.tracking import (  # noqa: F401 - MLFLOW_SCHEMES, is_mlflow_uri: their home is runtime.tracking
    MLFLOW_SCHEMES,
    check_registered_model,
    download_model,
    is_mlflow_uri,
    resolve_tracking_uri,
)


def load_model(uri: str, tracking_uri: str = "") -> Any:
    """Load a student for inference on CPU, in eval mode (see module doc for accepted URIs).

    MLflow URIs are resolved against `tracking_uri`, else MLFLOW_TRACKING_URI, else the project's
    embedded sqlite store (where training registers models by default).
    """
    if not is_mlflow_uri(uri):
        return checkpoint.load_student(uri)
    with tempfile.TemporaryDirectory() as tmp:
        return checkpoint.load_exported(_download_student(uri, resolve_tracking_uri(tracking_uri), tmp))


def _download_student(uri: str, tracking_uri: str, dst: str) -> str:
    """The local folder holding the student's files: only `artifacts/` of an MLflow Model (its code/ and
    environment files are not needed here), else everything (a version in the older bare-folder format)."""
    try:
        folder = download_model(f"{uri.rstrip('/')}/artifacts", tracking_uri, os.path.join(dst, "artifacts"))
        if checkpoint.find_exported(folder) is not None:
            return folder
    except FileNotFoundError:  # no artifacts/ folder: the older format
        pass
    return download_model(uri, tracking_uri, os.path.join(dst, "model"))


def check_model(uri: str, tracking_uri: str = "") -> str:
    """Fail fast when a model is missing; returns the tracking URI that Ray workers must use."""
    if not is_mlflow_uri(uri):
        checkpoint.find_checkpoint_file(uri)
        return ""
    resolved = resolve_tracking_uri(tracking_uri)
    check_registered_model(uri, resolved)
    return resolved
