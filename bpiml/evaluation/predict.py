"""Prediction: one image from the command line (`bpiml predict`), or a whole store on Ray Data.

`run_predict` streams a store's manifest (one file or shards, local or s3://) through an actor
pool (the model loaded once per actor) and writes

    <out>/masks/<name>.png        0/255 mask at the image's size (<name>: `bpiml.data.naming.file_stem`)
    <out>/probs/<name>.png|npy    the probability map: 8-bit PNG (p * 255) or float16 .npy (`--probs`)
    <out>/overlays/<name>.jpg     the image with the mask tinted (optional)
    <out>/predictions/            the table id, image, pred_mask, pred_probs, overlay, height, width, score, mask_area,
                                  as JSONL shards (`bpiml.data.parts`; read it with `read_predictions`)
    <out>/rejects/                lines and images that could not be read or written (`bpiml.data.rejects`)
    <out>/summary.json, config.json

Nothing of the store passes through the driver: lines are parsed in read tasks, rows are written as
part files by a Ray Data sink as they finish and merged into shards at the end, counts come from a
counter actor. A rerun into the same `--out` replaces the previous tables.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import ray

from bpiml.data import imageio, inputs, manifest, naming, parts, storage
from bpiml.data.visual import overlay
from bpiml.evaluation.config import (  # noqa: F401 - the configs re-exported
    ImagePredictConfig,
    PredictConfig,
    inference_gpu_decision,
)
from bpiml.evaluation.inference import check_model, load_model, predict_probs
from bpiml.evaluation.sink import clear_tables, finish_tables, table_sink
from bpiml.evaluation.step import ModelStep
from bpiml.evaluation.testsets import manifest_items
from bpiml.runtime import progress
from bpiml.runtime.batch import BatchJob, PartsSink, run_batch
from bpiml.runtime.datasets import READ_CPUS, read_lines
from bpiml.runtime.raycluster import actor_pool_kwargs, init_ray
from bpiml.runtime.resources import GpuDecision, wait_for_resources

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("id", "image", "pred_mask", "pred_probs", "overlay", "height", "width", "score", "mask_area", "error")
PREDICTIONS_DIR = "predictions"


# --- one image -------------------------------------------------------------------------------
def predict_image(config: ImagePredictConfig) -> dict[str, Any]:
    """`bpiml predict`: one image -> <out>/masks/<name>.png, probs/<name>.<png|npy>, overlays/<name>.jpg
    (the layout of `run_predict`, <name> the image file's stem); returns what it wrote, with score and area."""
    config.validate()
    if config.s3_endpoint:
        storage.set_s3_endpoint(config.s3_endpoint)
    image, notes = imageio.load_image(config.image)
    for note in notes or []:
        logger.info("%s: %s", config.image, note)
    model = load_model(config.model, config.tracking_uri)
    start = time.perf_counter()
    probs = predict_probs(model, image)
    mask = probs > config.threshold
    logger.info("predicted %dx%d in %.3f s: score %.3f, mask area %.2f%%", image.shape[1], image.shape[0],
                time.perf_counter() - start, float(probs.max()), 100.0 * float(mask.mean()))
    name = naming.file_stem(posixpath.splitext(posixpath.basename(config.image.rstrip("/")))[0])
    written = {"mask": storage.join(config.out, f"masks/{name}.png")}
    storage.write_bytes(written["mask"], imageio.encode_mask_png(mask))
    if config.probs != "none":
        written["probs"] = storage.join(config.out, f"probs/{name}.{config.probs}")
        storage.write_bytes(written["probs"], imageio.encode_probs(probs, config.probs))
    if config.overlays:
        written["overlay"] = storage.join(config.out, f"overlays/{name}.jpg")
        storage.write_bytes(written["overlay"], imageio.encode_image(overlay(image, mask), "jpg", 90))
    return {"image": config.image, **written, "score": round(float(probs.max()), 6),
            "mask_area": round(float(mask.mean()), 6)}


# --- a store on Ray Data -----------------------------------------------------------------------
class Predictor(ModelStep):
    """Ray Data batch step: model loaded once per actor; one batch of image URIs -> written masks."""

    COLUMNS: ClassVar[tuple[str, ...]] = PREDICTION_COLUMNS
    EMPTY: ClassVar[dict[str, Any]] = {"pred_mask": "", "pred_probs": "", "overlay": "", "height": 0, "width": 0, "score": float("nan"),
             "mask_area": float("nan")}

    def __init__(self, model_uri: str, out: str, threshold: float = 0.5, overlays: bool = True,
                 model: Any | None = None, tracking_uri: str = "", probs: str = "none", num_gpus: float = 0.0) -> None:
        super().__init__(model_uri, tracking_uri, model, num_gpus)
        self.out, self.threshold, self.overlays, self.probs = out, threshold, overlays, probs

    def load(self, batch: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, None]:
        uri = str(batch["image"][k])
        return imageio.decode_image(storage.read_bytes(uri), uri)[0], None

    def finish(self, batch: dict[str, np.ndarray], k: int, loaded: tuple[np.ndarray, None],
               prob: np.ndarray) -> dict[str, Any]:
        image, mask = loaded[0], prob > self.threshold
        name = naming.file_stem(str(batch["id"][k]))
        row = {"pred_mask": f"masks/{name}.png", "pred_probs": "", "overlay": "", "height": prob.shape[0],
               "width": prob.shape[1], "score": float(prob.max()), "mask_area": float(mask.mean())}
        storage.write_bytes(storage.join(self.out, row["pred_mask"]), imageio.encode_mask_png(mask))
        if self.probs != "none":
            row["pred_probs"] = f"probs/{name}.{self.probs}"
            storage.write_bytes(storage.join(self.out, row["pred_probs"]), imageio.encode_probs(prob, self.probs))
        if self.overlays:
            row["overlay"] = f"overlays/{name}.jpg"
            storage.write_bytes(storage.join(self.out, row["overlay"]),
                                imageio.encode_image(overlay(image, mask), "jpg", 90))
        return row


def read_predictions(out: str) -> Iterator[dict[str, Any]]:
    """The rows of a prediction output's table (in no particular order)."""
    return parts.iter_table(storage.join(out, PREDICTIONS_DIR))


class PredictJob(BatchJob):
    """`run_predict` on the batch skeleton: the store's items through a `Predictor` pool into `predictions/`."""

    what, progress_keys = "predict", ("images",)

    def __init__(self, config: PredictConfig, files: list[str], tracking_uri: str, decision: GpuDecision) -> None:
        super().__init__(config.out, config.max_reject_rate)
        self.config, self.files, self.tracking_uri, self.decision = config, files, tracking_uri, decision

    def start(self, run_id: str, counter: Any) -> None:
        clear_tables(self.config.out, (PREDICTIONS_DIR,))

    def total(self) -> int | None:
        total = None if self.config.split else progress.count_records(self.files)  # a split's size: known at the end
        return min(total, self.config.limit or total) if total else None

    def pipeline(self, run_id: str, counter: Any) -> ray.data.Dataset:
        config = self.config
        items = read_lines(self.files).map_batches(manifest_items, fn_kwargs={"store": config.store, "split": config.split},
                                                   batch_format="numpy", num_cpus=READ_CPUS)
        if config.limit:
            items = items.limit(config.limit)
        return items.map_batches(
            Predictor,
            fn_constructor_kwargs={"model_uri": config.model, "out": config.out, "threshold": config.threshold,
                                   "overlays": config.overlays, "tracking_uri": self.tracking_uri, "probs": config.probs,
                                   "num_gpus": config.gpus_per_worker or 0.0},
            **actor_pool_kwargs(config.num_workers, config.cpus_per_worker, config.gpus_per_worker or 0.0,
                                config.batch_size))

    def sink(self, run_id: str, counter: Any) -> PartsSink:
        return table_sink(self.config.out, PREDICTIONS_DIR, "predict", run_id, counter, self.config.batch_size * 4)

    def commit(self, run_id: str) -> None:
        finish_tables(self.config.out, (PREDICTIONS_DIR,), self.config.batch_size * 4)

    def summarize(self, counts: dict[Any, float], committed: Any, elapsed: float) -> dict[str, Any]:
        images, ok, bad = (int(counts.get(k, 0)) for k in ("images", "written", "rejected"))
        if not images:
            raise ValueError(f"{self.config.store}: no records to predict (split={self.config.split!r})")
        logger.info("predicted %d images (%d rejected) in %.1f s -> %s", ok, bad, elapsed, self.config.out)
        return {"images": images, "predicted": ok, "rejected": bad, "seconds": round(elapsed, 3),
                "images_per_s": round(images / elapsed, 3) if elapsed > 0 else None, "out": self.config.out,
                **self.decision.record()}

    def rejected(self, summary: dict[str, Any]) -> tuple[int, int]:
        return summary["rejected"], summary["images"]


def run_predict(config: PredictConfig) -> dict[str, Any]:
    """Batch prediction over a store; returns a summary (also written as `summary.json`)."""
    config.validate()
    if config.s3_endpoint:
        storage.set_s3_endpoint(config.s3_endpoint)  # before Ray starts: its workers get it through worker_env()
    store, _ = inputs.as_store(config.store, config.import_dir or storage.join(config.out, "inputs"))
    decision = inference_gpu_decision(config.gpus_per_worker)
    logger.info("prediction actors: %s", decision)
    config = config.replace(store=store, gpus_per_worker=decision.gpus_per_worker)
    files = manifest.manifest_files(config.store)
    storage.check_writable(config.out)
    tracking_uri = check_model(config.model, config.tracking_uri)  # fail before the cluster does any work
    config.save(storage.join(config.out, "config.json"))
    init_ray()
    wait_for_resources(config.cpus_per_worker * config.num_workers, decision.gpus_per_worker * config.num_workers,
                       config.resource_wait_s, "predict")
    return run_batch(PredictJob(config, files, tracking_uri, decision))
