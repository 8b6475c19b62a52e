"""The registry's format: an exported student wrapped as an MLflow Model (pyfunc flavour, models-from-code).

`save` turns an exported folder (`checkpoint.export`) into

    MLmodel                      pyfunc flavour; its python_model is `pyfunc_student.py`, Python code
                                 (MLflow's models-from-code), not a pickled object
    pyfunc_student.py            that code (a copy MLflow makes)
    artifacts/model.safetensors  the weights (tensors only), artifacts/model_config.json (StudentConfig),
    artifacts/metadata.json      what training recorded, artifacts/README.md (the model card, `model_card`)
    code/bpiml/                  the bpiml package the model was trained with (not on PyPI: a fresh
                                 environment gets it from here, and the rest from requirements.txt)
    requirements.txt, python_env.yaml, conda.yaml   the project's dependencies, pinned to the installed versions
    input_example.json, serving_input_example.json  one small PNG, as MLflow's HTTP server takes it

The signature: input a DataFrame with a binary column `image` (encoded image files, base64 over HTTP);
output `probs` (HxW float32 at the image's size) and `score` (float32, max of `probs`) per row.
`checkpoint.read_exported` finds the weights under `artifacts/`, so every bpiml loader reads this format
(and the older bare folder) without unpickling anything.
"""

from __future__ import annotations

import importlib.metadata
import math
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Schema
from packaging.requirements import Requirement

from bpiml.data import imageio
from bpiml.model import checkpoint

CODE_FILE = Path(__file__).with_name("pyfunc_student.py")
CARD_FILE = "README.md"
INTENDED_USE = ("Localizing manipulated (spliced, copy-moved, removed) regions in photographs: a per-pixel "
                "probability map and an image score (its maximum). Trained from bounding boxes turned into "
                "pseudo masks by a frozen teacher; a screening aid for a human reviewer, not proof.")
LIMITS = ("Scores are not calibrated probabilities; the threshold 0.5 is a default, not a tuned value. "
          "Quality outside the training stores' kinds of forgery, compression and resolution is unknown "
          "until measured (`bpiml evaluate` with degradations). Boxes and teacher masks are coarse: "
          "boundaries are less precise than a model trained on exact masks.")


def signature() -> ModelSignature:
    inputs = Schema([ColSpec(DataType.binary, "image")])
    outputs = Schema([ColSpec(Array(Array(DataType.float)), "probs"), ColSpec(DataType.float, "score")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> pd.DataFrame:
    """One 32x32 PNG (a colour gradient) in the signature's form."""
    ramp = np.linspace(0, 255, 32, dtype=np.uint8)
    image = np.stack([np.tile(ramp, (32, 1)), np.tile(ramp[:, None], (1, 32)), np.full((32, 32), 128, np.uint8)], -1)
    return pd.DataFrame({"image": [imageio.encode_image(image, "png")]})


def _project_requirements() -> list[str]:
    """bpiml's runtime requirements: from its installed metadata, else from the pyproject.toml beside the
    package (a source checkout run without `pip install`, e.g. a `ray job submit --working-dir` copy)."""
    try:
        return list(importlib.metadata.requires("bpiml") or [])
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(checkpoint.__file__).resolve().parents[2] / "pyproject.toml"
        if not pyproject.is_file():
            raise ValueError(f"bpiml is not installed and {pyproject} does not exist: cannot list the model's "
                             "requirements; install the project (pip install -e .)") from None
        return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def pip_requirements() -> list[str]:
    """The project's runtime dependencies (pyproject: every distribution the model's code imports, safetensors
    included), pinned to the installed versions (a dependency that is not installed keeps its own specifier)."""
    wanted = [Requirement(r) for r in _project_requirements()]
    out = []
    for req in (r for r in wanted if r.marker is None):
        extra = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        try:
            out.append(f"{req.name}{extra}=={importlib.metadata.version(req.name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(str(req))
    return out


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "n/a"


def _teacher(teacher: Any) -> str:
    """`name (key value, ...)` of the teacher record a pseudo store's index keeps (or the value as it is)."""
    if not isinstance(teacher, dict):
        return str(teacher or "n/a")
    details = [f"{k} {v}" for k, v in teacher.items() if k not in ("name", "teachers") and v not in (None, "", {}, [])]
    return f"{teacher.get('name', 'n/a')}" + (f" ({', '.join(details)})" if details else "")


EVAL_HEADING, LIMITS_HEADING = "## Evaluation per test set", "## Limits"


def evaluation_section(evaluations: dict[str, dict[str, float]] | None, source: str = "") -> list[str]:
    """The model card's lines on test sets: a table of `evaluations` (set -> metric -> value) and where from."""
    if not evaluations:
        return ["Not evaluated when registered: `bpiml evaluate --model models:/NAME@ALIAS ...`."]
    keys = sorted({k for row in evaluations.values() for k in row})
    return ([f"From {source}:", ""] if source else []) + [
        "| set | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|",
        *(f"| {name} | " + " | ".join(_number(row.get(k)) for k in keys) + " |" for name, row in evaluations.items())]


def with_evaluations(card: str, evaluations: dict[str, dict[str, float]], source: str) -> str:
    """`card` with its evaluation section replaced by `evaluations` (appended to a card without one)."""
    section = "\n".join([EVAL_HEADING, "", *evaluation_section(evaluations, source), ""])
    head, found, rest = card.partition(EVAL_HEADING)
    if not found:
        return card.rstrip("\n") + "\n\n" + section
    _, limits, tail = rest.partition(LIMITS_HEADING)
    return head + section + ("\n" + limits + tail if limits else "")


def model_card(metadata: dict[str, Any], metrics: dict[str, float] | None = None,
               evaluations: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown: what the model was trained on and how, how well it did, what it is for (README.md and the
    registered version's description). `metrics`: best validation numbers; `evaluations`: per test set."""
    stores = metadata.get("stores") or []
    lines = ["# bpiml student: image manipulation localization", "", "## Intended use", "", INTENDED_USE, "",
             "## Training", "", "| store | role | supervision | weight |", "| --- | --- | --- | --- |"]
    lines += [f"| {s.get('uri')} | {s.get('role', 'train')} | {s.get('supervision', '?')} | {s.get('weight', '?')} |"
              for s in stores if isinstance(s, dict)]
    init = metadata.get("init_from") or {}
    lines += ["", f"- teacher (pseudo masks): {_teacher(metadata.get('teacher'))}",
              f"- supervision: {', '.join(sorted({str(s.get('supervision')) for s in stores})) or 'n/a'}",
              f"- backbone weights: {metadata.get('backbone_weights') or 'n/a'}",
              f"- backbone weights source: {metadata.get('backbone_weights_source') or 'n/a'}",
              f"- backbone weights SHA-256: {metadata.get('backbone_weights_sha256') or 'n/a'}",
              f"- started from: {init.get('uri', 'n/a')}" + (f" (SHA-256 {init['sha256']})" if init.get("sha256") else ""),
              f"- best epoch: {metadata.get('epoch', 'n/a')}, checkpoint {metadata.get('checkpoint') or 'n/a'}",
              "", "## Validation (best epoch)", ""]
    shown = {k: v for k, v in sorted((metrics or {}).items()) if k.startswith("val_")}
    lines += [f"- {k}: {_number(v)}" for k, v in shown.items()] or ["- no validation metrics"]
    lines += ["", EVAL_HEADING, "", *evaluation_section(evaluations)]
    return "\n".join(lines + ["", LIMITS_HEADING, "", LIMITS, ""])


def _package_copy(dst: Path) -> Path:
    """The bpiml package without caches, under `dst` (what `code_paths` carries into the model)."""
    package = Path(checkpoint.__file__).resolve().parents[1]
    shutil.copytree(package, dst / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst / package.name


def save(exported: str | Path, path: str | Path, card: str) -> Path:
    """Write the MLflow Model (module doc) of an exported student folder into `path` (absent or empty)."""
    found = checkpoint.find_exported(exported)
    if found is None:
        raise ValueError(f"{exported}: no exported student to wrap ({checkpoint.WEIGHTS_FILE} + "
                         f"{checkpoint.MODEL_CONFIG_FILE})")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / CARD_FILE).write_text(card)
        artifacts = {"weights": str(found / checkpoint.WEIGHTS_FILE), "config": str(found / checkpoint.MODEL_CONFIG_FILE),
                     "metadata": str(found / checkpoint.METADATA_FILE), "card": str(Path(tmp) / CARD_FILE)}
        mlflow.pyfunc.save_model(str(path), python_model=str(CODE_FILE), artifacts=artifacts,
                                 code_paths=[str(_package_copy(Path(tmp) / "code"))], signature=signature(),
                                 input_example=input_example(), pip_requirements=pip_requirements(),
                                 metadata={"bpiml_format": "exported-student-v1"})
    return Path(path)


def read_card(model_dir: str | Path) -> str:
    """The model card of a downloaded MLflow Model ('' when there is none, e.g. an older bare folder)."""
    found = checkpoint.find_exported(model_dir)
    card = found / CARD_FILE if found else None
    return card.read_text() if card and card.is_file() else ""

