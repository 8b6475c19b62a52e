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

import functools
import json
import logging
import math
import time
from typing import Any, ClassVar

import cv2
import numpy as np
import ray

from bpiml.data import degrade, imageio, metrics, naming, storage
from bpiml.evaluation.config import EvalConfig, inference_gpu_decision  # noqa: F401 - EvalConfig re-exported
from bpiml.evaluation.inference import check_model
from bpiml.evaluation.sink import clear_tables, finish_tables, table_sink
from bpiml.evaluation.step import ModelStep
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
from bpiml.runtime.batch import BatchJob, PartsSink, run_batch
from bpiml.runtime.counter import start_counter
from bpiml.runtime.raycluster import actor_pool_kwargs, init_ray
from bpiml.runtime.resources import GpuDecision, wait_for_resources

logger = logging.getLogger(__name__)

PART_ROWS = 1024  # per-image rows per part file, and per partial-statistics message

# --- the batch step -------------------------------------------------------------------------
EVAL_COLUMNS = ("set", "degradation", "id", "image", "mask", "manipulated", "score", "f1", "iou", "auc", "area",
                "pred_mask", "pred_probs", "error")


class Evaluator(ModelStep):
    """Ray Data batch step: rows {set, degradation, id, image, mask[, error]} -> per-image metric rows
    (`EVAL_COLUMNS`; `error` "" when scored)."""

    COLUMNS: ClassVar[tuple[str, ...]] = EVAL_COLUMNS
    EMPTY: ClassVar[dict[str, Any]] = {"manipulated": False, "score": math.nan, "f1": math.nan, "iou": math.nan,
                                       "auc": math.nan, "area": math.nan, "pred_mask": "", "pred_probs": ""}

    def __init__(self, model_uri: str, threshold: float = 0.5, out: str = "", save_masks: bool = False,
                 model: Any | None = None, tracking_uri: str = "", probs: str = "none", num_gpus: float = 0.0) -> None:
        super().__init__(model_uri, tracking_uri, model, num_gpus)
        self.threshold, self.out, self.save_masks = threshold, out, save_masks and bool(out)
        self.probs = probs if out else "none"

    def passed(self, batch: dict[str, np.ndarray], k: int) -> dict[str, Any]:
        return {key: str(batch[key][k]) for key in ("set", "degradation", "id", "image", "mask")}

    def load(self, batch: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray | None]:
        image = imageio.load_image(str(batch["image"][k]))[0]
        mask_uri = str(batch["mask"][k])
        gt = imageio.load_mask(mask_uri) if mask_uri else None
        return degrade.apply(image, degrade.parse(str(batch["degradation"][k]))), gt

    def finish(self, batch: dict[str, np.ndarray], k: int, loaded: tuple[np.ndarray, np.ndarray | None],
               prob: np.ndarray) -> dict[str, Any]:
        gt, clean = loaded[1], batch["degradation"][k] == degrade.CLEAN
        if gt is not None and gt.shape != prob.shape:  # resized inputs, or a mask of another size
            prob = cv2.resize(prob, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        row = dict(metrics.image_row(prob, gt, self.threshold), pred_mask="", pred_probs="")
        folder, name = naming.file_stem(str(batch["set"][k])), naming.file_stem(str(batch["id"][k]))
        if self.save_masks and clean:
            row["pred_mask"] = f"preds/{folder}/{name}.png"
            storage.write_bytes(storage.join(self.out, row["pred_mask"]), imageio.encode_mask_png(prob > self.threshold))
        if self.probs != "none" and clean:
            row["pred_probs"] = f"probs/{folder}/{name}.{self.probs}"
            storage.write_bytes(storage.join(self.out, row["pred_probs"]), imageio.encode_probs(prob, self.probs))
        return row


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
                  elapsed: float, decision: GpuDecision) -> tuple[dict[str, Any], dict[str, str]]:
    result = {"model": config.model, "threshold": config.threshold, "seconds": round(elapsed, 3),
              "images": counts["images"], "failed": counts["rejected"], **decision.record(),
              "table": [{k: json_safe(v) for k, v in r.items()} for r in table]}
    files = {
        "results.json": json.dumps(result, indent=2) + "\n",
        "results.csv": table_csv(table),
        "results.txt": format_table(table) + "\n",
    }
    for name, text in files.items():
        storage.write_bytes(storage.join(config.out, name), text.encode())
    return result, files


class EvalJob(BatchJob):
    """`run_evaluation` on the batch skeleton: every (set, degradation, image) through an `Evaluator` pool
    into `per_image/`, each block's partial statistics to a second counter; the table from their sums."""

    what, progress_keys, summary_file = "evaluate", ("images",), None  # the table is written as results.*

    def __init__(self, config: EvalConfig, eval_sets: list[EvalSet], degradations: list[str], tracking_uri: str,
                 decision: GpuDecision) -> None:
        super().__init__(config.out, config.max_reject_rate)
        self.config, self.eval_sets, self.degradations, self.tracking_uri = config, eval_sets, degradations, tracking_uri
        self.decision = decision
        self.stats_counter: Any = None

    def start(self, run_id: str, counter: Any) -> None:
        clear_tables(self.config.out, (PER_IMAGE_DIR,))
        self.stats_counter = start_counter()

    def total(self) -> int | None:
        listed = [len(s.listed) * len(self.degradations) if s.listed is not None else None for s in self.eval_sets]
        return None if None in listed else sum(listed)

    def pipeline(self, run_id: str, counter: Any) -> ray.data.Dataset:
        """Every set's items for every degradation, as one dataset (`--limit` applies per set), scored."""
        config = self.config
        datasets = [s.dataset(self.degradations, counter, config.limit) for s in self.eval_sets]
        items = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
        return items.map_batches(
            Evaluator,
            fn_constructor_kwargs={"model_uri": config.model, "threshold": config.threshold, "out": config.out,
                                   "save_masks": config.save_masks, "tracking_uri": self.tracking_uri,
                                   "probs": config.probs, "num_gpus": config.gpus_per_worker or 0.0},
            **actor_pool_kwargs(config.num_workers, config.cpus_per_worker, config.gpus_per_worker or 0.0,
                                config.batch_size))

    def sink(self, run_id: str, counter: Any) -> PartsSink:
        tally = functools.partial(block_sums, threshold=self.config.threshold)
        return table_sink(self.config.out, PER_IMAGE_DIR, "evaluate", run_id, counter, PART_ROWS,
                          [(self.stats_counter, tally)])

    def commit(self, run_id: str) -> None:
        finish_tables(self.config.out, (PER_IMAGE_DIR,), PART_ROWS)

    def summarize(self, counts: dict[Any, float], committed: Any, elapsed: float) -> dict[str, Any]:
        stats = collect(ray.get(self.stats_counter.get.remote()))
        _check_counts(self.eval_sets, stats, counts)
        names = [s.name for s in self.eval_sets]
        table = stats_table(stats, names, parse_groups(self.config.groups), self.degradations)
        totals = {k: int(counts.get(k, 0)) for k in ("images", "rejected")}
        result, files = write_outputs(self.config, totals, table, elapsed, self.decision)
        return {"result": result, "table": table, "files": files, "names": names, "stats": stats, "totals": totals}

    def rejected(self, summary: dict[str, Any]) -> tuple[int, int]:
        return summary["totals"]["rejected"], summary["totals"]["images"]


def run_evaluation(config: EvalConfig) -> dict[str, Any]:
    """Evaluate; returns {"table": rows, "out": folder, "mlflow_run_id": id or None, ...}.

    Fails (after writing its outputs) when more images than `max_reject_rate` could not be scored:
    averages over what is left would not describe the test set.
    """
    config.validate()
    if config.s3_endpoint:
        storage.set_s3_endpoint(config.s3_endpoint)  # before Ray starts: its workers get it through worker_env()
    decision = inference_gpu_decision(config.gpus_per_worker)
    logger.info("evaluation actors: %s", decision)
    config = config.replace(gpus_per_worker=decision.gpus_per_worker)
    degradations = [d.name for d in degrade.parse_list(config.degrade)]
    storage.check_writable(config.out)
    import_root = config.import_dir or storage.join(config.out, "inputs")
    eval_sets = [EvalSet.open(name, uri, config.split or None, import_root, config.limit)
                 for name, uri in parse_datasets(config.datasets).items()]
    tracking_uri = check_model(config.model, config.tracking_uri)  # fail before the cluster does any work
    config.save(storage.join(config.out, "config.json"))
    init_ray()
    wait_for_resources(config.cpus_per_worker * config.num_workers, decision.gpus_per_worker * config.num_workers,
                       config.resource_wait_s, "evaluate")
    start = time.perf_counter()
    done = run_batch(EvalJob(config, eval_sets, degradations, tracking_uri, decision))
    mlflow_run = log_to_mlflow(config, done["table"], done["files"], done["names"], done["stats"], str(decision))
    logger.info("evaluated %d predictions (%d failed) in %.1f s -> %s", done["totals"]["images"],
                done["totals"]["rejected"], time.perf_counter() - start, config.out)
    return {**done["result"], "table": done["table"], "out": config.out, "mlflow_run_id": mlflow_run}


def print_result(result: dict[str, Any]) -> None:
    print(format_table(result["table"]))
    print(f"\n{result['gpu_decision']}" if result.get("gpu_decision") else "")
    print(f"results: {storage.join(result['out'], 'results.json')}"
          + (f"  (MLflow run {result['mlflow_run_id']})" if result["mlflow_run_id"] else ""))
