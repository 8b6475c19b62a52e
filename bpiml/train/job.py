"""The training job: a Ray Train `TorchTrainer` that fits the student on a pseudo-labeled store.

    result = run_training(TrainConfig(store=".bpiml/sample-pseudo", epochs=5))

The driver checks everything before Ray Train starts (each store and its input store, a first
sample readable, the storage path writable, CPUs/GPUs offered, local paths shared on a
multi-node cluster, the model to start from: `bpiml.train.init`), builds the Ray Datasets
(`bpiml.train.datasets`; several stores: `bpiml.train.mixing`), opens (or reopens) the
MLflow run and starts N workers running `bpiml.train.loop.train_loop_per_worker`. Checkpoints go
to `<storage_path>/<run_name>`; the same run name and storage path resume from the latest
checkpoint, and Ray Train restarts a failed worker group from it (`max_failures`). At the end
the best checkpoint is exported and, with `--register NAME[@ALIAS]`, registered in MLflow.
With `--pretrain-store`, `run_training` first trains (or finds finished) `<run_name>-pretrain`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from bpiml.config import redact
from bpiml.data import cache, inputs, retry, storage
from bpiml.model import checkpoint as ckpt
from bpiml.model import pretrained
from bpiml.runtime import raycluster, tracking
from bpiml.runtime.resources import GpuDecision, wait_for_resources
from bpiml.train import init as init_model
from bpiml.train.config import DEFAULT_STORE, TrainConfig, TrainResult
from bpiml.train.data import StorePart, TrainingData
from bpiml.train.datasets import DATA_CPUS, training_data
from bpiml.train.init import InitModel
from bpiml.train.loop import train_loop_per_worker
from bpiml.train.registry import (
    finish_run,
    finished_result,
    read_run_state,
    stores_seen,
    stores_summary,
    write_run_state,
)

logger = logging.getLogger(__name__)

def _check_default_store(config: TrainConfig) -> None:
    if config.store == DEFAULT_STORE and not storage.exists(config.store):
        raise FileNotFoundError(
            f"the embedded default store {DEFAULT_STORE!r} (pseudo-labeled sample) does not exist under "
            f"{os.getcwd()}; make it with `python jobs/pseudolabel.py` (its defaults write it), or pass --store")


def _check_store(part: StorePart, config: TrainConfig) -> None:
    """One training store: it has usable train records and the first one is readable."""
    if not part.n_train:
        skipped = ", ".join(f"{n} {why}" for why, n in part.skipped.items()) or "none in that split"
        raise ValueError(f"store {part.spec.uri}: no train records with split {config.train_split!r} usable for "
                         f"supervision {part.spec.supervision!r} (skipped: {skipped})")
    first = part.train.take(1)[0]  # a wrong source root shows here, before any worker starts
    if not first["ok"]:
        raise FileNotFoundError(f"store {part.spec.uri}: the first training sample cannot be read: {first['reason']}")
    if part.skipped:
        logger.warning("store %s: left out of training: %s", part.spec.uri, part.skipped)
    if config.add_store:
        logger.info("store %s (%s, weight %g): %d train records, %.0f samples per epoch", part.spec.uri,
                    part.spec.supervision, part.spec.weight, part.n_train, part.draws)


def check_training_inputs(config: TrainConfig) -> TrainingData:
    """Fail fast on each store (has train samples, the first one readable) and the storage path (writable)."""
    _check_default_store(config)
    data = training_data(config)
    for part in data.parts:
        _check_store(part, config)
    if not data.n_val:
        logger.warning("store %s has no %r records with GT masks: no validation metrics; the best checkpoint "
                       "falls back to the lowest training loss", config.store, config.val_split)
    storage.check_writable(config.storage_path)
    return data


def _prepare(config: TrainConfig) -> tuple[TrainConfig, GpuDecision]:
    """The config the workers get (GPUs decided, paths absolute, inputs imported) and the GPU decision,
    once the cluster offers the CPUs and GPUs it asks for."""
    config.validate()
    _check_default_store(config)
    retry.set_budget(config.storage_retry_s)  # before Ray starts: its workers get it through worker_env()
    if config.s3_endpoint:
        storage.set_s3_endpoint(config.s3_endpoint)  # before Ray starts: its workers get it through worker_env()
    decision = config.gpu_decision()
    logger.info("training workers: %s", decision)
    raycluster.init_ray()
    # The data tasks (decode, augment) need CPUs beside the workers, or Ray Data waits for them forever.
    wait_for_resources(config.num_workers * config.cpus_per_worker + DATA_CPUS,
                       config.num_workers * decision.gpus_per_worker, config.resource_wait_s,
                       f"training ({config.num_workers} workers x {config.cpus_per_worker:g} CPUs + "
                       f"{DATA_CPUS:g} for data tasks)")
    storage_path = storage.absolute(config.storage_path)
    import_root = config.import_dir or storage.join(storage_path, "inputs")
    added = [dataclasses.replace(spec, uri=_input_store(spec.uri, import_root)).entry() for spec in config.stores()[1:]]
    return config.replace(gpus_per_worker=decision.gpus_per_worker, storage_path=storage_path,
                          store=_input_store(config.store, import_root), add_store=added,
                          run_name=config.run_name or config.default_run_name()), decision


def _input_store(uri: str, import_root: str) -> str:
    """A training input as a store: a store as it is, an IMDL-BenCo list or COCO file imported once."""
    inputs.require_boxes(uri, inputs.detect(uri), "training")
    store, _ = inputs.as_store(storage.absolute(uri), import_root, inputs.FOR_TRAINING)
    return storage.absolute(store)


def resolve_backbone_weights(config: TrainConfig, init: InitModel | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """Decide the backbone's initial weights once, on the driver: `auto` becomes `imagenet` (every
    worker fetches them, once per node) or, offline, `none` (one warning here, none per worker); a
    run that starts from an earlier model (`init`) takes its backbone from it and fetches nothing.
    Returns the config the workers get and {source, sha256} for MLflow and the registered model."""
    spec, backbone = config.model.backbone_weights, config.model.backbone
    if init is not None:
        return (config.replace(model=config.model.replace(backbone_weights=pretrained.NONE)),
                {"source": f"init_from {redact(init.uri)}", "sha256": init.sha256})
    resolved = pretrained.resolve(spec, backbone)
    sha256 = resolved.sha256
    if resolved.path and not sha256:  # a state dict given by path or URI
        sha256 = cache.sha256_file(cache.local_copy(resolved.path))
    if spec == pretrained.AUTO:
        spec = pretrained.IMAGENET if resolved.path else pretrained.NONE
    logger.info("backbone %s starts from %s%s", backbone, resolved.source, f" (SHA-256 {sha256[:16]})" if sha256 else "")
    return config.replace(model=config.model.replace(backbone_weights=spec)), {"source": resolved.source,
                                                                               "sha256": sha256}


def _check_shared(config: TrainConfig, tracking_uri: str) -> None:
    paths = {"store": config.store, "storage-path": config.storage_path}
    if tracking_uri.startswith("sqlite:///"):
        paths["tracking-uri"] = os.path.dirname(tracking_uri[len("sqlite:///"):])
    raycluster.check_paths_reachable(paths, "training")
    for spec in config.stores()[1:]:  # one at a time: the error names the flag
        raycluster.check_paths_reachable({"add-store": spec.uri}, "training")


def _resolve_init(config: TrainConfig, run_dir: str, tracking_uri: str) -> InitModel | None:
    """The model a fresh run starts from (None without --init-from, or when the run resumes from its checkpoints)."""
    if not config.init_from:
        return None
    if ckpt.find_latest(run_dir) is not None:
        logger.info("run %s resumes from its own checkpoints: --init-from %s is not loaded again", config.run_name,
                    redact(config.init_from))
        return None
    return init_model.resolve_init(config.init_from, config.model, tracking_uri)


def _open_mlflow_run(config: TrainConfig, data: TrainingData, tracking_uri: str, run_dir: str,
                     backbone: dict[str, Any], init: InitModel | None, decision: GpuDecision) -> dict[str, Any]:
    previous = read_run_state(run_dir)
    stores = stores_seen(config, init.record() if init else previous.get("init_from"))
    run_id = tracking.start_or_resume_run(tracking_uri, config.experiment, previous.get("mlflow_run_id"),
                                          config.run_name, tags={"bpiml.job": "train", "bpiml.run_dir": run_dir,
                                                                 "bpiml.stores": stores_summary(stores)})
    tracking.client(tracking_uri).set_tag(run_id, "bpiml.gpu_decision", str(decision))  # this call's, also on resume
    state = {**previous, "mlflow_run_id": run_id, "tracking_uri": tracking_uri, "experiment": config.experiment,
             "backbone_weights": previous.get("backbone_weights", backbone),  # a resumed run keeps its first start
             "init_from": init.record() if init else previous.get("init_from")}
    write_run_state(run_dir, state)
    config.save(storage.join(run_dir, "train_config.json"))
    student = config.model
    teacher = data.teacher
    tracking.log_params(tracking_uri, run_id, {
        **config.to_dict(), "memory_bank_size": f"{student.memory_slots}x{student.width}" if student.use_memory else "off",
        "alpha": student.alpha, "variant": student.variant, "teacher": teacher.get("name", "unknown"),
        "teacher_identity": teacher.get("identity", "unknown"), "teachers": json.dumps(teacher.get("teachers", {})),
        "n_train": data.n_train, "n_val": data.n_val, "source": data.source,
        "backbone_weights_source": backbone["source"], "backbone_weights_sha256": backbone["sha256"] or "",
        "stores": json.dumps(stores), "init_sha256": (state["init_from"] or {}).get("sha256", ""),
        **{f"review_{k}": v for k, v in data.review.items()}})
    tracking.log_dict(tracking_uri, run_id, config.to_dict(), "config/train_config.json")
    return state


def _trainer(config: TrainConfig, data: TrainingData, tracking_uri: str, run_state: dict[str, Any],
             run_dir: str, init: InitModel | None) -> TorchTrainer:
    storage_fs, ray_storage_path = (storage.pyarrow_fs(config.storage_path) if storage.is_s3(config.storage_path)
                                    else (None, config.storage_path))
    loop_config = {"train_config": config.to_dict(), "tracking_uri": tracking_uri, "run_dir": run_dir,
                   "mlflow_run_id": run_state["mlflow_run_id"], "n_train": data.n_train,
                   "init_from": run_state.get("init_from")}
    if init is not None:  # through the object store: workers on other nodes need not see the path
        loop_config["init"] = {"weights": ray.put(init.state), "record": init.record()}
    gpus = config.gpus_per_worker or 0.0
    resources = {"CPU": config.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config, datasets={"train": data.train, "val": data.val},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=config.run_name, storage_path=ray_storage_path, storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints,
                                               checkpoint_score_attribute="score", checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=config.max_failures),
            worker_runtime_env={"env_vars": raycluster.worker_env()}))


def run_training(config: TrainConfig) -> TrainResult:
    """Check, train on Ray, export + register the best model; resumes a run of the same name. With
    --pretrain-store, first the run `<run_name>-pretrain` on that store, then this one from its best checkpoint."""
    if not config.pretrain_store:
        return _train(config)
    config = config.replace(run_name=config.run_name or config.default_run_name())
    _check_default_store(config)
    for spec in config.stores():  # the fine-tuning inputs are there before pretraining takes hours
        inputs.require_boxes(spec.uri, inputs.detect(spec.uri), "training")
    pretrain = config.pretrain_config()
    done = finished_result(pretrain, read_run_state(storage.join(storage.absolute(config.storage_path),
                                                                 pretrain.run_name)))
    if done is None:
        logger.info("pretraining %s on %s (%d epochs, supervision %s), then %s", pretrain.run_name,
                    redact(pretrain.store), pretrain.epochs, pretrain.supervision, config.run_name)
        done = _train(pretrain)
    else:
        logger.info("pretraining run %s is done (%d epochs): not trained again", pretrain.run_name, len(done.history))
    if not done.best_checkpoint:
        raise RuntimeError(f"pretraining run {pretrain.run_name} left no checkpoint in {done.run_dir}")
    return _train(config.replace(init_from=done.best_checkpoint, pretrain_store="", pretrain_epochs=0))


def _train(config: TrainConfig) -> TrainResult:
    """One run: check, train on Ray, export + register the best model; resumes a run of the same name."""
    config, decision = _prepare(config)
    tracking_uri = tracking.resolve_tracking_uri(config.tracking_uri)
    run_dir = storage.join(config.storage_path, config.run_name)
    init = _resolve_init(config, run_dir, tracking_uri)
    if init is None and config.init_from:  # resumes a run that started from a model: fetch no backbone
        config = config.replace(model=config.model.replace(backbone_weights=pretrained.NONE))
    data = check_training_inputs(config)
    config, backbone = resolve_backbone_weights(config, init)
    _check_shared(config, tracking_uri)
    run_state = _open_mlflow_run(config, data, tracking_uri, run_dir, backbone, init, decision)
    logger.info("training %s: %d train / %d val images, %d worker(s) on %s, checkpoints in %s, MLflow run %s",
                config.run_name, data.n_train, data.n_val, config.num_workers, "GPU" if config.gpus_per_worker else "CPU",
                run_dir, run_state["mlflow_run_id"])
    finished = finished_result(config, run_state)
    if finished is not None:
        logger.info("run %s already trained %d epochs (best checkpoint %s): nothing to do; pass --epochs > %d to "
                    "continue it", config.run_name, len(finished.history), finished.best_checkpoint, len(finished.history))
        tracking.end_run(tracking_uri, run_state["mlflow_run_id"], status="FINISHED")
        return dataclasses.replace(finished, gpu_decision=str(decision))
    try:
        result = _trainer(config, data, tracking_uri, run_state, run_dir, init).fit()
    except BaseException:
        tracking.end_run(tracking_uri, run_state["mlflow_run_id"], status="FAILED")
        raise
    return dataclasses.replace(finish_run(config, result, run_dir, tracking_uri, run_state, data),
                               gpu_decision=str(decision))
