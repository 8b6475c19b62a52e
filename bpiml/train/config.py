"""The training job's configuration and result. Defaults follow the paper's recipe (docs/experiments.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from typing import Any

from bpiml.config import (
    BaseConfig,
    check_choice,
    check_job_resources,
    check_range,
    cpus_field,
    field,
    gpus_field,
    redact,
    reject_rate_field,
    resource_wait_field,
    s3_endpoint_field,
    workers_field,
)
from bpiml.data.manifest import SPLITS
from bpiml.model.config import StudentConfig
from bpiml.runtime.resources import GpuDecision, decide_gpus

SUPERVISIONS = ("pseudo", "gt", "box")
STORE_KEYS = ("weight", "supervision")  # what an --add-store entry may set after its URI
DEFAULT_STORE = ".bpiml/sample-pseudo"  # what `python jobs/pseudolabel.py` writes with its defaults
DEFAULT_STORAGE_PATH = "runs"
_REGISTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# Fields left out of the default run name while at their defaults: runs named before they existed keep their names.
_NAMED_WHEN_SET = ("add_store", "store_weight", "init_from", "pretrain_store", "pretrain_epochs", "pretrain_supervision",
                   "min_confidence", "confidence_weight", "storage_retry_s", "s3_endpoint")


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """One training store and how it is used: `weight` sets its share of each epoch's samples."""

    uri: str
    weight: float = 1.0
    supervision: str = "pseudo"

    def record(self, role: str = "train") -> dict[str, Any]:
        """What the registered model's metadata says of it (credentials redacted)."""
        return {"uri": redact(self.uri), "weight": self.weight, "supervision": self.supervision, "role": role}

    def entry(self) -> str:
        """The --add-store form: URI,weight=W,supervision=S."""
        return f"{self.uri},weight={self.weight!r},supervision={self.supervision}"


def _weight(value: Any, where: str) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: weight must be a number > 0, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"{where}: weight must be a number > 0, got {value!r}")
    return weight


def parse_store_entry(entry: str, supervision: str) -> StoreSpec:
    """`URI` or `URI,weight=W,supervision=S` -> StoreSpec; ValueError naming the entry."""
    where = f"add_store entry {entry!r}"
    if not isinstance(entry, str):
        raise ValueError(f"{where}: expected 'URI[,weight=W][,supervision=S]', got {type(entry).__name__}")
    uri, *options = [part.strip() for part in entry.split(",")]
    if not uri or "=" in uri:
        raise ValueError(f"{where}: must start with the store's URI, then ,weight=W and/or ,supervision=S")
    values: dict[str, str] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or key not in STORE_KEYS or key in values:
            why = "given twice" if key in values else f"expected one of {[f'{k}=...' for k in STORE_KEYS]}"
            raise ValueError(f"{where}: bad option {option!r} ({why})")
        values[key] = value
    chosen = values.get("supervision", supervision)
    if chosen not in SUPERVISIONS:
        raise ValueError(f"{where}: supervision must be one of {list(SUPERVISIONS)}, got {chosen!r}")
    return StoreSpec(uri, _weight(values.get("weight", 1.0), where), chosen)


@dataclasses.dataclass
class TrainConfig(BaseConfig):
    store: str = field(DEFAULT_STORE, "pseudo-labeled store (local or s3://); with --supervision gt also an IMDL-BenCo "
                                      "list, a COCO .json or any store with GT masks")
    store_weight: float = field(1.0, "the --store's mixing weight when stores are added (--add-store)")
    add_store: list[str] = field([], "another training store: URI or URI,weight=W,supervision=pseudo|gt|box (weight 1 "
                                     "and --supervision by default). An epoch, as many samples as all stores' train "
                                     "records, takes weight/sum(weights) of them from each store, drawn anew each "
                                     "epoch; validation stays on --store", repeat="--add-store")
    init_from: str = field("", "start the student's weights from this model: a run folder (its best checkpoint), a "
                               "checkpoint folder, an exported model folder, or models:/NAME@ALIAS|VERSION (weights "
                               "only; optimizer and schedule start fresh; ignored when resuming a run that has "
                               "checkpoints)")
    pretrain_store: str = field("", "first train <run-name>-pretrain on this store (--pretrain-epochs, "
                                    "--pretrain-supervision), then this run from its best checkpoint; both resume")
    pretrain_epochs: int = field(0, "epochs of the pretraining run (with --pretrain-store)")
    pretrain_supervision: str = field("gt", "training target of the pretraining run", choices=SUPERVISIONS)
    import_dir: str = field("", "where an input that is not a store is imported once (default: <storage-path>/inputs)")
    storage_path: str = field(DEFAULT_STORAGE_PATH, "where runs keep checkpoints (local folder or s3://)")
    run_name: str = field("", "run name; the same name + storage path resumes; '' = student-<hash of this config>")
    epochs: int = field(20, "total epochs (a resumed run continues up to this number; the paper: 20)")
    batch_size: int = field(8, "images per worker per step")
    lr: float = field(5e-4, "peak AdamW learning rate")
    weight_decay: float = field(0.05, "AdamW weight decay (not applied to norms and biases)")
    warmup_epochs: float = field(1.0, "linear warmup length in epochs, then cosine decay")
    min_lr_ratio: float = field(0.01, "final learning rate as a fraction of lr")
    num_workers: int = workers_field(2, "Ray Train workers (DDP processes)")
    cpus_per_worker: float = cpus_field(0.5, "training worker (fractional; data tasks need CPUs too)")
    gpus_per_worker: float | None = gpus_field("training worker")
    supervision: str = field("pseudo", "training target: pseudo (teacher masks), gt (upper bound) or box (filled boxes)",
                             choices=SUPERVISIONS)
    train_split: str = field("train", "manifest split used for training", choices=SPLITS)
    val_split: str = field("val", "manifest split used for validation (records with GT masks)", choices=SPLITS)
    dice_weight: float = field(0.0, "weight of a soft Dice term added to BCE (0 = BCE only, the paper's loss)")
    min_confidence: float = field(0.0, "leave out train records whose teacher confidence is below this (records with "
                                       "no confidence, e.g. the box teacher's, and human-reviewed ones are kept)")
    confidence_weight: bool = field(False, "weight each sample's loss by its teacher confidence (1 for records with "
                                           "none and for human-reviewed ones)")
    seed: int = field(0, "seed for model init and the per-epoch block order (augmentation and store-mixing draws in "
                        "Ray Data tasks are not seeded)")
    experiment: str = field("bpiml-student", "MLflow experiment name")
    tracking_uri: str = field("", "MLflow tracking URI; '' = MLFLOW_TRACKING_URI or sqlite in .bpiml/")
    register: str = field("", "register the best model as NAME[@ALIAS] in the MLflow registry ('' = do not register)")
    model: StudentConfig = field(StudentConfig(), "the student (flags --model-*)")
    limit: int = field(0, "use at most this many train and val records (0 = all)")
    log_images: int = field(4, "overlay images (image | target | GT | prediction) logged to MLflow at the end "
                                  "(and every --overlay-every epochs)")
    overlay_every: int = field(5, "also log the overlays every N epochs (0 = only at the end)")
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
    max_reject_rate: float = reject_rate_field(0.01, "samples (unreadable)")
    allow_external_source: bool = field(False, "read the pseudo store's input store even outside its bucket/folder")
    resource_wait_s: float = resource_wait_field()
    storage_retry_s: float = field(300.0, "wait out an object-store outage this long (retries with backoff) before "
                                          "failing the job naming the store")
    s3_endpoint: str | None = s3_endpoint_field()

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.store, str) or not self.store:
            raise ValueError(f"store must name a pseudo-labeled store, got {self.store!r}")
        if not isinstance(self.storage_path, str) or not self.storage_path:
            raise ValueError(f"storage_path must be a folder or s3:// URI, got {self.storage_path!r}")
        if any(c in self.run_name for c in "/\\") or self.run_name in (".", ".."):
            raise ValueError(f"run_name must be a plain name without '/', got {self.run_name!r}")
        check_job_resources(self)
        for key in ("epochs", "batch_size", "log_every"):
            check_range(key, getattr(self, key), 1)
        for key in ("limit", "log_images", "overlay_every", "max_failures", "seed", "shuffle_buffer"):
            check_range(key, getattr(self, key), 0)
        check_range("keep_checkpoints", self.keep_checkpoints, 1)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        check_range("weight_decay", self.weight_decay, 0)
        check_range("warmup_epochs", self.warmup_epochs, 0, self.epochs)
        check_range("min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_choice("supervision", self.supervision, SUPERVISIONS)
        check_choice("train_split", self.train_split, SPLITS)
        check_choice("val_split", self.val_split, SPLITS)
        if self.train_split == self.val_split:
            raise ValueError(f"train_split and val_split must differ, both are {self.val_split!r}")
        check_range("dice_weight", self.dice_weight, 0)
        check_range("min_confidence", self.min_confidence, 0, 1)
        check_range("aug_scale_min", self.aug_scale_min, 0.05, 1)
        check_range("aug_color", self.aug_color, 0, 0.9)
        check_range("aug_jpeg_prob", self.aug_jpeg_prob, 0, 1)
        check_range("storage_retry_s", self.storage_retry_s, 0)
        if not self.experiment:
            raise ValueError("experiment must name an MLflow experiment, got ''")
        if self.register and not _REGISTER.match(self.register):
            raise ValueError(f"register must be NAME or NAME@ALIAS (letters, digits, . _ -), got {self.register!r}")
        self._validate_stores()

    def _validate_stores(self) -> None:
        _weight(self.store_weight, "store_weight")
        if not isinstance(self.add_store, list):
            raise ValueError(f"add_store must be a list of 'URI[,weight=W][,supervision=S]', got {self.add_store!r}")
        self.stores()  # each entry parses
        if not isinstance(self.init_from, str) or not isinstance(self.pretrain_store, str):
            raise ValueError(f"init_from and pretrain_store must be strings, got {self.init_from!r}, "
                             f"{self.pretrain_store!r}")
        check_range("pretrain_epochs", self.pretrain_epochs, 0)
        check_choice("pretrain_supervision", self.pretrain_supervision, SUPERVISIONS)
        if self.pretrain_store and not self.pretrain_epochs:
            raise ValueError(f"pretrain_store {self.pretrain_store!r} needs pretrain_epochs >= 1, got 0")
        if self.pretrain_epochs and not self.pretrain_store:
            raise ValueError(f"pretrain_epochs {self.pretrain_epochs} needs a pretrain_store, got ''")
        if self.pretrain_store and self.init_from:
            raise ValueError(f"init_from {self.init_from!r} and pretrain_store {self.pretrain_store!r} both say where "
                             "the weights start: give one")

    def stores(self) -> list[StoreSpec]:
        """The training stores: `store` first (validation reads it), then each --add-store."""
        return [StoreSpec(self.store, float(self.store_weight), self.supervision),
                *(parse_store_entry(entry, self.supervision) for entry in self.add_store)]

    def pretrain_config(self) -> TrainConfig:
        """The first part of a --pretrain-store run: `<run_name>-pretrain` on the pretrain store, nothing registered."""
        return self.replace(run_name=f"{self.run_name}-pretrain", store=self.pretrain_store,
                            supervision=self.pretrain_supervision, epochs=self.pretrain_epochs, store_weight=1.0,
                            add_store=[], register="", pretrain_store="", pretrain_epochs=0,
                            warmup_epochs=min(self.warmup_epochs, self.pretrain_epochs))

    @property
    def registered_model(self) -> str:
        return self.register.partition("@")[0]

    @property
    def alias(self) -> str:
        return self.register.partition("@")[2]

    def logs_overlays(self, epoch: int) -> bool:
        """Whether epoch `epoch` (0-based) logs overlays: every `overlay_every` epochs, and the last one."""
        return epoch == self.epochs - 1 or (self.overlay_every > 0 and (epoch + 1) % self.overlay_every == 0)

    def gpu_decision(self) -> GpuDecision:
        """GPUs per training worker by intent: the student at its default input size or larger trains on a
        GPU; a smaller one (a smoke or test size, e.g. 64 px) is CPU-sized work."""
        px, default = self.model.img_size, StudentConfig().img_size
        if px >= default:
            return decide_gpus(self.gpus_per_worker, 1, f"training the student at {px} px runs on GPU")
        return decide_gpus(self.gpus_per_worker, 0, f"a {px} px student (below the default {default} px) is "
                                                    "smoke/test-sized work for CPUs")

    def default_run_name(self) -> str:
        """student-<hash>: the same command (epochs aside) names the same run, so rerunning it resumes."""
        defaults = TrainConfig().to_dict()
        values = {k: v for k, v in self.to_dict().items()
                  if k not in ("epochs", "run_name", "register", "log_every", "overlay_every", "import_dir")
                  and not (k in _NAMED_WHEN_SET and v == defaults[k])}
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
    mlflow_late: list[int] = dataclasses.field(default_factory=list)  # epochs logged after an MLflow outage
    gpu_decision: str = ""  # GPUs per worker and why (`bpiml.runtime.resources.GpuDecision`)
