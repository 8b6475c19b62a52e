"""Inference: a registered model or checkpoint -> probability maps at any image size.

`load_model` loads the model a URI means by the one rule every job shares (`bpiml.model.locate`):
`models:/...` / `runs:/...` (the MLflow Model's student), an exported folder, a checkpoint file or
folder, or a run folder (its best checkpoint), local or s3://. An exported student is read from
`model.safetensors` + `model_config.json` (`checkpoint.load_exported`), a checkpoint with
`weights_only=True`: nothing is unpickled, and MLflow's own loader is not run.
`predict_batch` (home: `bpiml.model.infer`) resizes HxWx3 uint8 images to the model's input size, runs
them in one pass and resizes the sigmoid maps back to each image's size (bilinear).
"""

from __future__ import annotations

from typing import Any

from bpiml.model import checkpoint
from bpiml.model.infer import (  # noqa: F401 - the prediction rule's home is model.infer; callers import it here
    DEFAULT_IMG_SIZE,
    check_image,
    model_img_size,
    predict_batch,
    predict_probs,
)
from bpiml.model.locate import check_model, open_model  # noqa: F401 - check_model: callers import it here


def load_model(uri: str, tracking_uri: str = "") -> Any:
    """Load a student for inference on CPU, in eval mode (see module doc for accepted URIs).

    MLflow URIs are resolved against `tracking_uri`, else MLFLOW_TRACKING_URI, else the project's
    embedded sqlite store (where training registers models by default).
    """
    with open_model(uri, tracking_uri) as found:
        if found.kind == "exported":
            return checkpoint.load_exported(found.path)
        return checkpoint.student_from_state(checkpoint.load_state(found.path), where=uri)
