"""Box-prompted teachers: each image's boxes -> one pseudo mask (see `base.Teacher`).

`build_teacher(name, ...)` picks one from the `TEACHERS` registry:

- "sam": a frozen Segment Anything model (`sam.py`; stock or fast path, `sam_fast.py`).
- "grabcut": OpenCV GrabCut from each box (`grabcut.py`), the classical teacher used when no
  SAM checkpoint is given.
- "box": the filled boxes (`box.py`), the ablation baseline.

Modules are imported lazily, so `import bpiml.pseudolabel.teachers` does not import torch or OpenCV.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable

from bpiml.pseudolabel.teachers.base import Teacher

logger = logging.getLogger(__name__)

__all__ = ["TEACHERS", "Teacher", "build_teacher"]


def _build_sam(*, checkpoint: str | None, variant: str, device: str, fast: bool | None, compile: bool,  # noqa: A002
               **options: Any) -> Teacher:
    from bpiml.pseudolabel.teachers.sam import build_sam_teacher

    return build_sam_teacher(checkpoint=checkpoint, variant=variant, device=device, fast=fast, compile=compile, **options)


def _model_free(module: str, func: str) -> Callable[..., Teacher]:
    """Builder for a teacher without a network: SAM-only keywords are accepted and ignored."""

    def build(*, checkpoint: str | None, variant: str, device: str, fast: bool | None, compile: bool,  # noqa: A002
              **options: Any) -> Teacher:
        if checkpoint:
            logger.info("teacher %s ignores checkpoint %s", module.rsplit(".", 1)[-1], checkpoint)
        options.pop("batch_size", None)  # the pipeline's images-per-call; these teachers go image by image
        return getattr(importlib.import_module(module), func)(**options)

    return build


# name -> build function taking (checkpoint, variant, device, fast, compile, **options)
TEACHERS: dict[str, Callable[..., Teacher]] = {
    "sam": _build_sam,
    "grabcut": _model_free("bpiml.pseudolabel.teachers.grabcut", "build_grabcut_teacher"),
    "box": _model_free("bpiml.pseudolabel.teachers.box", "build_box_teacher"),
}


def build_teacher(name: str, *, checkpoint: str | None = None, variant: str = "vit_b", device: str = "cpu",
                  fast: bool | None = None, compile: bool = False, **options: Any) -> Teacher:  # noqa: A002
    """Build the teacher `name` ("sam" | "grabcut" | "box").

    checkpoint: SAM weights, local path or s3:// URI (required for "sam"). variant: SAM variant
    ("vit_b", "vit_l", "vit_h", or "tiny" for tests). device: "cpu" or "cuda[:N]". fast: the fast
    SAM path (None = on for CUDA). compile: torch.compile the SAM encoder. options: per teacher
    (SAM: batch_size, gpu_preprocess; GrabCut: the `GrabCutConfig` fields); unknown ones are errors.
    """
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; known teachers: {', '.join(sorted(TEACHERS))}")
    return TEACHERS[name](checkpoint=checkpoint, variant=variant, device=device, fast=fast, compile=compile, **options)
