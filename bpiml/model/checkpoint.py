"""Student checkpoints: one place for how they are written, found and read.

An exported student (what the MLflow registry holds) is a folder with `model.safetensors` (the
state dict, tensors only), `model_config.json` (the `StudentConfig`) and `metadata.json`; it loads
without unpickling anything (`load_exported`), so a planted pickle in a model artifact is refused.

A training checkpoint is a folder (what Ray Train reports and keeps) holding

    checkpoint.pt       {"model_config", "model_state", "optimizer_state", "scheduler_state", "epoch",
                         "train_config", "mlflow_run_id"[, "init_from": the model the run started
                         from, as `bpiml.train.init` records it]}, read with torch.load(weights_only=True)
    history.json        one row of epoch metrics per epoch since epoch 0
    train_config.json   the resolved training config

Training restores from its latest, the driver registers the best one, and every job that reads a
model finds it by one rule (`bpiml.model.locate`: a run folder means its best checkpoint). Nothing here unpickles code: states are tensors and
plain containers, loaded with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bpiml.data import storage
from bpiml.model.student import Student, StudentConfig, build_student

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"
CONFIG_FILE = "train_config.json"
CHECKPOINT_NAMES = (CHECKPOINT_FILE, "model.pt", "student.pt")  # files a checkpoint folder may hold
WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model_config.json"
METADATA_FILE = "metadata.json"
_RAY_CHECKPOINT_DIR = re.compile(r"^checkpoint_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")


def save(folder: str | Path, state: dict[str, Any], history: list[dict[str, Any]], config_json: str) -> None:
    """Write a training checkpoint folder (see the module doc)."""
    folder = Path(folder)
    torch.save(state, folder / CHECKPOINT_FILE)
    storage.write_json(str(folder / HISTORY_FILE), history, indent=1)
    (folder / CONFIG_FILE).write_text(config_json)


def load_state(folder_or_file: str | Path) -> dict[str, Any]:
    """The state dict saved by `save` (or any torch file of plain tensors), from a local path."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # pickled code, a truncated file, not torch at all
        raise ValueError(f"{path}: not a readable torch checkpoint: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(state).__name__}")
    return state


def read_history(folder: str | Path) -> list[dict[str, Any]]:
    path = Path(folder) / HISTORY_FILE
    return json.loads(path.read_text()) if path.exists() else []


def find_latest(run_dir: str) -> str | None:
    """The newest Ray Train checkpoint folder below a run folder (`checkpoint_<timestamp>`), or None."""
    names = [os.path.basename(uri.rstrip("/")) for uri in storage.list_dirs(run_dir)]
    stamped = sorted(n for n in names if _RAY_CHECKPOINT_DIR.match(n))
    return storage.join(run_dir, stamped[-1]) if stamped else None


def find_best(run_dir: str) -> str | None:
    """The checkpoint folder below a run folder whose epoch scored best (`score` in its history, what
    training ranks checkpoints by; the later one on a tie), or None when there is none."""
    names = [os.path.basename(uri.rstrip("/")) for uri in storage.list_dirs(run_dir)] if storage.exists(run_dir) else []
    best: tuple[float, str] | None = None
    for name in sorted(n for n in names if _RAY_CHECKPOINT_DIR.match(n)):
        folder = storage.join(run_dir, name)
        history_uri = storage.join(folder, HISTORY_FILE)
        try:
            rows = json.loads(storage.read_bytes(history_uri)) if storage.exists(history_uri) else []
            score = float(rows[-1].get("score", float("-inf"))) if rows else float("-inf")
        except (ValueError, TypeError, AttributeError):  # a torn or foreign history: rank it last
            score = float("-inf")
        if best is None or score >= best[0]:
            best = (score, folder)
    return best[1] if best else None


def student_from_state(state: dict[str, Any], where: str = "checkpoint") -> Student:
    """Build the student a state describes and load its weights (eval mode, CPU)."""
    if "model_config" not in state or "model_state" not in state:
        raise ValueError(f"{where}: checkpoint must hold 'model_config' and 'model_state', found {sorted(state)}")
    # The state dict overwrites the backbone's initial weights: never fetch them for inference.
    config = {**state["model_config"], "backbone_weights": None}
    model = build_student(StudentConfig.from_dict(config))
    model.load_state_dict(state["model_state"])
    return model.eval()


# --- exported students (the registry's format) ---------------------------------------------------
def export(model: Student, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `model` as safetensors + JSON config (+ metadata) into `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    storage.write_json(str(folder / MODEL_CONFIG_FILE), model.config.to_dict(), sort_keys=True)
    storage.write_json(str(folder / METADATA_FILE), metadata or {}, sort_keys=True, default=str)
    return folder


def find_exported(folder: str | Path) -> Path | None:
    """The folder at or below `folder` that holds an exported student (MLflow nests artifacts)."""
    folder = Path(folder)
    for candidate in [folder, *sorted(p.parent for p in folder.rglob(WEIGHTS_FILE))]:
        if (candidate / WEIGHTS_FILE).is_file() and (candidate / MODEL_CONFIG_FILE).is_file():
            return candidate
    return None


def read_exported(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], Path]:
    """(state dict, model config, metadata, weights file) of an exported folder. Tensors only: nothing is unpickled."""
    found = find_exported(folder)
    if found is None:
        names = sorted(p.name for p in Path(folder).rglob("*") if p.is_file())[:10]
        raise ValueError(f"{folder}: no exported student ({WEIGHTS_FILE} + {MODEL_CONFIG_FILE}); found {names}. "
                         "Pickled models are not loaded: they can run arbitrary code.")
    try:
        state = load_file(str(found / WEIGHTS_FILE))
    except Exception as err:  # a pickle or anything else planted under the safetensors name
        raise ValueError(f"{found / WEIGHTS_FILE} is not a safetensors file ({type(err).__name__}: {err}); "
                         "refusing to load it") from err
    config = json.loads((found / MODEL_CONFIG_FILE).read_text())
    meta_file = found / METADATA_FILE
    metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return state, config, metadata if isinstance(metadata, dict) else {}, found / WEIGHTS_FILE


def load_exported(folder: str | Path) -> Student:
    """The student of an exported folder, in eval mode on CPU. Tensors only: nothing is unpickled."""
    state, config, _, found = read_exported(folder)
    return student_from_state({"model_config": config, "model_state": state}, where=str(found.parent))


# --- starting from an earlier model --------------------------------------------------------------
ARCHITECTURE_FREE = ("img_size", "backbone_weights")  # may differ between a model and one started from it


def architecture_diff(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """`field (have -> want)` for each StudentConfig field, other than ARCHITECTURE_FREE, that differs."""
    defaults = StudentConfig().to_dict()
    keys = sorted((set(have) | set(want) | set(defaults)) - set(ARCHITECTURE_FREE))
    return [f"{k} ({have.get(k, defaults.get(k))!r} -> {want.get(k, defaults.get(k))!r})" for k in keys
            if have.get(k, defaults.get(k)) != want.get(k, defaults.get(k))]


def state_fingerprint(state: dict[str, Any]) -> str:
    """SHA-256 of a state dict's tensors (names, dtypes, shapes, bytes), wherever they live: equal weights, equal hash."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
