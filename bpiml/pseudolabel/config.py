"""The pseudo-labeling job's configuration."""

from __future__ import annotations

import dataclasses

from bpiml.config import (
    BaseConfig,
    check_choice,
    check_job_resources,
    check_range,
    cpus_field,
    field,
    gpus_field,
    reject_rate_field,
    require,
    resource_wait_field,
    s3_endpoint_field,
    workers_field,
)
from bpiml.runtime.resources import GpuDecision, decide_gpus

TEACHER_CHOICES = ("auto", "sam", "grabcut", "box")
MODEL_TEACHERS = ("sam",)  # teachers that run a torch model on their device; GrabCut (OpenCV) and box run on CPU
VARIANTS = ("vit_b", "vit_l", "vit_h", "tiny")
DEFAULT_STORE = ".bpiml/sample"
DEFAULT_OUT = ".bpiml/sample-pseudo"


@dataclasses.dataclass
class PseudoLabelConfig(BaseConfig):
    store: str = field(DEFAULT_STORE, "input: a store, an IMDL-BenCo list .json, a COCO .json or a folder of images (local or s3://)")
    import_dir: str = field("", "where an input that is not a store is imported once (default: <out>/inputs)")
    out: str = field(DEFAULT_OUT, "output pseudo-labeled store (masks, sharded manifest, rejects, summary)")
    teacher: str = field("auto", "auto = sam when --checkpoint is given, else grabcut", choices=TEACHER_CHOICES)
    checkpoint: str | None = field(None, "SAM weights: vit_b | vit_l | vit_h (official, by name), a path or s3:// URI")
    variant: str | None = field(None, "SAM variant; default: from the checkpoint (its name or its weights' shapes)",
                                choices=VARIANTS)
    fast: bool | None = field(None, "SAM fast path (fused attention, bf16); default: on for GPU, off for CPU")
    compile: bool = field(False, "torch.compile the SAM image encoder (GPU)")
    num_workers: int = workers_field(2, "teacher actors in the pool (each loads the model once)")
    cpus_per_worker: float = cpus_field(0.5, "teacher actor (fractional leaves room for decode tasks)")
    gpus_per_worker: float | None = gpus_field("teacher actor")
    batch_size: int = field(4, "images per teacher call (SAM: images per encoder pass)")
    limit: int | None = field(None, "label at most the first N manifest lines (never removes earlier records)")
    max_reject_rate: float = reject_rate_field(0.05)
    part_rows: int = field(32, "records per task and per part file: a killed run redoes at most the parts in flight")
    wave_rows: int = field(50000, "records per labeling wave, one Ray Data execution each: the driver's memory "
                                  "grows with a wave, not with the store (docs/performance.md)")
    shard_rows: int = field(20000, "records per manifest shard after a run's parts are compacted")
    max_boxes: int = field(64, "reject images with more boxes than this (a broken annotation, or a memory bomb)")
    grabcut_time_limit_s: float = field(30.0, "GrabCut: after this long on one image, its remaining boxes are filled")
    relabel: bool = field(False, "allow a different teacher than the output's: relabel every record it changes")
    lock_ttl_s: float = field(120.0, "a writer lock without heartbeat for this long is taken over")
    resource_wait_s: float = resource_wait_field()
    storage_retry_s: float = field(300.0, "wait out an object-store outage this long (retries with backoff) before "
                                          "failing the job naming the store")
    s3_endpoint: str | None = s3_endpoint_field()
    review_below: float = field(0.5, "count the images whose teacher confidence is below this as to review (summary)")
    experiment: str | None = field(None, "log the run to this MLflow experiment (default: not logged)")
    tracking_uri: str = field("", "MLflow tracking URI with --experiment; '' = MLFLOW_TRACKING_URI or sqlite in .bpiml/")

    def validate(self) -> None:
        super().validate()
        check_choice("teacher", self.teacher, TEACHER_CHOICES)
        if self.variant is not None:
            check_choice("variant", self.variant, VARIANTS)
        check_job_resources(self, min_cpus=0)
        for key in ("batch_size", "part_rows", "wave_rows", "shard_rows", "max_boxes"):
            check_range(key, getattr(self, key), 1)
        check_range("grabcut_time_limit_s", self.grabcut_time_limit_s, 0.01)
        check_range("lock_ttl_s", self.lock_ttl_s, 1)
        check_range("storage_retry_s", self.storage_retry_s, 0)
        check_range("review_below", self.review_below, 0, 1)
        if self.experiment is not None and not self.experiment.strip():
            raise ValueError("experiment must name an MLflow experiment, got ''")
        if self.limit is not None:
            check_range("limit", self.limit, 1)
        if self.teacher == "sam" and not self.checkpoint:
            raise ValueError("teacher 'sam' needs --checkpoint (vit_b | vit_l | vit_h, a local path or an s3:// URI)")
        require(self, "store", "out")
        if self.store.rstrip("/") == self.out.rstrip("/"):
            raise ValueError(f"out must differ from store, both are {self.out!r}")

    @property
    def resolved_teacher(self) -> str:
        if self.teacher != "auto":
            return self.teacher
        return "sam" if self.checkpoint else "grabcut"

    def gpu_decision(self) -> GpuDecision:
        """GPUs per teacher actor by intent: SAM (any variant) runs on a GPU; GrabCut and box run on CPU."""
        teacher = self.resolved_teacher
        if teacher in MODEL_TEACHERS:
            name = self.variant or (self.checkpoint or "").removeprefix("sam:")
            return decide_gpus(self.gpus_per_worker, 1,
                               f"the sam {name} teacher runs on GPU" if name in VARIANTS else "the sam teacher runs on GPU")
        why = "OpenCV on CPU" if teacher == "grabcut" else "filled boxes, no model"
        return decide_gpus(self.gpus_per_worker, 0, f"the {teacher} teacher runs on CPU ({why})")
