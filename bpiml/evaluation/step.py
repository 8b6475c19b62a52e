"""The batch step that runs the student over images: the predictor's and the evaluator's common part.

Per actor the model is loaded once, on the device its GPUs give (`bpiml.runtime.batch.BatchStep`).
Per batch: each image is loaded (`load`; one that fails becomes the row's `error`), the loaded ones
go through the model in one call, each probability map is finished (`finish`: written, scored; a
failure there is the row's `error` too), and the rows come out as the step's `COLUMNS`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from bpiml.evaluation.inference import load_model, predict_batch
from bpiml.runtime.batch import BatchStep


class ModelStep(BatchStep):
    """A Ray Data batch step over rows {id, image, ...[, error]}: see the module doc."""

    COLUMNS: ClassVar[tuple[str, ...]] = ("id", "image", "error")  # the output columns, in order
    EMPTY: ClassVar[dict[str, Any]] = {}  # the produced fields of a row that was not produced (a reject)

    def __init__(self, model_uri: str, tracking_uri: str = "", model: Any | None = None,
                 num_gpus: float = 0.0) -> None:
        super().__init__(num_gpus)
        self.model = model if model is not None else load_model(model_uri, tracking_uri)
        self.model.to(self.device)

    def load(self, batch: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, Any]:
        """(image, whatever `finish` needs besides it) of row `k`."""
        raise NotImplementedError

    def finish(self, batch: dict[str, np.ndarray], k: int, loaded: tuple[np.ndarray, Any],
               prob: np.ndarray) -> dict[str, Any]:
        """Row `k`'s produced fields from its probability map."""
        raise NotImplementedError

    def passed(self, batch: dict[str, np.ndarray], k: int) -> dict[str, Any]:
        """Row `k`'s fields taken from the input row."""
        return {"id": str(batch["id"][k]), "image": str(batch["image"][k])}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        errors = [str(e) for e in batch["error"]] if "error" in batch else [""] * n  # "": not a reject yet
        loaded = self.each(lambda k: self.load(batch, k), errors)
        probs = dict(zip(loaded, predict_batch(self.model, [image for image, _ in loaded.values()], self.device)))
        produced = self.each(lambda k: self.finish(batch, k, loaded[k], probs[k]), errors)
        out: dict[str, list[Any]] = {c: [] for c in self.COLUMNS}
        for k in range(n):
            row = {**self.passed(batch, k), **produced.get(k, self.EMPTY), "error": errors[k]}
            for column in self.COLUMNS:
                out[column].append(row[column])
        return {c: np.asarray(v) for c, v in out.items()}
