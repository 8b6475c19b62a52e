"""MLflow helpers for training: tracking URI, runs that resume, params, overlays, registry + alias.

Everything goes through an explicit `MlflowClient(tracking_uri)` so that the training workers
(other processes, possibly other machines) and the driver log to the same place without relying
on global state. Only `log_and_register_model` touches `mlflow`'s globals, because
`mlflow.pytorch.log_model` logs into the active run.

Tracking URI order: an explicit value, then `MLFLOW_TRACKING_URI`, then the embedded default
`sqlite:///<project>/.bpiml/mlflow.db` (the plain file store is refused by MLflow 3 unless allowed).
For sqlite tracking the artifacts go to `<db folder>/mlartifacts/<experiment>` instead of MLflow's
`./mlruns` relative to whatever the working directory happens to be.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

logger = logging.getLogger(__name__)

PARAM_VALUE_LIMIT = 6000  # MLflow's maximum length of a param value


def project_dir() -> Path:
    """The project folder: `BPIML_PROJECT_DIR`, else the working directory (like the jobs' other
    relative defaults, `.bpiml/sample-pseudo` and `runs`)."""
    return Path(os.environ.get("BPIML_PROJECT_DIR") or os.getcwd()).resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{project_dir() / '.bpiml' / 'mlflow.db'}"


def resolve_tracking_uri(explicit: str = "") -> str:
    """`explicit`, else MLFLOW_TRACKING_URI, else the embedded sqlite default (its folder is created)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite DB; the server decides otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///"):])
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (db.parent / "mlartifacts" / safe).resolve().as_uri()


def client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The id of experiment `name`, created (with a project-local artifact folder for sqlite) if missing."""
    mlc = client(tracking_uri)
    found = mlc.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlc.create_experiment(name, artifact_location=artifact_location(tracking_uri, name))


def start_or_resume_run(tracking_uri: str, experiment: str, run_id: str | None = None,
                        run_name: str = "", tags: Mapping[str, str] | None = None) -> str:
    """Reopen run `run_id` when it exists (a resumed training), else create a new run; returns its id."""
    mlc = client(tracking_uri)
    if run_id:
        try:
            mlc.get_run(run_id)
            mlc.update_run(run_id, status="RUNNING")
            logger.info("resuming MLflow run %s", run_id)
            return run_id
        except Exception as err:  # MlflowException for unknown ids; keep going with a new run
            logger.warning("MLflow run %s not found at %s (%s); starting a new run", run_id, tracking_uri, err)
    experiment_id = ensure_experiment(tracking_uri, experiment)
    run = mlc.create_run(experiment_id, run_name=run_name or None, tags=dict(tags or {}))
    logger.info("started MLflow run %s in experiment %r", run.info.run_id, experiment)
    return run.info.run_id


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(tracking_uri).set_terminated(run_id, status=status)


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"a.b": "value"} with values as strings cut to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[name] = text[:PARAM_VALUE_LIMIT]
    return out


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> dict[str, str]:
    """Log params not yet on the run. A resumed run keeps its first values (MLflow forbids changes);
    changed values are logged as tags `resumed.<param>` instead. Returns the params logged."""
    from mlflow.entities import Param, RunTag

    mlc = client(tracking_uri)
    flat = flatten_params(params)
    existing = mlc.get_run(run_id).data.params
    new = {k: v for k, v in flat.items() if k not in existing}
    changed = {k: v for k, v in flat.items() if k in existing and existing[k] != v}
    items = list(new.items())
    for start in range(0, len(items), 100):  # log_batch accepts at most 100 params per call
        mlc.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + 100]])
    if changed:
        logger.info("resumed run %s: params changed since the first run: %s", run_id, ", ".join(sorted(changed)))
        mlc.log_batch(run_id, tags=[RunTag(f"resumed.{k}", v[:5000]) for k, v in changed.items()])
    return new


def log_metrics(tracking_uri: str, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log finite numeric metrics at `step` in one batch (nan and non-numbers are skipped)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    rows = [Metric(k, float(v), now, step) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)]
    if rows:
        client(tracking_uri).log_batch(run_id, metrics=rows)


def log_dict(tracking_uri: str, run_id: str, values: Mapping[str, Any], artifact_file: str) -> None:
    client(tracking_uri).log_dict(run_id, dict(values), artifact_file)


def overlay_strip(image: np.ndarray, *masks: np.ndarray) -> np.ndarray:
    """image (HxWx3 uint8) | mask | mask ... side by side as one Hx(W*(1+n))x3 uint8 image.

    Masks (HxW bool or probabilities in [0, 1]) are shown in gray levels; each one must match the
    image's height and width.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    panels = [image.astype(np.uint8)]
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {i} has shape {mask.shape}, image has {image.shape[:2]}")
        gray = (np.clip(mask, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        panels.append(np.repeat(gray[:, :, None], 3, axis=2))
    return np.concatenate(panels, axis=1)


def log_overlays(tracking_uri: str, run_id: str, strips: Iterable[tuple[str, np.ndarray]], folder: str) -> int:
    """Log (name, HxWx3 uint8) images under `folder/<name>.png`; returns how many were logged."""
    mlc = client(tracking_uri)
    count = 0
    for name, strip in strips:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        mlc.log_image(run_id, strip, f"{folder}/{safe}.png")
        count += 1
    return count


def pip_requirements() -> list[str]:
    """The student's runtime packages at their installed versions (skips MLflow's slow inference,
    which imports the model in a subprocess)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("torch", "timm", "numpy"):
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def log_and_register_model(model: Any, tracking_uri: str, run_id: str, registered_model: str,
                           alias: str, metadata: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """Log `model` (pickled: no pt2 export) in run `run_id`, register it under `registered_model`
    and point `alias` at the new version. Returns (models:/<name>@<alias>, version)."""
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            serialization_format="pickle",
            registered_model_name=registered_model or None,
            metadata=dict(metadata or {}),
            pip_requirements=pip_requirements(),
        )
    if not registered_model:
        return info.model_uri, ""
    version = str(info.registered_model_version)
    if alias:
        client(tracking_uri).set_registered_model_alias(registered_model, alias, version)
        return f"models:/{registered_model}@{alias}", version
    return f"models:/{registered_model}/{version}", version
