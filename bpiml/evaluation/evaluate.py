"""Evaluation job: a model against named test sets, clean and degraded, on Ray Data, streamed end to end.

Test sets are given as `name=URI` (or just `URI`, named after its file/folder): an IMDL-BenCo list
JSON, a store (root, `manifest.jsonl` or `manifest/*.jsonl` shards), a COCO file or a folder of
images (imported into a store once); see `testsets` for which records are scored.

Nothing proportional to the test sets is held on the driver: a store's manifest lines become items
in read tasks (an IMDL-BenCo list, one small JSON document, is read on the driver), one actor pool
(model loaded once per actor) scores every (set, degradation, image), and a Ray Data sink writes the
per-image rows as parts and sends each block's partial statistics (`streaming_metrics`) to a counter
actor. The driver merges them (2 x 10,000 histogram bins and a few sums per set and degradation)
into the table: per set, the mean over sets (`average`, each set once), the mean pooled over images
(`pooled`, each image once) and the declared groups, with the values `metrics.summarize` gives over
the rows (image AUC from score histograms: within 1e-3 of the exact one, or a warning says so).

Outputs in `out`: results.json/.csv/.txt (the table), `per_image/` (every metric of every scored
image, JSONL shards: `tables.read_per_image`), `rejects/` (images that could not be scored),
config.json, and for the clean pass preds/<set>/<image>.png (thresholded) and
probs/<set>/<image>.png|npy (probabilities), named by `naming.file_stem` of the image's id.
A rerun into the same `out` replaces the tables.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import ray
import torch

from bpiml.config import BaseConfig, check_choice, check_range, field
from bpiml.data import degrade, imageio, naming, parts, rejects, storage
from bpiml.data.retry import StorageUnavailable
from bpiml.evaluation import metrics
from bpiml.evaluation.inference import check_model, load_model, predict_batch
from bpiml.evaluation.sink import (
    REJECTS_DIR,
    WRITE_CPUS,
    TableSink,
    clear_tables,
    finish_tables,
)
from bpiml.evaluation.streaming_metrics import Stats, block_sums, collect
from bpiml.evaluation.tables import (
    PER_IMAGE_DIR,
    format_table,
    json_safe,
    log_to_mlflow,
    stats_table,
    table_csv,
)
from bpiml.evaluation.testsets import EvalSet, parse_datasets, parse_groups
from bpiml.runtime import progress
from bpiml.runtime.counter import start_counter
from bpiml.runtime.jobcli import job_parser, setup_console
from bpiml.runtime.raycluster import actor_pool_kwargs, check_gpus, init_ray

logger = logging.getLogger(__name__)

PART_ROWS = 1024  # per-image rows per part file, and per partial-statistics message

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
    out: str = field("", help="output folder (local or s3://) for results.json/csv/txt, per_image/ and rejects/")
    threshold: float = field(0.5, help="probability threshold for pixel and image decisions")
    limit: int = field(0, help="evaluate only N images of each set (0 = all): the first N of a list; "
                                  "of a sharded store, whichever N its read tasks deliver first")
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
    """Ray Data batch step: rows {set, degradation, id, image, mask[, error]} -> per-image metric rows
    (`EVAL_COLUMNS`; `error` "" when scored)."""

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
        errors = [str(e) for e in batch["error"]] if "error" in batch else [""] * n
        for k in range(n):
            if errors[k]:  # a manifest line that is not a record: passed through as a reject
                continue
            try:
                loaded[k] = self._load(str(batch["image"][k]), str(batch["mask"][k]), str(batch["degradation"][k]))
            except StorageUnavailable:
                raise  # an outage past the retry budget fails the job; it is no bad image
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
                except StorageUnavailable:
                    raise
                except Exception as err:  # noqa: BLE001 - e.g. a write that failed
                    errors[k] = f"{type(err).__name__}: {err}"
            for key in ("set", "degradation", "id", "image", "mask"):
                out[key].append(str(batch[key][k]))
            for key in ("manipulated", "score", "f1", "iou", "auc", "area", "pred_mask", "pred_probs"):
                out[key].append(row[key])
            out["error"].append(errors[k])
        return {k: np.asarray(v) for k, v in out.items()}


def _items(config: EvalConfig, eval_sets: list[EvalSet], degradations: list[str], counter: Any) -> ray.data.Dataset:
    """Every set's items for every degradation, as one dataset (`--limit` applies per set)."""
    datasets = [s.dataset(degradations, counter, config.limit) for s in eval_sets]
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def score_items(config: EvalConfig, items: ray.data.Dataset, tracking_uri: str, run_id: str, counter: Any,
                stats: Any) -> None:
    """Per-image rows from an actor pool over `items`, written as parts of `per_image/` and `rejects/`;
    their partial statistics (`streaming_metrics.block_sums`) go to the `stats` counter."""
    scored = items.map_batches(
        Evaluator,
        fn_constructor_kwargs={"model_uri": config.model, "threshold": config.threshold, "out": config.out,
                               "save_masks": config.save_masks, "tracking_uri": tracking_uri, "probs": config.probs},
        **actor_pool_kwargs(config.num_workers, config.num_cpus_per_worker, config.num_gpus_per_worker, config.batch_size),
    )
    tally = functools.partial(block_sums, threshold=config.threshold)
    scored.write_datasink(TableSink(config.out, PER_IMAGE_DIR, "evaluate", run_id, counter, PART_ROWS, [(stats, tally)]),
                          ray_remote_args={"num_cpus": WRITE_CPUS})


def _check_counts(eval_sets: list[EvalSet], stats: dict[tuple[str, str], Stats], counts: dict[Any, float]) -> None:
    """A set that yielded no image is an error; skipped records and loose AUC bins are reported."""
    for s in eval_sets:
        got = stats.get((s.name, degrade.CLEAN)) or Stats()
        if not got.get("images") + got.get("failed"):
            raise ValueError(f"test set {s.name!r} ({s.uri}) has no images (split={s.split!r})")
        if counts.get(f"skipped/{s.name}"):
            logger.warning("%s: %d record(s) with boxes but no GT mask skipped", s.uri, counts[f"skipped/{s.name}"])
    for (name, deg), got in stats.items():
        if got.tie_bound() > 1e-3:
            logger.warning("image AUC of %s (%s) is within %.4f of the exact value (scores share histogram bins)",
                           name, deg, got.tie_bound())


def write_outputs(config: EvalConfig, counts: dict[str, int], table: list[dict[str, Any]],
                  elapsed: float) -> tuple[dict[str, Any], dict[str, str]]:
    result = {"model": config.model, "threshold": config.threshold, "seconds": round(elapsed, 3),
              "images": counts["images"], "failed": counts["rejected"],
              "table": [{k: json_safe(v) for k, v in r.items()} for r in table]}
    files = {
        "results.json": json.dumps(result, indent=2) + "\n",
        "results.csv": table_csv(table),
        "results.txt": format_table(table) + "\n",
    }
    for name, text in files.items():
        storage.write_bytes(storage.join(config.out, name), text.encode())
    return result, files


def run_evaluation(config: EvalConfig) -> dict[str, Any]:
    """Evaluate; returns {"table": rows, "out": folder, "mlflow_run_id": id or None, ...}.

    Fails (after writing its outputs) when more images than `max_reject_rate` could not be scored:
    averages over what is left would not describe the test set.
    """
    config.validate()
    degradations = [d.name for d in degrade.parse_list(config.degrade)]
    storage.check_writable(config.out)
    import_root = config.import_dir or storage.join(config.out, "inputs")
    eval_sets = [EvalSet.open(name, uri, config.split or None, import_root, config.limit)
                 for name, uri in parse_datasets(config.datasets).items()]
    tracking_uri = check_model(config.model, config.tracking_uri)  # fail before the cluster does any work
    config.save(storage.join(config.out, "config.json"))
    init_ray()
    check_gpus(config.num_gpus_per_worker, config.num_workers, "evaluate")
    clear_tables(config.out, (PER_IMAGE_DIR,))
    run_id = parts.new_run_id(time.strftime("%Y%m%d_%H%M%S"), uuid.uuid4().hex[:8])
    counter, stats_counter = start_counter(), start_counter()
    start = time.perf_counter()
    listed = [len(s.listed) * len(degradations) if s.listed is not None else None for s in eval_sets]
    with progress.report(counter, "evaluate", ("images",), None if None in listed else sum(listed)):
        score_items(config, _items(config, eval_sets, degradations, counter), tracking_uri, run_id, counter,
                    stats_counter)
    finish_tables(config.out, (PER_IMAGE_DIR,), PART_ROWS)
    counts = ray.get(counter.get.remote())
    stats = collect(ray.get(stats_counter.get.remote()))
    _check_counts(eval_sets, stats, counts)
    names = [s.name for s in eval_sets]
    table = stats_table(stats, names, parse_groups(config.groups), degradations)
    totals = {k: int(counts.get(k, 0)) for k in ("images", "rejected")}
    result, files = write_outputs(config, totals, table, time.perf_counter() - start)
    rejects.check_reject_rate(totals["rejected"], totals["images"], config.max_reject_rate, "evaluate",
                              storage.join(config.out, REJECTS_DIR))
    mlflow_run = log_to_mlflow(config, table, files, names, stats)
    logger.info("evaluated %d predictions (%d failed) in %.1f s -> %s", totals["images"], totals["rejected"],
                time.perf_counter() - start, config.out)
    return {**result, "table": table, "out": config.out, "mlflow_run_id": mlflow_run}


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
