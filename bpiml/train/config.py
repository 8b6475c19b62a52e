"""The training job's configuration and result. Defaults follow the paper's recipe (docs/experiments.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re

from bpiml.config import BaseConfig, check_choice, check_range, field
from bpiml.data.manifest import SPLITS
from bpiml.model.student import StudentConfig

SUPERVISIONS = ("pseudo", "gt", "box")
DEFAULT_STORE = ".bpiml/sample-pseudo"  # what `python jobs/pseudolabel.py` writes with its defaults
DEFAULT_STORAGE_PATH = "runs"
_REGISTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclasses.dataclass
class TrainConfig(BaseConfig):
    store: str = field(DEFAULT_STORE, "pseudo-labeled store (local or s3://); with --supervision gt also an IMDL-BenCo "
                                      "list, a COCO .json or any store with GT masks")
    import_dir: str = field("", "where an input that is not a store is imported once (default: <storage-path>/inputs)")
    storage_path: str = field(DEFAULT_STORAGE_PATH, "where runs keep checkpoints (local folder or s3://)")
    run_name: str = field("", "run name; the same name + storage path resumes; '' = student-<hash of this config>")
    epochs: int = field(20, "total epochs (a resumed run continues up to this number; the paper: 20)")
    batch_size: int = field(8, "images per worker per step")
    lr: float = field(5e-4, "peak AdamW learning rate")
    weight_decay: float = field(0.05, "AdamW weight decay (not applied to norms and biases)")
    warmup_epochs: float = field(1.0, "linear warmup length in epochs, then cosine decay")
    min_lr_ratio: float = field(0.01, "final learning rate as a fraction of lr")
    num_workers: int = field(2, "Ray Train workers (DDP processes)")
    use_gpu: bool | None = field(None, "train on GPUs; default: when the Ray cluster offers GPUs")
    cpus_per_worker: float = field(0.5, "CPUs reserved per worker (fractional; data tasks need CPUs too)")
    supervision: str = field("pseudo", "training target: pseudo (teacher masks) | gt (upper bound) | box (filled boxes)")
    train_split: str = field("train", "manifest split used for training")
    val_split: str = field("val", "manifest split used for validation (records with GT masks)")
    dice_weight: float = field(0.0, "weight of a soft Dice term added to BCE (0 = BCE only, the paper's loss)")
    seed: int = field(0, "seed for model init, shuffling and augmentation")
    experiment: str = field("bpiml-student", "MLflow experiment name")
    tracking_uri: str = field("", "MLflow tracking URI; '' = MLFLOW_TRACKING_URI or sqlite in .bpiml/")
    register: str = field("", "register the best model as NAME[@ALIAS] in the MLflow registry ('' = do not register)")
    model: StudentConfig = field(StudentConfig(), "the student (flags --model-*)")
    limit: int = field(0, "use at most this many train and val records (0 = all)")
    log_images: int = field(4, "overlay images (image | target | GT | prediction) logged to MLflow at the end")
    log_every: int = field(20, "steps between progress lines on rank 0 (step, loss, lr, images/s)")
    amp: bool = field(True, "bf16 autocast on GPU (ignored on CPU)")
    channels_last: bool = field(False, "channels_last memory format (GPU)")
    cache_decoded: bool | None = field(None, "keep decoded, resized images in the object store; default: stores <= 20k")
    shuffle_buffer: int = field(256, "rows per worker in the local shuffle buffer (block order is shuffled each epoch)")
    aug_scale_min: float = field(0.35, "random resized crop: smallest crop area share (1 = no crop)")
    aug_hflip: bool = field(True, "random horizontal flip")
    aug_color: float = field(0.2, "colour jitter strength (0 = off)")
    aug_jpeg_prob: float = field(0.0, "probability of a JPEG re-compression of the input")
    keep_checkpoints: int = field(1, "best checkpoints kept by validation F1 (the latest is always kept too)")
    max_failures: int = field(3, "worker-group restarts from the latest checkpoint after a failure (spot nodes)")
    max_unreadable: float = field(0.01, "stop when more than this share of samples cannot be read")
    allow_external_source: bool = field(False, "read the pseudo store's input store even outside its bucket/folder")
    resource_wait_s: float = field(600.0, "wait this long for the cluster to offer the CPUs/GPUs asked for")

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.store, str) or not self.store:
            raise ValueError(f"store must name a pseudo-labeled store, got {self.store!r}")
        if not isinstance(self.storage_path, str) or not self.storage_path:
            raise ValueError(f"storage_path must be a folder or s3:// URI, got {self.storage_path!r}")
        if any(c in self.run_name for c in "/\\") or self.run_name in (".", ".."):
            raise ValueError(f"run_name must be a plain name without '/', got {self.run_name!r}")
        for key in ("epochs", "batch_size", "num_workers", "log_every"):
            check_range(key, getattr(self, key), 1)
        for key in ("limit", "log_images", "max_failures", "seed", "shuffle_buffer"):
            check_range(key, getattr(self, key), 0)
        check_range("keep_checkpoints", self.keep_checkpoints, 1)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        check_range("weight_decay", self.weight_decay, 0)
        check_range("warmup_epochs", self.warmup_epochs, 0, self.epochs)
        check_range("min_lr_ratio", self.min_lr_ratio, 0, 1)
        if not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        check_choice("supervision", self.supervision, SUPERVISIONS)
        check_choice("train_split", self.train_split, SPLITS)
        check_choice("val_split", self.val_split, SPLITS)
        if self.train_split == self.val_split:
            raise ValueError(f"train_split and val_split must differ, both are {self.val_split!r}")
        check_range("dice_weight", self.dice_weight, 0)
        check_range("aug_scale_min", self.aug_scale_min, 0.05, 1)
        check_range("aug_color", self.aug_color, 0, 0.9)
        check_range("aug_jpeg_prob", self.aug_jpeg_prob, 0, 1)
        check_range("max_unreadable", self.max_unreadable, 0, 1)
        check_range("resource_wait_s", self.resource_wait_s, 0)
        if not self.experiment:
            raise ValueError("experiment must name an MLflow experiment, got ''")
        if self.register and not _REGISTER.match(self.register):
            raise ValueError(f"register must be NAME or NAME@ALIAS (letters, digits, . _ -), got {self.register!r}")

    @property
    def registered_model(self) -> str:
        return self.register.partition("@")[0]

    @property
    def alias(self) -> str:
        return self.register.partition("@")[2]

    def default_run_name(self) -> str:
        """student-<hash>: the same command (epochs aside) names the same run, so rerunning it resumes."""
        values = {k: v for k, v in self.to_dict().items() if k not in ("epochs", "run_name", "register", "log_every", "import_dir")}
        digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"student-{digest}"


@dataclasses.dataclass
class TrainResult:
    """What a training call produced."""

    run_name: str
    run_dir: str  # <storage_path>/<run_name>
    best_checkpoint: str | None  # checkpoint folder with the best validation F1
    latest_checkpoint: str | None
    best_metrics: dict[str, float]  # metrics reported with the best checkpoint
    history: list[dict[str, float]]  # one row per epoch, from epoch 0 (resumed runs included)
    start_epoch: int  # first epoch this call trained (0 = fresh run, N = resumed after N epochs)
    mlflow_run_id: str
    tracking_uri: str
    registered_model_uri: str | None  # models:/<name>@<alias>
    model_version: str | None
    skipped_samples: int = 0  # unreadable samples left out (see <run_dir>/rejects)
    mlflow_errors: int = 0  # MLflow calls that failed during training (counted, logged, never silent)
