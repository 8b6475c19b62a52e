"""MLflow helpers: tracking URI, runs that resume, params, overlays, the model registry + alias.

Everything goes through an explicit `MlflowClient(tracking_uri)` so that the training workers
(other processes, possibly other machines) and the driver log to the same place without relying
on global state. Registered models are MLflow Models around exported students
(`bpiml.model.mlflow_model`: safetensors + JSON + Python code), never pickles.

Tracking URI order: an explicit value, then `MLFLOW_TRACKING_URI`, then the embedded default
`sqlite:///<project>/.bpiml/mlflow.db` (the plain file store is refused by MLflow 3 unless allowed).
For sqlite tracking the artifacts go to `<db folder>/mlartifacts/<experiment>` instead of MLflow's
`./mlruns` relative to whatever the working directory happens to be.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import mlflow
import mlflow.artifacts
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import utils as _registry_utils
from mlflow.tracking._tracking_service import utils as _tracking_utils

from bpiml.config import redact
from bpiml.data import naming

logger = logging.getLogger(__name__)

PARAM_VALUE_LIMIT = 6000  # MLflow's maximum length of a param value
DESCRIPTION_LIMIT = 5000  # a registered version's description: MLflow's SQL column holds 5000 characters


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
    return (db.parent / "mlartifacts" / naming.file_stem(experiment)).resolve().as_uri()


def client(tracking_uri: str) -> Any:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


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
    """Nested mapping -> {"a.b": "value"} with values as strings (credentials redacted) cut to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[name] = redact(text)[:PARAM_VALUE_LIMIT]
    return out


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> dict[str, str]:
    """Log params not yet on the run. A resumed run keeps its first values (MLflow forbids changes);
    changed values are logged as tags `resumed.<param>` instead. Returns the params logged."""
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
    now = int(time.time() * 1000)
    rows = [Metric(k, float(v), now, step) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)]
    if rows:
        client(tracking_uri).log_batch(run_id, metrics=rows)


def log_dict(tracking_uri: str, run_id: str, values: Mapping[str, Any], artifact_file: str) -> None:
    client(tracking_uri).log_dict(run_id, redact(dict(values)), artifact_file)


def log_overlays(tracking_uri: str, run_id: str, strips: Iterable[tuple[str, np.ndarray]], folder: str) -> int:
    """Log (name, HxWx3 uint8) images under `folder/<name>.png`; returns how many were logged."""
    mlc = client(tracking_uri)
    count = 0
    for name, strip in strips:
        mlc.log_image(run_id, strip, f"{folder}/{naming.file_stem(name)}.png")
        count += 1
    return count


def register_model_folder(tracking_uri: str, run_id: str, folder: str, registered_model: str, alias: str = "",
                          tags: Mapping[str, str] | None = None, description: str = "") -> tuple[str, str]:
    """Log `folder` (a model: `bpiml.model.mlflow_model`) as the run's `model` artifact (`model-N` when the run
    logged one before: two versions never share files), register it as a new version of `registered_model`
    (with `tags` and `description`) and point `alias` at it. Returns (models:/<name>@<alias> or /<version>, version)."""
    mlc = client(tracking_uri)
    taken = {os.path.basename(a.path) for a in mlc.list_artifacts(run_id)}
    path = next(p for p in ("model", *(f"model-{n}" for n in range(2, len(taken) + 3))) if p not in taken)
    mlc.log_artifacts(run_id, folder, path)  # a folder of its own: an earlier version's files stay as they were
    source = mlc.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + path
    try:
        mlc.get_registered_model(registered_model)
    except MlflowException:
        mlc.create_registered_model(registered_model)
    version = str(mlc.create_model_version(registered_model, source, run_id=run_id, tags=dict(tags or {}),
                                           description=description[:DESCRIPTION_LIMIT] or None).version)
    if alias:
        mlc.set_registered_model_alias(registered_model, alias, version)
        return f"models:/{registered_model}@{alias}", version
    return f"models:/{registered_model}/{version}", version


MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")  # model URIs that name MLflow artifacts


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(MLFLOW_SCHEMES)


@contextlib.contextmanager
def _pointed_at(tracking_uri: str) -> Iterator[None]:
    """MLflow's global tracking and registry URIs set to `tracking_uri` inside the block, restored after it
    (a library call must not move the caller's MLflow)."""
    # The module state itself, not get_*_uri(): those resolve an unset URI to a default, and setting that
    # back would pin it (an unset registry URI follows the tracking URI a client is given; a pinned one not).
    was_tracking, was_registry = _tracking_utils._tracking_uri, _registry_utils._registry_uri
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        _tracking_utils._tracking_uri, _registry_utils._registry_uri = was_tracking, was_registry


def download_model(uri: str, tracking_uri: str, dst: str) -> str:
    """Download the artifacts behind `models:/...` or `runs:/...` into `dst`; returns the local folder.
    FileNotFoundError naming the URI and the tracking server when MLflow cannot give them."""
    try:
        with _pointed_at(tracking_uri):  # MLflow resolves a logged model's run through the global URIs
            return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst, tracking_uri=tracking_uri,
                                                       registry_uri=tracking_uri)
    except Exception as err:  # MlflowException, OSError, a missing alias: all say "not there" to the caller
        raise FileNotFoundError(f"cannot load {uri} from MLflow at {tracking_uri}: {type(err).__name__}: {err}") from err


def model_version(uri: str, tracking_uri: str) -> Any | None:
    """The registered version `models:/NAME@ALIAS` or `models:/NAME/VERSION` names (None for other URIs)."""
    if not uri.startswith("models:/"):
        return None
    name, at, alias = uri[len("models:/"):].partition("@")
    if at:
        return client(tracking_uri).get_model_version_by_alias(name, alias)
    name, _, version = name.partition("/")
    return client(tracking_uri).get_model_version(name, version) if version.isdigit() else None


def check_registered_model(uri: str, tracking_uri: str) -> None:
    """FileNotFoundError when the registered model a `models:/NAME...` URI names does not exist."""
    if not uri.startswith("models:/"):
        return
    name = uri[len("models:/"):].split("@")[0].split("/")[0]
    try:
        client(tracking_uri).get_registered_model(name)
    except Exception as err:
        raise FileNotFoundError(f"registered model {name!r} not found at {tracking_uri}: {err}") from err
