"""The teacher stage: one frozen teacher per Ray actor, images and boxes in, masks and confidences out.

A batch that fails (e.g. GPU out of memory on one huge image) is retried image by image, and only
the images that fail alone are rejected. Nothing else runs here, so the accelerator is not kept
waiting by decoding, PNG encoding or writes (CPU tasks before and after this stage).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from bpiml.data import storage
from bpiml.data.rejects import Reject
from bpiml.pseudolabel.config import MODEL_TEACHERS, PseudoLabelConfig
from bpiml.pseudolabel.rows import LABEL_COLUMNS, RejectsOut
from bpiml.pseudolabel.teachers import build_teacher
from bpiml.pseudolabel.teachers.base import Labels
from bpiml.runtime.batch import BatchStep

logger = logging.getLogger(__name__)


class TeacherLabeler(BatchStep):
    """One frozen teacher per actor (loaded once); a batch of images in, their masks out (see the module doc).

    Its device follows the GPUs the actor asked for (`gpus_per_worker`); an image the teacher fails on
    goes to the rejects of run `run_id` in `out` (`rows.RejectsOut`), the others on to the write stage
    (without their pixels)."""

    def __init__(self, config: dict[str, Any], run_id: str = "", counter: Any = None):
        self.cfg = PseudoLabelConfig.from_dict(config)
        # The device from the GPUs this actor was given (none of them to a teacher without a model).
        super().__init__(self.cfg.gpus_per_worker if self.cfg.resolved_teacher in MODEL_TEACHERS else 0.0)
        if self.cfg.s3_endpoint:
            storage.set_s3_endpoint(self.cfg.s3_endpoint)
        self.rejects = RejectsOut(self.cfg.out, run_id, counter)
        self.teacher = build_teacher(self.cfg.resolved_teacher, checkpoint=self.cfg.checkpoint,
                                     variant=self.cfg.variant, device=self.device, fast=self.cfg.fast,
                                     compile=self.cfg.compile, batch_size=self.cfg.batch_size,
                                     time_limit_s=self.cfg.grabcut_time_limit_s)

    def _predict(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[Labels | Exception]:
        try:
            return list(self.teacher.label(images, boxes))
        except Exception as err:  # noqa: BLE001 - isolate the image that caused it
            if len(images) == 1:
                return [err]
            logger.warning("teacher failed on a batch of %d (%s: %s); retrying image by image",
                           len(images), type(err).__name__, err)
            out: list[Labels | Exception] = []
            for image, image_boxes in zip(images, boxes):
                _free_accelerator_cache()
                out += self._predict([image], [image_boxes])
            return out

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        ids = [str(i) for i in batch["id"]]
        results = self._predict(list(batch["pixels"]), list(batch["prompts"])) if ids else []
        keep, masks, fields, bad = [], [], [], []
        for i, result in enumerate(results):
            if isinstance(result, Exception):
                bad.append(Reject(ids[i], str(batch["image"][i]), "teacher",
                                  f"teacher failed: {type(result).__name__}: {str(result)[:300]}"))
            else:
                keep.append(i)
                masks.append(np.asarray(result.mask, dtype=np.uint8))
                fields.append(json.dumps(result.record_fields()))  # the record's confidence keys
        self.rejects.write(bad)
        rows = np.asarray(keep, dtype=int)
        return {**{name: _take(batch[name], rows) for name in LABEL_COLUMNS}, "mask_out": masks,
                "teacher_fields": np.asarray(fields, dtype=str if fields else "<U1"),
                "teacher_version": np.asarray([self.teacher.version] * len(keep), dtype=str if keep else "<U1")}


def _take(column: Any, rows: np.ndarray) -> Any:
    """The rows `rows` of a batch column (an ndarray, or a list of per-row arrays)."""
    if isinstance(column, np.ndarray):
        return column[rows]
    return [column[i] for i in rows]


def _free_accelerator_cache() -> None:
    import torch  # noqa: PLC0415 - only the actors need torch; the driver that plans the job does not

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

