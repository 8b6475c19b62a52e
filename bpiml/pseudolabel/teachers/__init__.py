"""Box-prompted teachers: each image's boxes -> one pseudo mask (see `base.Teacher`).

`build_teacher(name, ...)` picks one from the `TEACHERS` registry:

- "sam": a frozen Segment Anything model (`sam.py`; stock or fast path, `sam_fast.py`; weights by
  name, path or s3:// URI, `weights.py`).
- "grabcut": OpenCV GrabCut from each box (`grabcut.py`), the classical teacher used when no
  SAM checkpoint is given.
- "box": the filled boxes (`box.py`), the ablation baseline.

`teacher_identity` names what a teacher would produce without building it (no model is loaded):
the pseudo-labeling driver keys its resume fingerprints on it. The teacher modules are imported
when a teacher is built: SAM pulls in segment_anything and its weights, which the driver never needs.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable

from bpiml.pseudolabel.teachers import box, weights
from bpiml.pseudolabel.teachers.base import Teacher

logger = logging.getLogger(__name__)

__all__ = ["TEACHERS", "Teacher", "build_teacher", "teacher_identity"]


def _build_sam(*, checkpoint: str | None, variant: str | None, device: str, fast: bool | None,
               compile: bool, **options: Any) -> Teacher:  # noqa: A002
    options.pop("time_limit_s", None)  # GrabCut's per-image limit; SAM's cost per image is bounded by its input size
    sam = importlib.import_module("bpiml.pseudolabel.teachers.sam")
    return sam.build_sam_teacher(checkpoint=checkpoint, variant=variant, device=device, fast=fast, compile=compile,
                                 **options)


def _model_free(module: str, func: str) -> Callable[..., Teacher]:
    """Builder for a teacher without a network: SAM-only keywords are accepted and ignored."""

    def build(*, checkpoint: str | None, variant: str | None, device: str, fast: bool | None, compile: bool,  # noqa: A002
              **options: Any) -> Teacher:
        if checkpoint:
            logger.info("teacher %s ignores checkpoint %s", module.rsplit(".", 1)[-1], checkpoint)
        options.pop("batch_size", None)  # the pipeline's images-per-call; these teachers go image by image
        if module.endswith(".box"):
            options.pop("time_limit_s", None)
        return getattr(importlib.import_module(module), func)(**options)

    return build


# name -> build function taking (checkpoint, variant, device, fast, compile, **options)
TEACHERS: dict[str, Callable[..., Teacher]] = {
    "sam": _build_sam,
    "grabcut": _model_free("bpiml.pseudolabel.teachers.grabcut", "build_grabcut_teacher"),
    "box": _model_free("bpiml.pseudolabel.teachers.box", "build_box_teacher"),
}


def build_teacher(name: str, *, checkpoint: str | None = None, variant: str | None = None, device: str = "cpu",
                  fast: bool | None = None, compile: bool = False, **options: Any) -> Teacher:  # noqa: A002
    """Build the teacher `name` ("sam" | "grabcut" | "box").

    checkpoint: SAM weights, `vit_b`/`vit_l`/`vit_h` by name, a local path or s3:// URI (required for
    "sam"). variant: SAM variant (None: from the checkpoint; "tiny" for tests). device: "cpu" or
    "cuda[:N]". fast: the fast SAM path (None = on for CUDA). compile: torch.compile the SAM encoder.
    options: per teacher (SAM: batch_size, gpu_preprocess; GrabCut: time_limit_s and the
    `GrabCutConfig` fields); unknown ones are errors.
    """
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; known teachers: {', '.join(sorted(TEACHERS))}")
    return TEACHERS[name](checkpoint=checkpoint, variant=variant, device=device, fast=fast, compile=compile, **options)


def teacher_identity(name: str, checkpoint: str | None = None, **options: Any) -> str:
    """What a teacher produces, as a short stable string: `sam-<weights id>`, `grabcut-v2-<params>`,
    `box-v1`. Two teachers with the same identity give the same masks (up to floating point)."""
    if name == "sam":
        if not checkpoint:
            raise ValueError("the SAM teacher needs a checkpoint")
        return f"sam-{weights.identity(checkpoint)}"
    if name == "grabcut":
        grabcut = importlib.import_module("bpiml.pseudolabel.teachers.grabcut")
        config = grabcut.GrabCutConfig.from_dict({k: v for k, v in options.items() if k != "time_limit_s"})
        return grabcut.grabcut_version(config)
    if name == "box":
        return box.VERSION
    raise ValueError(f"unknown teacher {name!r}; known teachers: {', '.join(sorted(TEACHERS))}")
