"""Evaluation job: a model against named test sets, clean and degraded, on Ray Data.

Test sets are given as `name=URI` (or just `URI`, named after its file/folder):
- an IMDL-BenCo list JSON `[[image, mask], [image, "Negative"], ...]`; relative paths are resolved
  against the JSON's folder (and may not climb above it), absolute local paths / s3:// URIs are kept;
- a store (root or `manifest.jsonl`): records of `split` with a GT mask are manipulated, records
  without boxes and mask are authentic, records with boxes but no mask are skipped (counted).

One actor pool (model loaded once per actor) computes per-image metrics for every
(set, degradation, image); rows come back to the driver, which averages them with
`bpiml.metrics.summarize` (pixel metrics over manipulated images, image-level AUC and balanced
accuracy where authentic images exist), then adds the mean over sets (`average`, each set once),
the mean pooled over images (`pooled`, each image once) and the declared groups.
Outputs in `out`: results.json/.csv/.txt (the table), per_image.jsonl/.csv (every metric of every
image), config.json, rejects, and for the clean pass preds/<set>/<image>.png (thresholded) and
probs/<set>/<image>.png|npy (probabilities), named by `naming.file_stem` of the image's id.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import ray
import torch

from bpiml.config import BaseConfig, check_choice, check_range, field
from bpiml.data import degrade, imageio, inputs, naming, rejects, storage
from bpiml.evaluation import metrics
from bpiml.evaluation.inference import check_model, load_model, predict_batch
from bpiml.evaluation.tables import (
    aggregate,
    format_table,
    json_safe,
    log_to_mlflow,
    rows_csv,
    table_csv,
)
from bpiml.evaluation.testsets import load_test_set, parse_datasets, parse_groups
from bpiml.runtime.jobcli import job_parser, setup_console
from bpiml.runtime.raycluster import actor_pool_kwargs, check_gpus, init_ray

logger = logging.getLogger(__name__)



@dataclass
class EvalConfig(BaseConfig):
    model: str = field("", help="models:/<name>@<alias>, runs:/<id>/<path>, or a checkpoint path/URI")
    tracking_uri: str = field("", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, then the project sqlite)")
    datasets: list[str] = field([], help="test sets as name=URI: a store, an IMDL-BenCo list .json, a COCO .json or a "
                                         "folder of images", repeat="--dataset")
    import_dir: str = field("", help="where a COCO file or folder is imported once (default: <out>/inputs)")
    split: str | None = field("test", help="split used for store test sets (\"\" or unset: all records)")
    groups: list[str] = field([], help="name=set1,set2 groups whose averages are reported", repeat="--group")
    degrade: list[str] = field([], help="degradations re-evaluated on every set, e.g. jpeg:90,jpeg:50,resize:0.5",
                               repeat="--degradation")
    out: str = field("", help="output folder (local or s3://) for results.json/csv and per-image rows")
    threshold: float = field(0.5, help="probability threshold for pixel and image decisions")
    limit: int = field(0, help="evaluate only the first N images of each set (0 = all)")
    save_masks: bool = field(True, help="write the clean predicted masks to preds/<set>/<id>.png (for reports)")
    probs: str = field("png", help="also write the clean probability maps to probs/<set>/<id>.<png|npy>: "
                                   "png (8-bit), npy (float16) or none")
    batch_size: int = field(8, help="images per model call")
    num_workers: int = field(1, help="actors in the evaluation pool (each loads the model once)")
    num_cpus_per_worker: float = field(1.0, help="CPUs per actor (fractional allowed)")
    num_gpus_per_worker: float = field(0.0, help="GPUs per actor; 0 runs on CPU")
    mlflow_run_id: str | None = field(None, help="log the table into this MLflow run")
    experiment: str | None = field(None, help="MLflow experiment for a new evaluation run")
    mlflow: bool = field(True, help="log to MLflow when a tracking URI (flag or env), run id or experiment is given")
    max_reject_rate: float = field(0.05, help="fail (after writing everything) when more images than this are rejected")

    def validate(self) -> None:
        if not self.model:
            raise ValueError("EvalConfig.model is required")
        if not self.datasets:
            raise ValueError("EvalConfig.datasets: give at least one test set as name=URI")
        if not self.out:
            raise ValueError("EvalConfig.out is required")
        if self.split not in (None, "", "train", "val", "test"):
            raise ValueError(f"split must be train, val, test or empty (all records), got {self.split!r}")
        check_range("threshold", self.threshold, 0.0, 1.0)
        check_range("limit", self.limit, 0)
        check_range("batch_size", self.batch_size, 1)
        check_range("num_workers", self.num_workers, 1)
        check_range("num_cpus_per_worker", self.num_cpus_per_worker, 0.01)
        check_range("num_gpus_per_worker", self.num_gpus_per_worker, 0.0)
        check_range("max_reject_rate", self.max_reject_rate, 0.0, 1.0)
        check_choice("probs", self.probs, imageio.PROB_FORMATS)
        names = list(parse_datasets(self.datasets))
        groups = parse_groups(self.groups)
        for group, members in groups.items():
            missing = [m for m in members if m not in names]
            if missing:
                raise ValueError(f"group {group!r} names unknown test set(s) {missing}; known: {names}")
        degrade.parse_list(self.degrade)


# --- the batch step -------------------------------------------------------------------------
EVAL_COLUMNS = ("set", "degradation", "id", "image", "mask", "manipulated", "score", "f1", "iou", "auc", "area",
                "pred_mask", "pred_probs", "error")


class Evaluator:
    """Ray Data batch step: rows {set, degradation, id, image, mask} -> per-image metric rows."""

    def __init__(self, model_uri: str, threshold: float = 0.5, out: str = "", save_masks: bool = False,
                 model: Any | None = None, tracking_uri: str = "", probs: str = "none") -> None:
        self.model = model if model is not None else load_model(model_uri, tracking_uri)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.threshold, self.out, self.save_masks = threshold, out, save_masks and bool(out)
        self.probs = probs if out else "none"

    @staticmethod
    def _load(image_uri: str, mask_uri: str, degradation: str) -> tuple[np.ndarray, np.ndarray | None]:
        image = imageio.load_image(image_uri)[0]
        gt = imageio.load_mask(mask_uri) if mask_uri else None
        return degrade.apply(image, degrade.parse(degradation)), gt

    def _score(self, prob: np.ndarray, gt: np.ndarray | None, set_name: str, rid: str, clean: bool) -> dict[str, Any]:
        if gt is not None and gt.shape != prob.shape:  # resized inputs, or a mask of another size
            prob = cv2.resize(prob, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        row = dict(metrics.image_row(prob, gt, self.threshold), pred_mask="", pred_probs="")
        folder, name = naming.file_stem(set_name), naming.file_stem(rid)
        if self.save_masks and clean:
            row["pred_mask"] = f"preds/{folder}/{name}.png"
            storage.write_bytes(storage.join(self.out, row["pred_mask"]), imageio.encode_mask_png(prob > self.threshold))
        if self.probs != "none" and clean:
            row["pred_probs"] = f"probs/{folder}/{name}.{self.probs}"
            storage.write_bytes(storage.join(self.out, row["pred_probs"]), imageio.encode_probs(prob, self.probs))
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        loaded: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        errors = [""] * n
        for k in range(n):
            try:
                loaded[k] = self._load(str(batch["image"][k]), str(batch["mask"][k]), str(batch["degradation"][k]))
            except Exception as err:  # noqa: BLE001 - a bad file becomes a reject row, not a failed job
                errors[k] = f"{type(err).__name__}: {err}"
        probs = dict(zip(loaded, predict_batch(self.model, [image for image, _ in loaded.values()], self.device)))
        out: dict[str, list[Any]] = {k: [] for k in EVAL_COLUMNS}
        empty = {"manipulated": False, "score": math.nan, "f1": math.nan, "iou": math.nan, "auc": math.nan,
                 "area": math.nan, "pred_mask": "", "pred_probs": ""}
        for k in range(n):
            row = dict(empty)
            if k in probs:
                try:
                    row = self._score(probs[k], loaded[k][1], str(batch["set"][k]), str(batch["id"][k]),
                                      batch["degradation"][k] == degrade.CLEAN)
                except Exception as err:  # noqa: BLE001 - e.g. a write that failed
                    errors[k] = f"{type(err).__name__}: {err}"
            for key in ("set", "degradation", "id", "image", "mask"):
                out[key].append(str(batch[key][k]))
            for key in ("manipulated", "score", "f1", "iou", "auc", "area", "pred_mask", "pred_probs"):
                out[key].append(row[key])
            out["error"].append(errors[k])
        return {k: np.asarray(v) for k, v in out.items()}


def collect_items(config: EvalConfig, sets: dict[str, str], degradations: list[str]) -> list[dict[str, str]]:
    items: list[dict[str, str]] = []
    for name, uri in sets.items():
        split = config.split
        if not uri.endswith(".json") or inputs.detect(uri) == "coco":  # IMDL lists and stores are read as they are
            uri, kind = inputs.as_store(uri, config.import_dir or storage.join(config.out, "inputs"))
            split = split if kind == "store" else None  # an imported folder or COCO file is the test set
        listed = load_test_set(uri, split)
        if config.limit:
            listed = listed[: config.limit]
        if not listed:
            raise ValueError(f"test set {name!r} ({uri}) has no images (split={config.split!r})")
        logger.info("test set %s: %d images (%d authentic) from %s", name, len(listed),
                    sum(1 for it in listed if not it["mask"]), uri)
        items += [{"set": name, "degradation": d, **it} for d in degradations for it in listed]
    return items


def score_items(config: EvalConfig, items: list[dict[str, str]], tracking_uri: str) -> list[dict[str, Any]]:
    """Per-image rows (metrics as floats, nan where undefined) from an actor pool over `items`."""
    ds = ray.data.from_items(items).map_batches(
        Evaluator,
        fn_constructor_kwargs={"model_uri": config.model, "threshold": config.threshold, "out": config.out,
                               "save_masks": config.save_masks, "tracking_uri": tracking_uri, "probs": config.probs},
        **actor_pool_kwargs(config.num_workers, config.num_cpus_per_worker, config.num_gpus_per_worker, config.batch_size),
    )
    rows = [{k: json_safe(v) for k, v in r.items()} for r in ds.take_all()]
    for r in rows:  # back to nan for averaging
        for k in ("score", "f1", "iou", "auc", "area"):
            r[k] = math.nan if r[k] is None else float(r[k])
        r["manipulated"] = bool(r["manipulated"])
    return rows


def write_outputs(config: EvalConfig, rows: list[dict[str, Any]], table: list[dict[str, Any]], elapsed: float,
                  failed: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    result = {"model": config.model, "threshold": config.threshold, "seconds": round(elapsed, 3),
              "images": len(rows), "failed": len(failed), "table": [{k: json_safe(v) for k, v in r.items()} for r in table]}
    files = {
        "results.json": json.dumps(result, indent=2) + "\n",
        "results.csv": table_csv(table),
        "results.txt": format_table(table) + "\n",
        "per_image.jsonl": "".join(json.dumps({k: json_safe(v) for k, v in r.items()}) + "\n" for r in rows),
        "per_image.csv": rows_csv(rows, EVAL_COLUMNS),
    }
    for name, text in files.items():
        storage.write_bytes(storage.join(config.out, name), text.encode())
    rejects.write_rejects(config.out, [rejects.Reject(r["id"], r["image"], "evaluate", r["error"]) for r in failed])
    return result, files


def run_evaluation(config: EvalConfig) -> dict[str, Any]:
    """Evaluate; returns {"table": rows, "out": folder, "mlflow_run_id": id or None, ...}.

    Fails (after writing its outputs) when more images than `max_reject_rate` could not be scored:
    averages over what is left would not describe the test set.
    """
    config.validate()
    sets = parse_datasets(config.datasets)
    degradations = [d.name for d in degrade.parse_list(config.degrade)]
    storage.check_writable(config.out)
    items = collect_items(config, sets, degradations)
    tracking_uri = check_model(config.model, config.tracking_uri)  # fail before the cluster does any work
    config.save(storage.join(config.out, "config.json"))
    init_ray()
    check_gpus(config.num_gpus_per_worker, config.num_workers, "evaluate")
    start = time.perf_counter()
    rows = sorted(score_items(config, items, tracking_uri),
                  key=lambda r: (r["set"], degradations.index(r["degradation"]), r["id"]))
    failed = [r for r in rows if r["error"]]
    for r in failed[:10]:
        logger.warning("failed %s (%s, %s): %s", r["id"], r["set"], r["degradation"], r["error"])
    table = aggregate(rows, list(sets), parse_groups(config.groups), degradations, config.threshold)
    result, files = write_outputs(config, rows, table, time.perf_counter() - start, failed)
    rejects.check_reject_rate(len(failed), len(rows), config.max_reject_rate, "evaluate",
                              storage.join(config.out, rejects.REJECTS_FILE))
    run_id = log_to_mlflow(config, table, {k: v for k, v in files.items() if k != "per_image.jsonl"}, list(sets))
    logger.info("evaluated %d predictions (%d failed) in %.1f s -> %s", len(rows), len(failed),
                time.perf_counter() - start, config.out)
    return {**result, "table": table, "out": config.out, "mlflow_run_id": run_id}


def build_parser(prog: str = "bpiml evaluate", doc: str | None = None,
                 smoke_test: str | None = None) -> argparse.ArgumentParser:
    """EvalConfig flags; the list flags repeat and accumulate (`--dataset a=x --dataset b=y`)."""
    return job_parser(prog, doc or __doc__.split("\n\n")[0], EvalConfig, smoke_test)


def print_result(result: dict[str, Any]) -> None:
    print(format_table(result["table"]))
    print(f"\nresults: {storage.join(result['out'], 'results.json')}"
          + (f"  (MLflow run {result['mlflow_run_id']})" if result["mlflow_run_id"] else ""))


def cli_evaluate(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_console(args)
    print_result(run_evaluation(EvalConfig.from_args(args)))
    return 0
