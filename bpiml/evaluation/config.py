"""The configs of prediction and evaluation: `jobs/predict.py` (a store), `bpiml predict` (one image),
`jobs/evaluate.py` / `bpiml evaluate`, and their command lines.

This module imports no torch, Ray or MLflow, so `--help` and usage errors are fast: the functions
that run the work (`predict.run_predict`, `evaluate.run_evaluation`) are imported after parsing.

`--out` is an output folder and `--probs` a format (png | npy | none) everywhere: `bpiml predict`
writes one image's `masks/<name>.png`, `probs/<name>.<png|npy>` and `overlays/<name>.jpg` in the
same layout as `jobs/predict.py` writes a whole store's.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bpiml.config import (
    BaseConfig,
    check_choice,
    check_job_resources,
    check_range,
    cpus_field,
    field,
    gpus_field,
    reject_rate_field,
    require,
    resource_wait_field,
    s3_endpoint_field,
    workers_field,
)
from bpiml.data.manifest import SPLITS
from bpiml.runtime.jobcli import job_parser
from bpiml.runtime.resources import GpuDecision, decide_gpus

PROB_FORMATS = ("png", "npy", "none")  # as bpiml.data.imageio.PROB_FORMATS (tests/test_cli_vocabulary.py checks)
MODEL_HELP = "models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/<path>, or a checkpoint path/URI"
TRACKING_HELP = "MLflow tracking URI for models:/ and runs:/ (default: MLFLOW_TRACKING_URI, then the project sqlite)"
OUT_HELP = "output folder (local or s3://)"
PROBS_HELP = "format of the probability maps: png (8-bit), npy (float16) or none (not written)"


def inference_gpu_decision(asked: float | None) -> GpuDecision:
    """GPUs per prediction / evaluation actor: none by intent. The student (TinyViT-5M + MGFM at 224 px) infers
    a few images/s per CPU core (docs/performance.md): scale out with --num-workers; --gpus-per-worker 1 (or
    0.25: four actors per GPU) for large sets."""
    return decide_gpus(asked, 0, "the student's inference is CPU-sized work (more actors: --num-workers)")


@dataclass
class ImagePredictConfig(BaseConfig):
    """`bpiml predict`: one image -> <out>/masks/<name>.png, probs/<name>.<fmt>, overlays/<name>.jpg."""

    model: str = field("", help=MODEL_HELP)
    tracking_uri: str = field("", help=TRACKING_HELP)
    image: str = field("", help="the image: a path or s3:// URI (<name> in the outputs: its file name's stem, made collision-free "
                                         "as jobs/predict.py names a record id: photo-<hash>)")
    out: str = field("", help=f"{OUT_HELP}, laid out as jobs/predict.py's: masks/, probs/, overlays/")
    threshold: float = field(0.5, help="probability threshold for the mask")
    overlays: bool = field(True, help="also write overlays/<name>.jpg (the image with the mask tinted)")
    probs: str = field("png", help=PROBS_HELP, choices=PROB_FORMATS)
    s3_endpoint: str | None = s3_endpoint_field()

    def validate(self) -> None:
        require(self, "model", "image", "out")
        check_range("threshold", self.threshold, 0.0, 1.0)


@dataclass
class PredictConfig(BaseConfig):
    """`jobs/predict.py`: a store on Ray Data."""

    model: str = field("", help=MODEL_HELP)
    tracking_uri: str = field("", help=TRACKING_HELP)
    store: str = field("", help="input: a store, an IMDL-BenCo list .json, a COCO .json or a folder of images (local or s3://)")
    import_dir: str = field("", help="where an input that is not a store is imported once (default: <out>/inputs)")
    out: str = field("", help=f"{OUT_HELP}: masks/, probs/, overlays/, the tables predictions/ and rejects/")
    split: str | None = field(None, help="only records of this split; all when unset", choices=SPLITS)
    threshold: float = field(0.5, help="probability threshold for the written masks")
    overlays: bool = field(True, help="also write overlays/<name>.jpg")
    probs: str = field("png", help=PROBS_HELP, choices=PROB_FORMATS)
    batch_size: int = field(8, help="images per model call")
    num_workers: int = workers_field(1, "actors in the prediction pool (each loads the model once)")
    cpus_per_worker: float = cpus_field(1.0, "actor (fractional allowed, e.g. 0.5)")
    gpus_per_worker: float | None = gpus_field("actor")
    limit: int = field(0, help="predict only the first N records (0 = all); for smoke tests")
    max_reject_rate: float = reject_rate_field(0.05)
    resource_wait_s: float = resource_wait_field()
    s3_endpoint: str | None = s3_endpoint_field()

    def validate(self) -> None:
        require(self, "model", "store", "out")
        check_range("threshold", self.threshold, 0.0, 1.0)
        check_range("batch_size", self.batch_size, 1)
        check_job_resources(self)
        check_range("limit", self.limit, 0)
        check_choice("probs", self.probs, PROB_FORMATS)
        if self.split is not None:
            check_choice("split", self.split, SPLITS)


@dataclass
class EvalConfig(BaseConfig):
    """`jobs/evaluate.py` and `bpiml evaluate`: a model against named test sets, clean and degraded."""

    model: str = field("", help=MODEL_HELP)
    tracking_uri: str = field("", help=TRACKING_HELP)
    datasets: list[str] = field([], help="test sets as name=URI: a store, an IMDL-BenCo list .json, a COCO .json or a "
                                         "folder of images", repeat="--dataset")
    import_dir: str = field("", help="where a COCO file or folder is imported once (default: <out>/inputs)")
    split: str | None = field("test", help="split used for store test sets (\"\": all records)",
                              choices=(*SPLITS, ""))
    groups: list[str] = field([], help="name=set1,set2 groups whose averages are reported", repeat="--group")
    degrade: list[str] = field([], help="degradations re-evaluated on every set, e.g. jpeg:90,jpeg:50,resize:0.5",
                               repeat="--degradation")
    out: str = field("", help=f"{OUT_HELP}: results.json/csv/txt, per_image/, rejects/, preds/, probs/")
    threshold: float = field(0.5, help="probability threshold for pixel and image decisions")
    limit: int = field(0, help="evaluate only N images of each set (0 = all): the first N of a list; "
                                  "of a sharded store, whichever N its read tasks deliver first")
    save_masks: bool = field(True, help="write the clean predicted masks to preds/<set>/<name>.png (for reports)")
    probs: str = field("png", help=f"{PROBS_HELP}; the clean pass's, in probs/<set>/<name>.<png|npy>",
                       choices=PROB_FORMATS)
    batch_size: int = field(8, help="images per model call")
    num_workers: int = workers_field(1, "actors in the evaluation pool (each loads the model once)")
    cpus_per_worker: float = cpus_field(1.0, "actor (fractional allowed)")
    gpus_per_worker: float | None = gpus_field("actor")
    mlflow_run_id: str | None = field(None, help="log the table into this MLflow run")
    experiment: str | None = field(None, help="MLflow experiment for a new evaluation run")
    mlflow: bool = field(True, help="log to MLflow when a tracking URI (flag or env), run id or experiment is given")
    max_reject_rate: float = reject_rate_field(0.05)
    resource_wait_s: float = resource_wait_field()
    s3_endpoint: str | None = s3_endpoint_field()

    def validate(self) -> None:
        from bpiml.data import degrade  # noqa: PLC0415 - numpy/OpenCV: after parsing
        from bpiml.evaluation.testsets import parse_datasets, parse_groups  # noqa: PLC0415 - imports Ray

        require(self, "model", "datasets", "out")
        if self.split not in (None, "", *SPLITS):
            check_choice("split", self.split, (*SPLITS, ""))
        check_range("threshold", self.threshold, 0.0, 1.0)
        check_range("limit", self.limit, 0)
        check_range("batch_size", self.batch_size, 1)
        check_job_resources(self)
        check_choice("probs", self.probs, PROB_FORMATS)
        names = list(parse_datasets(self.datasets))
        groups = parse_groups(self.groups)
        for group, members in groups.items():
            missing = [m for m in members if m not in names]
            if missing:
                raise ValueError(f"group {group!r} names unknown test set(s) {missing}; known: {names}")
        degrade.parse_list(self.degrade)


def predict_image_parser() -> argparse.ArgumentParser:
    return job_parser("bpiml predict", "Predict a manipulation mask for one image (the same outputs as "
                      "jobs/predict.py writes for each image of a store).", ImagePredictConfig)


def evaluate_parser(prog: str = "bpiml evaluate", doc: str | None = None,
                    smoke_test: str | None = None) -> argparse.ArgumentParser:
    """EvalConfig flags; the list flags repeat and accumulate (`--dataset a=x --dataset b=y`)."""
    return job_parser(prog, doc or "Evaluate a model against named test sets, clean and degraded, on Ray Data.",
                      EvalConfig, smoke_test)
