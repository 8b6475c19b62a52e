"""After `fit()`: pick the best checkpoint, export it, register it in MLflow, summarise the run."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from bpiml.config import redact
from bpiml.data import storage
from bpiml.model import checkpoint as ckpt
from bpiml.model import mlflow_model
from bpiml.runtime import tracking, tracking_queue
from bpiml.train.config import TrainConfig, TrainResult
from bpiml.train.data import TrainingData

logger = logging.getLogger(__name__)


RUN_STATE_FILE = "bpiml_run.json"  # beside the checkpoints: the MLflow run to continue, what was registered


def read_run_state(run_dir: str) -> dict[str, Any]:
    uri = storage.join(run_dir, RUN_STATE_FILE)
    if not storage.exists(uri):
        return {}
    try:
        state = json.loads(storage.read_bytes(uri))
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri} is not valid JSON ({err}); delete it to start a new MLflow run") from err
    return state if isinstance(state, dict) else {}


def write_run_state(run_dir: str, state: dict[str, Any]) -> None:
    storage.write_json(storage.join(run_dir, RUN_STATE_FILE), redact(state))


def checkpoint_uri(checkpoint: Any) -> str | None:
    if checkpoint is None:
        return None
    return storage.s3_uri(checkpoint.path) if getattr(checkpoint.filesystem, "type_name", "") == "s3" else checkpoint.path


def _best(result: Any) -> tuple[Any, dict[str, Any]]:
    pairs = [(c, m) for c, m in (result.best_checkpoints or []) if c is not None]
    if pairs:
        return max(pairs, key=lambda cm: float(cm[1].get("score", -math.inf)))
    return result.checkpoint, dict(result.metrics or {})


def _load(checkpoint: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with checkpoint.as_directory() as folder:
        return ckpt.load_state(folder), ckpt.read_history(folder)


def stores_seen(config: TrainConfig, init_from: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every store the model saw: this run's ({uri, weight, supervision, role: "train"}), then those of the
    model it started from and of that one's start (role "init"), as their records say."""
    seen = [spec.record() for spec in config.stores()]
    record = init_from
    while isinstance(record, dict):
        seen += [{**s, "role": "init"} for s in record.get("stores") or [] if isinstance(s, dict)]
        record = record.get("init_from")
    return seen


def stores_summary(stores: list[dict[str, Any]]) -> str:
    """One line for an MLflow tag: `train: URI (gt, w=1); ... | init: URI (gt, w=1)`."""
    by_role: dict[str, list[str]] = {}
    for s in stores:
        by_role.setdefault(str(s.get("role", "train")), []).append(
            f"{s.get('uri')} ({s.get('supervision', '?')}, w={s.get('weight', '?')})")
    return " | ".join(f"{role}: {'; '.join(items)}" for role, items in by_role.items())[:5000]


def register(config: TrainConfig, state: dict[str, Any], best_uri: str, numbers: dict[str, float],
             data: TrainingData, tracking_uri: str, run_id: str, backbone: dict[str, Any] | None = None,
             init_from: dict[str, Any] | None = None) -> tuple[str, str]:
    """Export the best checkpoint's student as an MLflow Model with its model card and register it;
    returns (model URI, version)."""
    model = ckpt.student_from_state(state, where=best_uri)
    val_f1 = numbers.get("val_f1", math.nan)
    stores = stores_seen(config, init_from)
    metadata = {"epoch": int(state["epoch"]), "val_f1": val_f1 if math.isfinite(val_f1) else None,
                "checkpoint": best_uri, "store": redact(config.store), "stores": stores, "source": data.source,
                "teacher": data.teacher, "backbone_weights": state["model_config"].get("backbone_weights"),
                "backbone_weights_source": (backbone or {}).get("source"),
                "backbone_weights_sha256": (backbone or {}).get("sha256"),
                "review": data.review,  # records reviewed/accepted/corrected/rejected, filtered by --min-confidence
                **({"init_from": init_from} if init_from else {})}
    card = mlflow_model.model_card(redact(metadata), numbers)
    with tempfile.TemporaryDirectory() as folder:
        ckpt.export(model, Path(folder) / "exported", redact(metadata))
        mlflow_model.save(Path(folder) / "exported", Path(folder) / "model", card)
        return tracking.register_model_folder(tracking_uri, run_id, str(Path(folder) / "model"), config.registered_model,
                                              config.alias, description=card,
                                              tags={"bpiml.checkpoint": best_uri, "bpiml.epoch": str(state["epoch"]),
                                                    "bpiml.stores": stores_summary(stores)})


def finish_run(config: TrainConfig, result: Any, run_dir: str, tracking_uri: str, run_state: dict[str, Any],
               data: TrainingData) -> TrainResult:
    run_id = run_state["mlflow_run_id"]
    best, best_metrics = _best(result)
    if best is None:
        tracking.end_run(tracking_uri, run_id, status="FAILED")
        raise RuntimeError(f"run {config.run_name} in {run_dir} reported no checkpoint")
    state, _ = _load(best)
    _, history = _load(result.checkpoint or best)
    returned = result.return_value if isinstance(result.return_value, dict) else {}
    # Epochs an MLflow outage kept out while training: the checkpoint's history holds them; each is logged once.
    late = sorted({int(s) for s in returned.get("mlflow_late") or []} |
                  set(tracking_queue.replay_missing(tracking_uri, run_id, history)))
    numbers = {k: float(v) for k, v in best_metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracking.log_metrics(tracking_uri, run_id, {f"best_{k}": v for k, v in numbers.items()}, step=int(state["epoch"]))
    model_uri = version = None
    registered = run_state.get("registered") or {}
    key = {"checkpoint": checkpoint_uri(best), "register": config.register}
    if config.register and all(registered.get(k) == v for k, v in key.items()):
        model_uri, version = registered["model_uri"], registered["version"]  # a rerun that trained nothing new
        logger.info("best checkpoint unchanged: %s (version %s) stays registered", model_uri, version)
    elif config.register:
        model_uri, version = register(config, state, checkpoint_uri(best) or "", numbers, data, tracking_uri, run_id,
                                      run_state.get("backbone_weights"), run_state.get("init_from"))
        logger.info("registered %s (version %s) from epoch %d", model_uri, version, int(state["epoch"]))
        run_state = {**run_state, "registered": {**key, "model_uri": model_uri, "version": version}}
    tracking.end_run(tracking_uri, run_id, status="FINISHED")
    mlflow_errors = int(returned.get("mlflow_errors", 0))
    if late:
        logger.warning("MLflow was unreachable during training: epoch(s) %s were logged late, from the checkpoint's "
                       "history; every epoch is in the run once", ", ".join(str(e + 1) for e in late))
    elif mlflow_errors:
        logger.warning("%d MLflow call(s) failed during training (see the warnings above)", mlflow_errors)
    skipped = int(sum(row.get("unreadable", 0) for row in history[-1:]))
    if skipped:
        logger.warning("%d sample(s) could not be read and were skipped each epoch; see %s", skipped,
                       storage.join(run_dir, "rejects"))
    done = TrainResult(run_name=config.run_name, run_dir=run_dir, best_checkpoint=checkpoint_uri(best),
                       latest_checkpoint=checkpoint_uri(result.checkpoint), best_metrics=numbers, history=history,
                       start_epoch=int(returned.get("start_epoch", len(history))), mlflow_run_id=run_id,
                       tracking_uri=tracking_uri, registered_model_uri=model_uri, model_version=version,
                       skipped_samples=skipped, mlflow_errors=mlflow_errors, mlflow_late=late)
    write_run_state(run_dir, {**run_state, "finished": {"epochs": len(history), "result": dataclasses.asdict(done)}})
    return done


def finished_result(config: TrainConfig, run_state: dict[str, Any]) -> TrainResult | None:
    """The result of a run that already trained `config.epochs` epochs and registered what this call
    asks for (None when there is work left): a rerun of a finished command returns at once."""
    finished = run_state.get("finished") or {}
    if int(finished.get("epochs", -1)) < config.epochs or not isinstance(finished.get("result"), dict):
        return None
    result = TrainResult(**finished["result"])
    registered = run_state.get("registered") or {}
    wanted = {"checkpoint": result.best_checkpoint, "register": config.register}
    if config.register and any(registered.get(k) != v for k, v in wanted.items()):
        return None  # registering (another name) needs the best checkpoint: let fit() restore and finish
    if config.register:
        logger.info("best checkpoint unchanged: %s (version %s) stays registered", registered["model_uri"],
                    registered["version"])
    return dataclasses.replace(result, start_epoch=len(result.history),
                               registered_model_uri=registered.get("model_uri") if config.register else None,
                               model_version=registered.get("version") if config.register else None)
