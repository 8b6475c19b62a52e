"""The training job: a Ray Train `TorchTrainer` that fits the student on a pseudo-labeled store.

    config = TrainConfig(store=".bpiml/sample-pseudo", epochs=5)
    result = run_training(config)      # -> TrainResult(best_metrics, best_checkpoint, mlflow_run_id, ...)

The driver validates everything before Ray does any work (store readable with train records,
storage path writable, enough CPUs/GPUs), reads the manifest once, opens (or reopens) the MLflow
run, and starts N workers running `bpiml.train_loop.train_loop_per_worker` (DDP, gloo on CPU,
nccl on GPU). Checkpoints go to `<storage_path>/<run_name>`; rerunning with the same run name
and storage path resumes from the latest checkpoint (Ray Train V2 reloads the run's checkpoint
snapshot and `ray.train.get_checkpoint()` returns it) and continues the same MLflow run.
After `fit()` the driver logs the best checkpoint's model to MLflow and registers it with an alias.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Self

from bpiml.data import storage
from bpiml.runtime import tracking
from bpiml.config import BaseConfig, check_choice, check_range, field
from bpiml.train.data import SUPERVISIONS, StoreSamples, absolute, load_samples, sample_to_dict

logger = logging.getLogger(__name__)

DEFAULT_STORE = ".bpiml/sample-pseudo"  # what `python jobs/pseudolabel.py` writes with its defaults
DEFAULT_STORAGE_PATH = "runs"
RUN_STATE_FILE = "bpiml_run.json"  # beside the checkpoints: the MLflow run to continue on resume
CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"
MODEL_PREFIX = "model_"
SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class TrainConfig(BaseConfig):
    store: str = field(DEFAULT_STORE, "pseudo-labeled store root (local folder or s3://bucket/prefix)")
    storage_path: str = field(DEFAULT_STORAGE_PATH, "where runs keep checkpoints (local folder or s3://)")
    run_name: str = field("", "run name; rerunning with the same name + storage path resumes; '' = student-<time>")
    epochs: int = field(5, "total epochs (a resumed run continues up to this number)")
    batch_size: int = field(8, "images per worker per step")
    lr: float = field(5e-4, "peak AdamW learning rate")
    weight_decay: float = field(0.05, "AdamW weight decay (not applied to norms and biases)")
    warmup_epochs: float = field(1.0, "linear warmup length in epochs, then cosine decay")
    min_lr_ratio: float = field(0.01, "final learning rate as a fraction of lr")
    num_workers: int = field(2, "Ray Train workers (DDP processes)")
    use_gpu: bool | None = field(None, "train on GPUs; default: only if CUDA is here and Ray reports GPUs")
    cpus_per_worker: float = field(1.0, "CPUs reserved per worker (fractional allowed)")
    supervision: str = field("pseudo", "training target: pseudo (teacher masks) | gt (upper bound) | box (filled boxes)")
    train_split: str = field("train", "manifest split used for training")
    val_split: str = field("val", "manifest split used for validation (records with GT masks)")
    dice_weight: float = field(0.5, "weight of the Dice loss added to BCE (0 = BCE only)")
    seed: int = field(0, "seed for model init, shuffling and augmentation")
    experiment: str = field("bpiml-student", "MLflow experiment name")
    tracking_uri: str = field("", "MLflow tracking URI; '' = MLFLOW_TRACKING_URI or sqlite in .bpiml/")
    registered_model: str = field("bpiml-student", "MLflow registered model name ('' = do not register)")
    alias: str = field("champion", "registry alias set on the best model's version ('' = none)")
    model_backbone: str | None = field(None, "student backbone (timm name); None = StudentConfig default")
    model_backbone_weights: str | None = field(None, "backbone state_dict path/URI; None = random init")
    model_width: int | None = field(None, "MGFM width d; None = StudentConfig default")
    model_memory_slots: int | None = field(None, "memory bank slots K; None = StudentConfig default")
    model_use_memory: bool | None = field(None, "use the memory bank; None = StudentConfig default")
    model_use_gating: bool | None = field(None, "use the scale gates; None = StudentConfig default")
    model_alpha: float | None = field(None, "dual-guidance weight alpha; None = StudentConfig default")
    model_learn_alpha: bool | None = field(None, "learn alpha; None = StudentConfig default")
    model_img_size: int | None = field(None, "input size (multiple of 32); None = StudentConfig default (224)")
    limit: int = field(0, "use at most this many train and val records (0 = all)")
    log_images: int = field(4, "overlay images (image | target | GT | prediction) logged to MLflow at the end")
    amp: bool = field(True, "bf16 autocast on GPU (ignored on CPU)")
    channels_last: bool = field(False, "channels_last memory format (GPU)")
    cache_images: bool = field(True, "keep decoded, resized images in worker memory (small stores)")
    loader_workers: int = field(0, "DataLoader worker processes per training worker (0 = in-process)")
    aug_scale_min: float = field(0.35, "random resized crop: smallest crop area share (1 = no crop)")
    aug_hflip: bool = field(True, "random horizontal flip")
    aug_color: float = field(0.2, "colour jitter strength (0 = off)")
    aug_jpeg_prob: float = field(0.0, "probability of a JPEG re-compression of the input")
    keep_checkpoints: int = field(1, "best checkpoints kept by validation F1 (the latest is always kept too)")
    max_failures: int = field(0, "worker-group restarts from the latest checkpoint after a failure")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Also accepts the student fields nested: {"model": {"width": 32, ...}}."""
        values = dict(values)
        nested = values.pop("model", None)
        if nested is not None:
            if not isinstance(nested, dict):
                raise ValueError(f"model must be a mapping of StudentConfig fields, got {type(nested).__name__}")
            for key, value in nested.items():
                values[MODEL_PREFIX + key] = value
        return super().from_dict(values)

    def student_overrides(self) -> dict[str, Any]:
        return {f.name[len(MODEL_PREFIX):]: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name.startswith(MODEL_PREFIX) and getattr(self, f.name) is not None}

    def student_config(self) -> Any:
        """The resolved `StudentConfig` (validated)."""
        from bpiml.model.student import StudentConfig

        return StudentConfig.from_dict(self.student_overrides())

    def validate(self) -> None:
        if not isinstance(self.store, str) or not self.store:
            raise ValueError(f"store must name a pseudo-labeled store, got {self.store!r}")
        if not isinstance(self.storage_path, str) or not self.storage_path:
            raise ValueError(f"storage_path must be a folder or s3:// URI, got {self.storage_path!r}")
        if any(c in self.run_name for c in "/\\") or self.run_name in (".", ".."):
            raise ValueError(f"run_name must be a plain name without '/', got {self.run_name!r}")
        for key in ("epochs", "batch_size", "num_workers"):
            check_range(key, getattr(self, key), 1)
        for key in ("limit", "log_images", "loader_workers", "max_failures", "seed"):
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
        if not self.experiment:
            raise ValueError("experiment must name an MLflow experiment, got ''")
        if self.alias and not self.registered_model:
            raise ValueError(f"alias {self.alias!r} needs registered_model to be set")
        self.student_config()


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


# --- checks before Ray starts ---------------------------------------------------------------------
def check_inputs(config: TrainConfig) -> StoreSamples:
    """Fail fast on the store (readable, has train records) and the storage path (writable)."""
    manifest_uri = storage.join(config.store, "manifest.jsonl")
    if config.store == DEFAULT_STORE and not storage.exists(manifest_uri):
        raise FileNotFoundError(
            f"the embedded default store {DEFAULT_STORE!r} (pseudo-labeled sample) does not exist under "
            f"{os.getcwd()}; make it with `python jobs/pseudolabel.py` (its defaults write it), "
            "or pass --store"
        )
    storage.check_readable(manifest_uri)
    samples = load_samples(config.store, config.supervision, config.train_split, config.val_split, config.limit)
    if not samples.train:
        skipped = ", ".join(f"{n} {why}" for why, n in samples.skipped.items()) or "none in that split"
        raise ValueError(
            f"store {config.store}: no train records with split {config.train_split!r} usable for "
            f"supervision {config.supervision!r} (skipped: {skipped})"
        )
    first = samples.train[0]  # a wrong `source` root shows here, before any worker starts
    for uri in (first.image, first.target):
        if uri is not None:
            storage.check_readable(uri)
    if samples.skipped:
        logger.warning("left out of training: %s", samples.skipped)
    if not samples.val:
        logger.warning("store %s has no %r records with GT masks: no validation metrics; the best checkpoint "
                       "falls back to the lowest training loss", config.store, config.val_split)
    storage.check_writable(config.storage_path)
    return samples


def resolve_use_gpu(requested: bool | None) -> bool:
    """GPU only when asked and available; auto (None) = CUDA here and GPUs in the Ray cluster."""
    import torch

    from bpiml.runtime import raycluster

    if requested is None:
        return bool(torch.cuda.is_available() and raycluster.available_gpus() >= 1)
    if requested:
        raycluster.check_gpus(1, 1, "use_gpu")
    return bool(requested)


def _check_cpus(config: TrainConfig) -> None:
    import ray

    total = float(ray.cluster_resources().get("CPU", 0.0))
    need = config.num_workers * config.cpus_per_worker
    if need > total and os.environ.get("BPIML_ALLOW_PENDING_CPUS") != "1":
        raise ValueError(
            f"num_workers ({config.num_workers}) x cpus_per_worker ({config.cpus_per_worker}) = {need} CPUs "
            f"but the Ray cluster has {total:g}; lower cpus_per_worker (fractions allowed) or num_workers "
            "(on an autoscaling cluster set BPIML_ALLOW_PENDING_CPUS=1)"
        )


def _read_run_state(run_dir: str) -> dict[str, Any]:
    uri = storage.join(run_dir, RUN_STATE_FILE)
    if not storage.exists(uri):
        return {}
    try:
        state = json.loads(storage.read_bytes(uri))
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri} is not valid JSON ({err}); delete it to start a new MLflow run") from err
    return state if isinstance(state, dict) else {}


# --- the run --------------------------------------------------------------------------------------
def run_training(config: TrainConfig) -> TrainResult:
    """Validate, train on Ray, log + register the best model; resumes a run of the same name."""
    config.validate()
    student = config.student_config()
    samples = check_inputs(config)

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from bpiml.runtime import raycluster
    from bpiml.train.loop import train_loop_per_worker

    raycluster.init_ray()
    use_gpu = resolve_use_gpu(config.use_gpu)
    _check_cpus(config)
    run_name = config.run_name or time.strftime("student-%Y%m%d-%H%M%S")
    storage_path = absolute(config.storage_path)
    resolved = config.replace(run_name=run_name, storage_path=storage_path, store=absolute(config.store),
                              use_gpu=use_gpu)
    run_dir = storage.join(storage_path, run_name)

    tracking_uri = tracking.resolve_tracking_uri(config.tracking_uri)
    previous = _read_run_state(run_dir)
    run_id = tracking.start_or_resume_run(tracking_uri, config.experiment, previous.get("mlflow_run_id"), run_name,
                                          tags={"bpiml.job": "train", "bpiml.run_dir": run_dir})
    run_state = {**previous, "mlflow_run_id": run_id, "tracking_uri": tracking_uri, "experiment": config.experiment}
    _write_run_state(run_dir, run_state)
    resolved.save(storage.join(run_dir, "train_config.json"))
    params = {
        **resolved.to_dict(),
        "model": student.to_dict(),
        "memory_bank_size": f"{student.memory_slots}x{student.width}" if student.use_memory else "off",
        "alpha": student.alpha,
        "variant": student.variant,
        "teacher": samples.teacher.get("teacher", "unknown"),
        "teacher_version": samples.teacher.get("teacher_version", "unknown"),
        "n_train": len(samples.train),
        "n_val": len(samples.val),
    }
    tracking.log_params(tracking_uri, run_id, params)
    tracking.log_dict(tracking_uri, run_id, {**resolved.to_dict(), "model": student.to_dict()}, "config/train_config.json")

    loop_config = {
        "train_config": resolved.to_dict(),
        "model_config": student.to_dict(),
        "train": [sample_to_dict(s) for s in samples.train],
        "val": [sample_to_dict(s) for s in samples.val],
        "tracking_uri": tracking_uri,
        "mlflow_run_id": run_id,
    }
    resources = {"CPU": config.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    storage_fs = None
    ray_storage_path = storage_path
    if storage.is_s3(storage_path):
        storage_fs, ray_storage_path = storage.pyarrow_fs(storage_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=ray_storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints,
                                               checkpoint_score_attribute="score", checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=config.max_failures),
            worker_runtime_env={"env_vars": raycluster.worker_env()},
        ),
    )
    logger.info("training %s: %d train / %d val images, %d worker(s) on %s, checkpoints in %s, MLflow run %s",
                run_name, len(samples.train), len(samples.val), config.num_workers, "GPU" if use_gpu else "CPU",
                run_dir, run_id)
    try:
        result = trainer.fit()
    except BaseException:
        tracking.end_run(tracking_uri, run_id, status="FAILED")
        raise
    return _finish(resolved, result, run_dir, tracking_uri, run_id, run_state)


def _load_checkpoint(checkpoint: Any) -> dict[str, Any]:
    import torch

    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def _read_history(checkpoint: Any) -> list[dict[str, float]]:
    with checkpoint.as_directory() as folder:
        path = Path(folder) / HISTORY_FILE
        return json.loads(path.read_text()) if path.exists() else []


def _checkpoint_uri(checkpoint: Any) -> str | None:
    if checkpoint is None:
        return None
    return f"s3://{checkpoint.path}" if getattr(checkpoint.filesystem, "type_name", "") == "s3" else checkpoint.path


def _write_run_state(run_dir: str, state: dict[str, Any]) -> None:
    storage.write_bytes(storage.join(run_dir, RUN_STATE_FILE), (json.dumps(state, indent=2) + "\n").encode())


def _finish(config: TrainConfig, result: Any, run_dir: str, tracking_uri: str, run_id: str,
            run_state: dict[str, Any]) -> TrainResult:
    from bpiml.model.student import StudentConfig, build_student

    best_pairs = [(c, m) for c, m in (result.best_checkpoints or []) if c is not None]
    if best_pairs:
        best, best_metrics = max(best_pairs, key=lambda cm: float(cm[1].get("score", -math.inf)))
    else:
        best, best_metrics = result.checkpoint, dict(result.metrics or {})
    if best is None:
        tracking.end_run(tracking_uri, run_id, status="FAILED")
        raise RuntimeError(f"run {config.run_name} in {run_dir} reported no checkpoint")
    history = _read_history(result.checkpoint or best)
    returned = result.return_value if isinstance(result.return_value, dict) else {}
    start_epoch = int(returned.get("start_epoch", len(history)))

    state = _load_checkpoint(best)
    best_numbers = {k: float(v) for k, v in best_metrics.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracking.log_metrics(tracking_uri, run_id, {f"best_{k}": v for k, v in best_numbers.items()}, step=int(state["epoch"]))
    model_uri, version = None, None
    registered = run_state.get("registered") or {}
    key = {"checkpoint": _checkpoint_uri(best), "registered_model": config.registered_model, "alias": config.alias}
    if config.registered_model and all(registered.get(k) == v for k, v in key.items()):
        model_uri, version = registered["model_uri"], registered["version"]  # a rerun that trained nothing new
        logger.info("best checkpoint unchanged: %s (version %s) stays registered", model_uri, version)
    elif config.registered_model:
        model = build_student(StudentConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model_state"])
        model.eval()
        val_f1 = best_numbers.get("val_f1", math.nan)
        model_uri, version = tracking.log_and_register_model(
            model, tracking_uri, run_id, config.registered_model, config.alias,
            metadata={"epoch": int(state["epoch"]), "val_f1": val_f1 if math.isfinite(val_f1) else None,
                      "model_config": state["model_config"], "checkpoint": _checkpoint_uri(best)},
        )
        logger.info("registered %s (version %s) from epoch %d", model_uri, version, int(state["epoch"]))
        _write_run_state(run_dir, {**run_state, "registered": {**key, "model_uri": model_uri, "version": version}})
    tracking.end_run(tracking_uri, run_id, status="FINISHED")
    return TrainResult(
        run_name=config.run_name,
        run_dir=run_dir,
        best_checkpoint=_checkpoint_uri(best),
        latest_checkpoint=_checkpoint_uri(result.checkpoint),
        best_metrics=best_numbers,
        history=history,
        start_epoch=start_epoch,
        mlflow_run_id=run_id,
        tracking_uri=tracking_uri,
        registered_model_uri=model_uri,
        model_version=version,
    )
