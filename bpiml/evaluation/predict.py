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

import argparse
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from bpiml.runtime.jobcli import HelpFormatter
from bpiml.config import BaseConfig, check_choice, check_range, field
from bpiml.data import imageio, inputs, manifest, naming, parts, rejects, storage
from bpiml.data.retry import StorageUnavailable
from bpiml.evaluation.inference import (
    check_model,
    load_model,
    predict_batch,
    predict_probs,
)
from bpiml.evaluation.sink import REJECTS_DIR, WRITE_CPUS, TableSink, clear_tables, finish_tables
from bpiml.evaluation.testsets import manifest_items
from bpiml.evaluation.visual import overlay
from bpiml.runtime import progress
from bpiml.runtime.counter import start_counter
from bpiml.runtime.datasets import READ_CPUS, read_lines
from bpiml.runtime.raycluster import actor_pool_kwargs, check_gpus, init_ray

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("id", "image", "pred_mask", "pred_probs", "overlay", "height", "width", "score", "mask_area", "error")
PREDICTIONS_DIR = "predictions"


# --- one image -------------------------------------------------------------------------------
def _single_image_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="bpiml predict", description="Predict a manipulation mask for one image.")
    parser.add_argument("--model", required=True, help="models:/<name>@<alias>, runs:/..., or a checkpoint path/URI")
    parser.add_argument("--image", required=True, help="image path or s3:// URI")
    parser.add_argument("--out", required=True, help="output mask PNG (0/255)")
    parser.add_argument("--overlay", default=None, help="optional overlay image (PNG or JPEG by extension)")
    parser.add_argument("--probs", default=None, help="optional probability map: 8-bit PNG, or float16 when it ends in .npy")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold for the mask")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: env, then project sqlite)")
    return parser


def cli_predict(argv: list[str] | None = None) -> int:
    args = _single_image_parser().parse_args(argv)
    check_range("threshold", args.threshold, 0.0, 1.0)
    image, notes = imageio.load_image(args.image)
    for note in notes or []:
        logger.info("%s: %s", args.image, note)
    model = load_model(args.model, args.tracking_uri)
    start = time.perf_counter()
    probs = predict_probs(model, image)
    mask = probs > args.threshold
    logger.info("predicted %dx%d in %.3f s: score %.3f, mask area %.2f%%", image.shape[1], image.shape[0],
                time.perf_counter() - start, float(probs.max()), 100.0 * float(mask.mean()))
    storage.write_bytes(args.out, imageio.encode_mask_png(mask))
    if args.probs:
        storage.write_bytes(args.probs, imageio.encode_probs(probs, "npy" if args.probs.endswith(".npy") else "png"))
    if args.overlay:
        fmt = "jpg" if args.overlay.lower().endswith((".jpg", ".jpeg")) else "png"
        storage.write_bytes(args.overlay, imageio.encode_image(overlay(image, mask), fmt, 90))
    print(json.dumps({"image": args.image, "mask": args.out, "score": round(float(probs.max()), 6),
                      "mask_area": round(float(mask.mean()), 6)}))
    return 0


# --- a store on Ray Data -----------------------------------------------------------------------
@dataclass
class PredictConfig(BaseConfig):
    model: str = field("", help="models:/<name>@<alias>, runs:/<id>/<path>, or a checkpoint path/URI")
    tracking_uri: str = field("", help="MLflow tracking URI for models:/ and runs:/ (default: env, then project sqlite)")
    store: str = field("", help="input: a store, an IMDL-BenCo list .json, a COCO .json or a folder of images (local or s3://)")
    import_dir: str = field("", help="where an input that is not a store is imported once (default: <out>/inputs)")
    out: str = field("", help="output folder (local or s3://)")
    split: str | None = field(None, help="only records of this split (train/val/test); all when unset")
    threshold: float = field(0.5, help="probability threshold for the written masks")
    overlays: bool = field(True, help="also write overlays/<id>.jpg")
    probs: str = field("png", help="probability maps in probs/<id>.<ext>: png (8-bit), npy (float16) or none")
    batch_size: int = field(8, help="images per model call")
    num_workers: int = field(1, help="actors in the prediction pool (each loads the model once)")
    num_cpus_per_worker: float = field(1.0, help="CPUs per actor (fractional allowed, e.g. 0.5)")
    num_gpus_per_worker: float = field(0.0, help="GPUs per actor; 0 runs on CPU")
    limit: int = field(0, help="predict only the first N records (0 = all); for smoke tests")
    max_reject_rate: float = field(0.05, help="fail (after writing everything) when more images than this are rejected")

    def validate(self) -> None:
        for key in ("model", "store", "out"):
            if not getattr(self, key):
                raise ValueError(f"PredictConfig.{key} is required")
        check_range("threshold", self.threshold, 0.0, 1.0)
        check_range("batch_size", self.batch_size, 1)
        check_range("num_workers", self.num_workers, 1)
        check_range("num_cpus_per_worker", self.num_cpus_per_worker, 0.01)
        check_range("num_gpus_per_worker", self.num_gpus_per_worker, 0.0)
        check_range("limit", self.limit, 0)
        check_range("max_reject_rate", self.max_reject_rate, 0.0, 1.0)
        check_choice("probs", self.probs, imageio.PROB_FORMATS)
        if self.split is not None and self.split not in manifest.SPLITS:
            raise ValueError(f"split must be train, val, test or unset, got {self.split!r}")


class Predictor:
    """Ray Data batch step: model loaded once per actor; one batch of image URIs -> written masks."""

    def __init__(self, model_uri: str, out: str, threshold: float = 0.5, overlays: bool = True,
                 model: Any | None = None, tracking_uri: str = "", probs: str = "none") -> None:
        self.model = model if model is not None else load_model(model_uri, tracking_uri)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.out, self.threshold, self.overlays, self.probs = out, threshold, overlays, probs

    def _write(self, rid: str, image: np.ndarray, prob: np.ndarray) -> dict[str, Any]:
        mask = prob > self.threshold
        name = naming.file_stem(rid)
        row = {"pred_mask": f"masks/{name}.png", "pred_probs": "", "overlay": "", "height": prob.shape[0], "width": prob.shape[1],
               "score": float(prob.max()), "mask_area": float(mask.mean())}
        storage.write_bytes(storage.join(self.out, row["pred_mask"]), imageio.encode_mask_png(mask))
        if self.probs != "none":
            row["pred_probs"] = f"probs/{name}.{self.probs}"
            storage.write_bytes(storage.join(self.out, row["pred_probs"]), imageio.encode_probs(prob, self.probs))
        if self.overlays:
            row["overlay"] = f"overlays/{name}.jpg"
            storage.write_bytes(storage.join(self.out, row["overlay"]),
                                imageio.encode_image(overlay(image, mask), "jpg", 90))
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, uris = [str(i) for i in batch["id"]], [str(u) for u in batch["image"]]
        images: dict[int, np.ndarray] = {}
        errors = [str(e) for e in batch["error"]] if "error" in batch else [""] * len(ids)
        for k, uri in enumerate(uris):
            if errors[k]:  # a manifest line that is not a record: passed through as a reject
                continue
            try:
                images[k] = imageio.decode_image(storage.read_bytes(uri), uri)[0]
            except StorageUnavailable:
                raise  # an outage past the retry budget fails the job; it is no bad image
            except Exception as err:  # one bad image becomes a reject row
                errors[k] = f"{type(err).__name__}: {err}"
        probs = dict(zip(images, predict_batch(self.model, list(images.values()), self.device)))
        rows: dict[str, list[Any]] = {key: [] for key in PREDICTION_COLUMNS}
        empty = {"pred_mask": "", "pred_probs": "", "overlay": "", "height": 0, "width": 0, "score": float("nan"), "mask_area": float("nan")}
        for k, rid in enumerate(ids):
            row = dict(empty)
            if k in probs:
                try:
                    row = self._write(rid, images[k], probs[k])
                except StorageUnavailable:
                    raise
                except Exception as err:
                    errors[k] = f"{type(err).__name__}: {err}"
            for key, value in {"id": rid, "image": uris[k], **row, "error": errors[k]}.items():
                rows[key].append(value)
        return {k: np.asarray(v) for k, v in rows.items()}


def read_predictions(out: str) -> Iterator[dict[str, Any]]:
    """The rows of a prediction output's table (in no particular order)."""
    return parts.iter_table(storage.join(out, PREDICTIONS_DIR))


def run_predict(config: PredictConfig) -> dict[str, Any]:
    """Batch prediction over a store; returns a summary (also written as `summary.json`)."""
    config.validate()
    store, _ = inputs.as_store(config.store, config.import_dir or storage.join(config.out, "inputs"))
    config = config.replace(store=store)
    files = manifest.manifest_files(config.store)
    storage.check_writable(config.out)
    tracking_uri = check_model(config.model, config.tracking_uri)  # fail before the cluster does any work
    config.save(storage.join(config.out, "config.json"))
    init_ray()
    check_gpus(config.num_gpus_per_worker, config.num_workers, "predict")
    clear_tables(config.out, (PREDICTIONS_DIR,))
    run_id = parts.new_run_id(time.strftime("%Y%m%d_%H%M%S"), uuid.uuid4().hex[:8])
    counter = start_counter()
    start = time.perf_counter()
    items = read_lines(files).map_batches(manifest_items, fn_kwargs={"store": config.store, "split": config.split},
                                          batch_format="numpy", num_cpus=READ_CPUS)
    if config.limit:
        items = items.limit(config.limit)
    total = None if config.split else progress.count_records(files)  # a split's size is known only at the end
    with progress.report(counter, "predict", ("images",), min(total, config.limit or total) if total else None):
        items.map_batches(
            Predictor,
            fn_constructor_kwargs={"model_uri": config.model, "out": config.out, "threshold": config.threshold,
                                   "overlays": config.overlays, "tracking_uri": tracking_uri, "probs": config.probs},
            **actor_pool_kwargs(config.num_workers, config.num_cpus_per_worker, config.num_gpus_per_worker,
                                config.batch_size),
        ).write_datasink(TableSink(config.out, PREDICTIONS_DIR, "predict", run_id, counter, config.batch_size * 4),
                         ray_remote_args={"num_cpus": WRITE_CPUS})
    counts = {k: int(v) for k, v in ray.get(counter.get.remote()).items()}
    finish_tables(config.out, (PREDICTIONS_DIR,), config.batch_size * 4)
    elapsed = time.perf_counter() - start
    images, ok, bad = counts.get("images", 0), counts.get("written", 0), counts.get("rejected", 0)
    if not images:
        raise ValueError(f"{config.store}: no records to predict (split={config.split!r})")
    summary = {"images": images, "predicted": ok, "rejected": bad, "seconds": round(elapsed, 3),
               "images_per_s": round(images / elapsed, 3) if elapsed > 0 else None, "out": config.out}
    storage.write_bytes(storage.join(config.out, "summary.json"), (json.dumps(summary, indent=2) + "\n").encode())
    logger.info("predicted %d images (%d rejected) in %.1f s -> %s", ok, bad, elapsed, config.out)
    rejects.check_reject_rate(bad, images, config.max_reject_rate, "predict", storage.join(config.out, REJECTS_DIR))
    return summary

