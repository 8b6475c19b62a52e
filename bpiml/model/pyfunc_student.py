"""The registered model's Python code, for MLflow's models-from-code (`bpiml.model.mlflow_model` logs it).

MLflow runs this file when it loads the model (`mlflow.pyfunc.load_model`, `mlflow models serve`): its
last line hands MLflow the model object (`mlflow.models.set_model`), so nothing else imports it. The
student comes from the model's artifacts, `model.safetensors` (tensors only) and `model_config.json`,
through `checkpoint.load_exported`: nothing is unpickled.

Input: a DataFrame with a binary column `image`, one encoded image file (JPEG, PNG, ...) per row; over
HTTP the column's values are base64 strings. Output: a DataFrame with `probs` (HxW float32 probability
map at the image's own size) and `score` (float32, the image-level score: the map's maximum), one row
per input row; the same numbers as `bpiml.model.infer.predict_batch` on the decoded images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from bpiml.data.imageio import decode_image
from bpiml.model import checkpoint
from bpiml.model.infer import predict_batch

IMAGE_COLUMN = "image"
BATCH = 8  # images per forward pass


class StudentModel(PythonModel):
    """pyfunc wrapper of an exported student (see the module doc for input and output)."""

    def load_context(self, context: Any) -> None:
        self.model = checkpoint.load_exported(Path(context.artifacts["weights"]).parent)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a schema from them
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input:
            raise ValueError(f"expected a DataFrame with a binary column {IMAGE_COLUMN!r} (encoded image files), "
                             f"got {type(model_input).__name__}")
        images = [decode_image(bytes(data), f"row {i}")[0] for i, data in enumerate(model_input[IMAGE_COLUMN])]
        probs = [p for start in range(0, len(images), BATCH) for p in predict_batch(self.model, images[start:start + BATCH])]
        return pd.DataFrame({"probs": probs, "score": np.array([p.max() for p in probs], np.float32)})


mlflow.models.set_model(StudentModel())
