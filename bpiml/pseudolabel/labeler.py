"""The teacher stage: one frozen teacher per Ray actor, images and boxes in, masks and confidences out.

A batch that fails (e.g. GPU out of memory on one huge image) is retried image by image, and only
the images that fail alone are rejected. Nothing else runs here, so the accelerator is not kept
waiting by decoding, PNG encoding or writes (CPU tasks before and after this stage).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import numpy as np

from bpiml.data import storage
from bpiml.pseudolabel.config import PseudoLabelConfig
from bpiml.pseudolabel.rows import columns, rows_of
from bpiml.pseudolabel.teachers import build_teacher
from bpiml.pseudolabel.teachers.base import Labels

logger = logging.getLogger(__name__)

# Test hooks for the fault-injection tests (tests/test_kill.py); unset in normal use.
DELAY_ENV = "BPIML_TEST_TEACHER_DELAY_S"  # sleep this long per batch, so a kill lands mid-run
LABEL_LOG_ENV = "BPIML_TEST_LABEL_LOG"  # append every id the teacher labels here (measures redone work)


class TeacherLabeler:
    """One frozen teacher per actor (loaded once); a batch of images in, their masks out (see the module doc)."""

    def __init__(self, config: dict[str, Any]):
        self.cfg = PseudoLabelConfig.from_dict(config)
        if self.cfg.s3_endpoint:
            storage.set_s3_endpoint(self.cfg.s3_endpoint)
        device = "cuda" if (self.cfg.gpus_per_worker or 0) > 0 else "cpu"
        self.teacher = build_teacher(self.cfg.resolved_teacher, checkpoint=self.cfg.checkpoint,
                                     variant=self.cfg.variant, device=device, fast=self.cfg.fast,
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
        rows = rows_of(batch)
        todo = [i for i, row in enumerate(rows) if row["status"] == "ok"]
        _test_hooks([rows[i]["id"] for i in todo])
        results = self._predict([batch["image"][i] for i in todo], [batch["boxes"][i] for i in todo]) if todo else []
        masks: list[np.ndarray] = [np.zeros((1, 1), np.uint8)] * len(rows)
        fields = ["{}"] * len(rows)  # the record's confidence keys (`Labels.record_fields`), as JSON
        for i, result in zip(todo, results):
            if isinstance(result, Exception):
                rows[i].update(status="rejected", stage="teacher", reason=f"teacher failed: {type(result).__name__}: "
                                                                            f"{str(result)[:300]}")
            else:
                masks[i] = np.asarray(result.mask, dtype=np.uint8)
                fields[i] = json.dumps(result.record_fields())
        return {**columns(rows), "mask": masks, "teacher_fields": fields,
                "teacher_version": [self.teacher.version] * len(rows)}


def _free_accelerator_cache() -> None:
    import torch  # noqa: PLC0415 - only the actors need torch; the driver that plans the job does not

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _test_hooks(ids: list[str]) -> None:
    delay, log = float(os.environ.get(DELAY_ENV) or 0), os.environ.get(LABEL_LOG_ENV)
    if delay and ids:
        time.sleep(delay)
    if log and ids:
        with open(log, "a") as f:  # one write per batch: appends from several actors do not interleave
            f.write("".join(f"{rid}\n" for rid in ids))
