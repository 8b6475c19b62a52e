"""Inference: a registered model or checkpoint -> probability maps at any image size.

`load_model` accepts `models:/<name>@<alias>`, `models:/<name>/<version>`, `runs:/<id>/<path>` (MLflow),
or a checkpoint written by training (a local/s3:// torch file holding
`{"model_config": dict, "model_state": state_dict}`, or a folder holding one). `predict_probs` resizes
an HxWx3 uint8 image to the model's input size, runs it, and resizes the sigmoid map back (bilinear).
`run_predict` maps an actor pool over a store's images with Ray Data and writes
`masks/<id>.png`, `overlays/<id>.jpg`, `predictions.jsonl`, `rejects.jsonl` and `config.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bpiml.data import storage
from bpiml.config import BaseConfig, check_range, field

logger = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("checkpoint.pt", "model.pt", "student.pt")  # training writes checkpoint.pt
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
DEFAULT_IMG_SIZE = 224


# --- model loading ---------------------------------------------------------------------------
def _checkpoint_file(uri: str) -> str:
    """A local path of the checkpoint file named by `uri` (a file, or a folder holding one)."""
    if storage.is_s3(uri):
        fs, path = storage.fsspec_fs(uri)
        if fs.isfile(path):
            return storage.local_copy(uri)
    else:
        local = storage._local(uri)
        if os.path.isfile(local):
            return local
    for name in CHECKPOINT_NAMES:
        candidate = storage.join(uri, name)
        if storage.exists(candidate):
            return storage.local_copy(candidate)
    raise FileNotFoundError(f"no checkpoint at {uri}: expected a torch file or a folder holding one of {CHECKPOINT_NAMES}")


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(MLFLOW_SCHEMES)


def load_model(uri: str, tracking_uri: str = "") -> Any:
    """Load a student for inference on CPU, in eval mode (see module doc for accepted URIs).

    MLflow URIs are resolved against `tracking_uri`, else MLFLOW_TRACKING_URI, else the project's
    embedded sqlite store (where training registers models by default).
    """
    import torch

    if is_mlflow_uri(uri):
        import mlflow
        import mlflow.pytorch

        from bpiml.runtime.tracking import resolve_tracking_uri

        resolved = resolve_tracking_uri(tracking_uri)
        mlflow.set_tracking_uri(resolved)
        mlflow.set_registry_uri(resolved)
        try:
            model = mlflow.pytorch.load_model(uri, map_location="cpu")
        except Exception as err:
            raise FileNotFoundError(f"cannot load {uri} from MLflow at {resolved}: {type(err).__name__}: {err}") from err
    else:
        path = _checkpoint_file(uri)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{uri}: not a readable torch checkpoint: {type(err).__name__}: {err}") from err
        if not isinstance(payload, dict) or "model_config" not in payload or "model_state" not in payload:
            keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"{uri}: checkpoint must hold 'model_config' and 'model_state', found {keys}")
        from bpiml.model.student import StudentConfig, build_student

        config = payload["model_config"]
        # The state dict overwrites the backbone's initial weights: never read them at inference.
        config = {**config, "backbone_weights": None} if "backbone_weights" in config else config
        model = build_student(StudentConfig.from_dict(config))
        model.load_state_dict(payload["model_state"])
    model.eval()
    return model


def check_model(uri: str, tracking_uri: str = "") -> str:
    """Fail fast when a checkpoint is missing; returns the tracking URI that Ray workers must use."""
    if not is_mlflow_uri(uri):
        _checkpoint_file(uri)
        return ""
    from bpiml.runtime.tracking import resolve_tracking_uri

    resolved = resolve_tracking_uri(tracking_uri)
    if uri.startswith("models:/"):
        from mlflow.tracking import MlflowClient

        name = uri[len("models:/"):].split("@")[0].split("/")[0]
        try:
            MlflowClient(tracking_uri=resolved, registry_uri=resolved).get_registered_model(name)
        except Exception as err:
            raise FileNotFoundError(f"registered model {name!r} not found at {resolved}: {err}") from err
    return resolved


def model_img_size(model: Any) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "img_size", DEFAULT_IMG_SIZE) or DEFAULT_IMG_SIZE)


# --- single images ---------------------------------------------------------------------------
def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image has no pixels: shape {image.shape}")
    return image


def _to_input(image: np.ndarray, size: int) -> Any:
    """HxWx3 uint8 -> 1x3xSxS float in [0, 1] (bilinear, antialiased when shrinking)."""
    import torch
    import torch.nn.functional as F

    x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255.0  # a copy: inputs may be read-only
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0)


def predict_batch(model: Any, images: Sequence[np.ndarray], device: str | None = None) -> list[np.ndarray]:
    """Probability maps (HxW float32 in [0, 1]) for images of any sizes, one forward pass."""
    import torch
    import torch.nn.functional as F

    if not images:
        return []
    images = [_check_image(im) for im in images]
    size = model_img_size(model)
    if device is None:
        device = str(next(model.parameters()).device) if any(True for _ in model.parameters()) else "cpu"
    x = torch.cat([_to_input(im, size) for im in images]).to(device)
    with torch.inference_mode():
        logits = model(x)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if isinstance(logits, dict):
            logits = logits["logits"]
        probs = torch.sigmoid(logits.float())
        out = []
        for i, im in enumerate(images):
            p = probs[i : i + 1]
            h, w = im.shape[:2]
            if p.shape[-2:] != (h, w):
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            out.append(p[0, 0].clamp(0.0, 1.0).cpu().numpy().astype(np.float32))
    return out


def predict_probs(model: Any, image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> HxW float32 probability map at the image's own size."""
    return predict_batch(model, [image])[0]


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 0, 0), alpha: float = 0.45,
            contour: tuple[int, int, int] = (255, 255, 0)) -> np.ndarray:
    """HxWx3 uint8 with `mask` tinted in `color` and its contour drawn in `contour` (1-3 px by image size)."""
    import cv2

    image = _check_image(image)
    mask = np.asarray(mask)
    mask = mask if mask.dtype == bool else mask > 0.5
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image size {image.shape[:2]}")
    out = image.astype(np.float32)
    tint = np.array(color, dtype=np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * tint
    out = out.round().clip(0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    cv2.drawContours(out, contours, -1, color=tuple(int(c) for c in contour), thickness=thickness)
    return out


def safe_name(record_id: str) -> str:
    """A file name for a record id (path separators and odd characters replaced)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", record_id).strip("._") or "item"
    return name[:200]


# --- one-image CLI ---------------------------------------------------------------------------
def cli_predict(argv: list[str] | None = None) -> int:
    from bpiml.data import imageio

    parser = argparse.ArgumentParser(prog="bpiml predict", description="Predict a manipulation mask for one image.")
    parser.add_argument("--model", required=True, help="models:/<name>@<alias>, runs:/..., or a checkpoint path/URI")
    parser.add_argument("--image", required=True, help="image path or s3:// URI")
    parser.add_argument("--out", required=True, help="output mask PNG (0/255)")
    parser.add_argument("--overlay", default=None, help="optional overlay image (PNG or JPEG by extension)")
    parser.add_argument("--probs", default=None, help="optional probability map as an 8-bit PNG")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold for the mask")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: env, then project sqlite)")
    args = parser.parse_args(argv)
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
        storage.write_bytes(args.probs, imageio.encode_image((probs * 255).round().astype(np.uint8), "png"))
    if args.overlay:
        fmt = "jpg" if args.overlay.lower().endswith((".jpg", ".jpeg")) else "png"
        storage.write_bytes(args.overlay, imageio.encode_image(overlay(image, mask), fmt, 90))
    print(json.dumps({"image": args.image, "mask": args.out, "score": round(float(probs.max()), 6),
                      "mask_area": round(float(mask.mean()), 6)}))
    return 0


# --- batch prediction on Ray Data ------------------------------------------------------------
@dataclass
class PredictConfig(BaseConfig):
    model: str = field("", help="models:/<name>@<alias>, runs:/<id>/<path>, or a checkpoint path/URI")
    tracking_uri: str = field("", help="MLflow tracking URI for models:/ and runs:/ (default: env, then project sqlite)")
    store: str = field("", help="input store root (local or s3://) holding manifest.jsonl")
    out: str = field("", help="output folder (local or s3://)")
    split: str | None = field(None, help="only records of this split (train/val/test); all when unset")
    threshold: float = field(0.5, help="probability threshold for the written masks")
    overlays: bool = field(True, help="also write overlays/<id>.jpg")
    batch_size: int = field(8, help="images per model call")
    num_workers: int = field(1, help="actors in the prediction pool (each loads the model once)")
    num_cpus_per_worker: float = field(1.0, help="CPUs per actor (fractional allowed, e.g. 0.5)")
    num_gpus_per_worker: float = field(0.0, help="GPUs per actor; 0 runs on CPU")
    limit: int = field(0, help="predict only the first N records (0 = all); for smoke tests")

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
        if self.split is not None and self.split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val, test or unset, got {self.split!r}")


class Predictor:
    """Ray Data batch step: model loaded once per actor; one batch of image URIs -> written masks."""

    def __init__(self, model_uri: str, out: str, threshold: float = 0.5, overlays: bool = True,
                 model: Any | None = None, tracking_uri: str = "") -> None:
        import torch

        self.model = model if model is not None else load_model(model_uri, tracking_uri)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.out, self.threshold, self.overlays = out, threshold, overlays

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from bpiml.data import imageio

        ids = [str(i) for i in batch["id"]]
        uris = [str(u) for u in batch["image"]]
        images: list[np.ndarray | None] = []
        errors = [""] * len(ids)
        for k, uri in enumerate(uris):
            try:
                images.append(imageio.decode_image(storage.read_bytes(uri))[0])
            except Exception as err:  # one bad image becomes a reject row
                images.append(None)
                errors[k] = f"{type(err).__name__}: {err}"
        good = [k for k, im in enumerate(images) if im is not None]
        probs = predict_batch(self.model, [images[k] for k in good], self.device) if good else []
        rows: dict[str, list[Any]] = {key: [] for key in ("id", "image", "pred_mask", "overlay", "height", "width",
                                                           "score", "mask_area", "error")}
        by_index = dict(zip(good, probs))
        for k, rid in enumerate(ids):
            mask_rel = overlay_rel = ""
            h = w = 0
            score = area = float("nan")
            if k in by_index:
                try:
                    prob, image = by_index[k], images[k]
                    mask = prob > self.threshold
                    name = safe_name(rid)
                    mask_rel = f"masks/{name}.png"
                    storage.write_bytes(storage.join(self.out, mask_rel), imageio.encode_mask_png(mask))
                    if self.overlays:
                        overlay_rel = f"overlays/{name}.jpg"
                        storage.write_bytes(storage.join(self.out, overlay_rel),
                                            imageio.encode_image(overlay(image, mask), "jpg", 90))
                    h, w = prob.shape
                    score, area = float(prob.max()), float(mask.mean())
                except Exception as err:
                    errors[k] = f"{type(err).__name__}: {err}"
                    mask_rel = overlay_rel = ""
            for key, value in (("id", rid), ("image", uris[k]), ("pred_mask", mask_rel), ("overlay", overlay_rel),
                               ("height", h), ("width", w), ("score", score), ("mask_area", area),
                               ("error", errors[k])):
                rows[key].append(value)
        return {k: np.asarray(v) for k, v in rows.items()}


def map_kwargs(num_workers: int, num_cpus: float, num_gpus: float, batch_size: int) -> dict[str, Any]:
    """`map_batches` keyword arguments for an actor pool; `num_gpus` only when GPUs are asked for."""
    import ray.data

    kwargs: dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=num_workers), "num_cpus": num_cpus,
                              "batch_size": batch_size, "batch_format": "numpy"}
    if num_gpus > 0:
        kwargs["num_gpus"] = num_gpus
    return kwargs


def run_predict(config: PredictConfig) -> dict[str, Any]:
    """Batch prediction over a store; returns a summary (also written as `summary.json`)."""
    import ray

    from bpiml.data import manifest
    from bpiml.runtime.raycluster import check_gpus, init_ray

    config.validate()
    records = manifest.read_manifest(config.store)
    if config.split:
        records = [r for r in records if r.split == config.split]
    if config.limit:
        records = records[: config.limit]
    if not records:
        raise ValueError(f"{config.store}: no records to predict (split={config.split!r})")
    storage.check_writable(config.out)
    tracking_uri = check_model(config.model, config.tracking_uri)  # fail before the cluster does any work
    config.save(storage.join(config.out, "config.json"))

    init_ray()
    check_gpus(config.num_gpus_per_worker, config.num_workers, "predict")
    items = [{"id": r.id, "image": manifest.image_uri(config.store, r)} for r in records]
    start = time.perf_counter()
    ds = ray.data.from_items(items).map_batches(
        Predictor,
        fn_constructor_kwargs={"model_uri": config.model, "out": config.out, "threshold": config.threshold,
                               "overlays": config.overlays, "tracking_uri": tracking_uri},
        **map_kwargs(config.num_workers, config.num_cpus_per_worker, config.num_gpus_per_worker, config.batch_size),
    )
    rows = sorted(ds.take_all(), key=lambda r: str(r["id"]))
    elapsed = time.perf_counter() - start
    ok = [_plain(r) for r in rows if not r["error"]]
    bad = [{"id": str(r["id"]), "image": str(r["image"]), "reason": str(r["error"])} for r in rows if r["error"]]
    _write_jsonl(storage.join(config.out, "predictions.jsonl"), ok)
    _write_jsonl(storage.join(config.out, "rejects.jsonl"), bad)
    summary = {"images": len(rows), "predicted": len(ok), "rejected": len(bad), "seconds": round(elapsed, 3),
               "images_per_s": round(len(rows) / elapsed, 3) if elapsed > 0 else None, "out": config.out}
    storage.write_bytes(storage.join(config.out, "summary.json"), (json.dumps(summary, indent=2) + "\n").encode())
    logger.info("predicted %d images (%d rejected) in %.1f s -> %s", len(ok), len(bad), elapsed, config.out)
    return summary


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if k == "error":
            continue
        out[k] = v.item() if isinstance(v, np.generic) else v
    return out


def _write_jsonl(uri: str, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, default=str) + "\n" for r in rows)
    storage.write_bytes(uri, text.encode())
