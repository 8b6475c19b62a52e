"""Which model a URI means: one rule for every job that reads a model (predict, evaluate, serve and
train's `--init-from`).

    with open_model(uri, tracking_uri) as found:   # found.kind: "exported" | "checkpoint"; found.path: local
        ...

- `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/ID/PATH` (MLflow): the MLflow Model it names
  (the student under its `artifacts/`; a version in the older bare-folder format as a whole),
  downloaded into a temporary folder that lives as long as the `with` block.
- an exported folder (`model.safetensors` + `model_config.json`), or an MLflow Model folder holding
  one under `artifacts/`: itself.
- a torch file, or a checkpoint folder holding one of `checkpoint.CHECKPOINT_NAMES`: itself.
- a run folder (`checkpoint_*` folders below it): its best checkpoint, by the score training ranks
  checkpoints by (`checkpoint.find_best`): the one training registers. Resuming a run is another
  question, answered by its latest checkpoint (`checkpoint.find_latest`, training only).

Local paths and s3:// URIs alike; s3:// files are copied to the node cache. Nothing is loaded here:
callers read an exported folder with `checkpoint.read_exported` (safetensors) and a torch file with
`checkpoint.load_state` (`weights_only=True`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bpiml.config import redact
from bpiml.data import cache, storage
from bpiml.model import checkpoint as ckpt
from bpiml.runtime.tracking import (
    check_registered_model,
    download_model,
    is_mlflow_uri,
    resolve_tracking_uri,
)

logger = logging.getLogger(__name__)

FORMS = (f"models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/PATH, an exported model folder ({ckpt.WEIGHTS_FILE} + "
         f"{ckpt.MODEL_CONFIG_FILE}), a checkpoint file or folder ({', '.join(ckpt.CHECKPOINT_NAMES)}) or a run "
         "folder (checkpoint_* folders: its best)")


@dataclasses.dataclass(frozen=True)
class Located:
    kind: str  # "exported" (a folder of safetensors + JSON) | "checkpoint" (a torch file)
    path: str  # the exported folder or the torch file: local or s3:// from `locate`, local from `open_model`


def locate(uri: str) -> Located:
    """Where the model a local or s3:// `uri` means lives (see the module doc); FileNotFoundError naming
    the accepted forms when there is none. Reads listings and small files only."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"no checkpoint or model at {redact(uri)}: no such file or folder; expected {FORMS}")
    if storage.is_file(uri):
        return Located("checkpoint", uri)
    for folder in (uri, storage.join(uri, "artifacts")):
        if all(storage.exists(storage.join(folder, n)) for n in (ckpt.WEIGHTS_FILE, ckpt.MODEL_CONFIG_FILE)):
            return Located("exported", folder)
    for name in ckpt.CHECKPOINT_NAMES:
        if storage.exists(storage.join(uri, name)):
            return Located("checkpoint", storage.join(uri, name))
    best = ckpt.find_best(uri)
    if best is None:
        raise FileNotFoundError(f"no checkpoint or model at {redact(uri)}; expected {FORMS}")
    logger.info("%s: its best checkpoint is %s", redact(uri), redact(best))
    return locate(best)


def check_model(uri: str, tracking_uri: str = "") -> str:
    """Fail fast when the model `uri` means is missing; returns the tracking URI Ray workers must use
    ("" for a path or s3:// URI)."""
    if not is_mlflow_uri(uri):
        locate(uri)
        return ""
    resolved = resolve_tracking_uri(tracking_uri)
    check_registered_model(uri, resolved)
    return resolved


@contextlib.contextmanager
def open_model(uri: str, tracking_uri: str = "") -> Iterator[Located]:
    """The model `uri` means, on local disk while the block runs (see the module doc). MLflow URIs are
    resolved against `tracking_uri`, else MLFLOW_TRACKING_URI, else the project's sqlite store."""
    if is_mlflow_uri(uri):
        with tempfile.TemporaryDirectory() as tmp:
            yield Located("exported", _download_student(uri, resolve_tracking_uri(tracking_uri), tmp))
        return
    found = locate(uri)
    if found.kind == "checkpoint":
        yield Located("checkpoint", cache.local_copy(found.path))
        return
    local = cache.local_copy(storage.join(found.path, ckpt.WEIGHTS_FILE))  # s3:// files land side by side
    for name in (ckpt.MODEL_CONFIG_FILE, ckpt.METADATA_FILE):
        if name == ckpt.MODEL_CONFIG_FILE or storage.exists(storage.join(found.path, name)):
            cache.local_copy(storage.join(found.path, name))
    yield Located("exported", str(Path(local).parent))


def _download_student(uri: str, tracking_uri: str, dst: str) -> str:
    """The local folder holding the student's files: only `artifacts/` of an MLflow Model (its code/ and
    environment files are not needed), else everything (a version in the older bare-folder format)."""
    try:
        folder = download_model(f"{uri.rstrip('/')}/artifacts", tracking_uri, os.path.join(dst, "artifacts"))
        if ckpt.find_exported(folder) is not None:
            return folder
    except FileNotFoundError:  # no artifacts/ folder: the bare-folder format
        pass
    return download_model(uri, tracking_uri, os.path.join(dst, "model"))
