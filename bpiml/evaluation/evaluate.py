"""Evaluation job: a model against named test sets, clean and degraded, on Ray Data.

Test sets are given as `name=URI` (or just `URI`, named after its file/folder):
- an IMDL-BenCo list JSON `[[image, mask], [image, "Negative"], ...]`; relative paths are resolved
  against the JSON's folder (and may not climb above it), absolute local paths / s3:// URIs are kept;
- a store (root or `manifest.jsonl`): records of `split` with a GT mask are manipulated, records
  without boxes and mask are authentic, records with boxes but no mask are skipped (counted).

One actor pool (model loaded once per actor) computes per-image metrics for every
(set, degradation, image); rows come back to the driver, which averages them with
`bpiml.metrics.summarize` (pixel metrics over manipulated images, image-level AUC and balanced
accuracy where authentic images exist), then adds the mean over sets and the declared groups.
Outputs in `out`: results.json, results.csv, per_image.jsonl, config.json, preds/<set>/<id>.png.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import posixpath
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bpiml.data import degrade, storage
from bpiml.evaluation import metrics
from bpiml.config import BaseConfig, check_range, field

logger = logging.getLogger(__name__)

NEGATIVE = "Negative"
METRIC_KEYS = ("pixel_f1", "pixel_iou", "pixel_auc", "image_auc", "image_bacc")
COUNT_KEYS = ("n_images", "n_manipulated", "n_authentic")


@dataclass
class EvalConfig(BaseConfig):
    model: str = field("", help="models:/<name>@<alias>, runs:/<id>/<path>, or a checkpoint path/URI")
    tracking_uri: str = field("", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, then the project sqlite)")
    datasets: list[str] = field([], help="test sets as name=URI (IMDL-BenCo list JSON or store); repeatable")
    split: str | None = field("test", help="split used for store test sets (\"\" or unset: all records)")
    groups: list[str] = field([], help="name=set1,set2 groups whose averages are reported; repeatable")
    degrade: list[str] = field([], help="degradations re-evaluated on every set, e.g. jpeg:90,jpeg:50,resize:0.5")
    out: str = field("", help="output folder (local or s3://) for results.json/csv and per-image rows")
    threshold: float = field(0.5, help="probability threshold for pixel and image decisions")
    limit: int = field(0, help="evaluate only the first N images of each set (0 = all)")
    save_masks: bool = field(True, help="write the clean predicted masks to preds/<set>/<id>.png (for reports)")
    batch_size: int = field(8, help="images per model call")
    num_workers: int = field(1, help="actors in the evaluation pool (each loads the model once)")
    num_cpus_per_worker: float = field(1.0, help="CPUs per actor (fractional allowed)")
    num_gpus_per_worker: float = field(0.0, help="GPUs per actor; 0 runs on CPU")
    mlflow_run_id: str | None = field(None, help="log the table into this MLflow run")
    experiment: str | None = field(None, help="MLflow experiment for a new evaluation run")
    mlflow: bool = field(True, help="log to MLflow when a tracking URI (flag or env), run id or experiment is given")

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
        names = list(parse_datasets(self.datasets))
        groups = parse_groups(self.groups)
        for group, members in groups.items():
            missing = [m for m in members if m not in names]
            if missing:
                raise ValueError(f"group {group!r} names unknown test set(s) {missing}; known: {names}")
        degrade.parse_list(self.degrade)


# --- parsing --------------------------------------------------------------------------------
def parse_datasets(specs: list[str]) -> dict[str, str]:
    """`["a=path/a.json", "s3://b/store"]` -> {"a": ..., "store": ...}; duplicate names are errors."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, uri = spec.partition("=")
        if not sep or "://" in name or "/" in name:
            uri = spec
            base = posixpath.basename(spec.rstrip("/"))
            name = re.sub(r"\.(json|jsonl)$", "", base)
            if name in ("index", "manifest"):
                name = posixpath.basename(posixpath.dirname(spec.rstrip("/"))) or name
        name, uri = name.strip(), uri.strip()
        if not name or not uri:
            raise ValueError(f"test set {spec!r}: expected name=URI")
        if name in out:
            raise ValueError(f"test set name {name!r} given twice")
        out[name] = uri
    return out


def parse_groups(specs: list[str]) -> dict[str, list[str]]:
    """`["in_dist=a,b", "ood=c"]` -> {"in_dist": ["a", "b"], "ood": ["c"]}."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, members = spec.partition("=")
        items = [m.strip() for m in members.split(",") if m.strip()]
        if not sep or not name.strip() or not items:
            raise ValueError(f"group {spec!r}: expected name=set1,set2")
        out[name.strip()] = items
    return out


def _resolve_listed(folder: str, path: str) -> str:
    if storage.is_s3(path) or os.path.isabs(path) or path.startswith("file://"):
        return path
    return storage.resolve_in_store(folder, path)


def load_test_set(uri: str, split: str | None = "test") -> list[dict[str, str]]:
    """Items `{"id", "image", "mask"}` (full URIs; mask "" for authentic images) of one test set."""
    if uri.endswith(".json"):
        folder = uri.rsplit("/", 1)[0] if "/" in uri else "."
        try:
            entries = json.loads(storage.read_bytes(uri))
        except json.JSONDecodeError as err:
            raise ValueError(f"{uri}: invalid JSON: {err}") from None
        if not isinstance(entries, list):
            raise ValueError(f"{uri}: expected a list of [image, mask] pairs, got {type(entries).__name__}")
        items = []
        for i, entry in enumerate(entries):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
                raise ValueError(f"{uri}: entry {i} must be [image, mask or \"Negative\"], got {entry!r}")
            image, mask = entry
            items.append({"id": image, "image": _resolve_listed(folder, image),
                          "mask": "" if mask == NEGATIVE else _resolve_listed(folder, mask)})
        return items
    from bpiml.data import manifest

    records = manifest.read_manifest(uri)
    if split:
        records = [r for r in records if r.split == split]
    items, skipped = [], 0
    for r in records:
        if r.mask is None and r.boxes:
            skipped += 1
            continue
        items.append({"id": r.id, "image": manifest.image_uri(uri, r), "mask": manifest.mask_uri(uri, r) or ""})
    if skipped:
        logger.warning("%s: %d record(s) with boxes but no GT mask skipped", uri, skipped)
    return items


# --- the batch step -------------------------------------------------------------------------
class Evaluator:
    """Ray Data batch step: rows {set, degradation, id, image, mask} -> per-image metric rows."""

    def __init__(self, model_uri: str, threshold: float = 0.5, out: str = "", save_masks: bool = False,
                 model: Any | None = None, tracking_uri: str = "") -> None:
        import torch

        from bpiml.evaluation.predict import load_model

        self.model = model if model is not None else load_model(model_uri, tracking_uri)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.threshold, self.out, self.save_masks = threshold, out, save_masks and bool(out)

    def _load(self, image_uri: str, mask_uri: str, degradation: str) -> tuple[np.ndarray, np.ndarray | None]:
        from bpiml.data import imageio

        image = imageio.load_image(image_uri)[0]
        gt = imageio.load_mask(mask_uri) if mask_uri else None
        return degrade.apply(image, degrade.parse(degradation)), gt

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import cv2

        from bpiml.data import imageio
        from bpiml.evaluation.predict import predict_batch, safe_name

        n = len(batch["id"])
        loaded: list[tuple[np.ndarray, np.ndarray | None] | None] = []
        errors = [""] * n
        for k in range(n):
            try:
                loaded.append(self._load(str(batch["image"][k]), str(batch["mask"][k]), str(batch["degradation"][k])))
            except Exception as err:  # a bad file becomes a reject row, not a failed job
                loaded.append(None)
                errors[k] = f"{type(err).__name__}: {err}"
        good = [k for k in range(n) if loaded[k] is not None]
        probs = dict(zip(good, predict_batch(self.model, [loaded[k][0] for k in good], self.device)))
        out: dict[str, list[Any]] = {k: [] for k in ("set", "degradation", "id", "image", "mask", "manipulated",
                                                    "score", "f1", "iou", "auc", "pred_mask", "error")}
        for k in range(n):
            row: dict[str, Any] = {"manipulated": False, "score": math.nan, "f1": math.nan, "iou": math.nan,
                                   "auc": math.nan, "pred_mask": ""}
            if k in probs:
                prob, gt = probs[k], loaded[k][1]
                if gt is not None and gt.shape != prob.shape:  # resized inputs, or a mask of another size
                    prob = cv2.resize(prob, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
                row.update(metrics.image_row(prob, gt, self.threshold))
                if self.save_masks and batch["degradation"][k] == degrade.CLEAN:
                    rel = f"preds/{safe_name(str(batch['set'][k]))}/{safe_name(str(batch['id'][k]))}.png"
                    storage.write_bytes(storage.join(self.out, rel), imageio.encode_mask_png(prob > self.threshold))
                    row["pred_mask"] = rel
            for key in ("set", "degradation", "id", "image", "mask"):
                out[key].append(str(batch[key][k]))
            for key in ("manipulated", "score", "f1", "iou", "auc", "pred_mask"):
                out[key].append(row[key])
            out["error"].append(errors[k])
        return {k: np.asarray(v) for k, v in out.items()}


# --- aggregation and output -----------------------------------------------------------------
def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def aggregate(rows: list[dict[str, Any]], set_names: list[str], groups: dict[str, list[str]],
              degradations: list[str], threshold: float = 0.5) -> list[dict[str, Any]]:
    """Table rows: one per (set, degradation), then `average` over sets and one per group."""
    table = []
    for deg in degradations:
        per_set: dict[str, dict[str, float]] = {}
        for name in set_names:
            selected = [r for r in rows if r["set"] == name and r["degradation"] == deg and not r.get("error")]
            per_set[name] = metrics.summarize(selected, threshold)
            table.append({"kind": "set", "name": name, "degradation": deg, **per_set[name]})
        for kind, name, members in [("average", "average", set_names)] + [("group", g, m) for g, m in groups.items()]:
            summary: dict[str, Any] = {k: int(sum(per_set[m][k] for m in members)) for k in COUNT_KEYS}
            summary.update({k: _nanmean([per_set[m][k] for m in members]) for k in METRIC_KEYS})
            table.append({"kind": kind, "name": name, "degradation": deg, **summary})
    return table


def format_table(table: list[dict[str, Any]]) -> str:
    """Plain-text table (nan shown as '-')."""
    header = ["name", "degradation", "images", "manip", "auth", "pix_F1", "pix_IoU", "pix_AUC", "img_AUC", "img_bACC"]
    lines = []
    for r in table:
        cells = [r["name"] if r["kind"] == "set" else f"[{r['name']}]", r["degradation"],
                 *(str(int(r[k])) for k in COUNT_KEYS),
                 *("-" if math.isnan(r[k]) else f"{r[k]:.4f}" for k in METRIC_KEYS)]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines])


def table_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    columns = ["kind", "name", "degradation", *COUNT_KEYS, *METRIC_KEYS]
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in table:
        writer.writerow({k: ("" if isinstance(r[k], float) and math.isnan(r[k]) else r[k]) for k in columns})
    return buf.getvalue()


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def metric_name(row: dict[str, Any], key: str) -> str:
    """MLflow metric name such as `eval/cvip/jpeg_70/pixel_f1` (only MLflow-safe characters)."""
    parts = ["eval", row["name"], row["degradation"].replace(":", "_"), key]
    return "/".join(re.sub(r"[^A-Za-z0-9_.\- ]", "_", str(p)) for p in parts)


def log_to_mlflow(config: EvalConfig, table: list[dict[str, Any]], files: dict[str, str]) -> str | None:
    """Log the table's metrics and files; returns the run id, or None when MLflow is not configured."""
    if not config.mlflow or not (config.tracking_uri or config.mlflow_run_id or config.experiment
                                 or os.environ.get("MLFLOW_TRACKING_URI")):
        return None
    from bpiml.runtime import tracking

    uri = tracking.resolve_tracking_uri(config.tracking_uri)
    run_id = config.mlflow_run_id or tracking.start_or_resume_run(
        uri, config.experiment or "bpiml-eval", run_name="evaluate", tags={"bpiml.job": "evaluate"})
    if not config.mlflow_run_id:
        tracking.log_params(uri, run_id, {"model": config.model, "threshold": config.threshold,
                                          "datasets": ",".join(parse_datasets(config.datasets)),
                                          "degrade": ",".join(config.degrade)})
    values = {metric_name(r, k): float(r[k]) for r in table for k in METRIC_KEYS if not math.isnan(r[k])}
    tracking.log_metrics(uri, run_id, values, step=0)
    mlc = tracking.client(uri)
    for name, text in files.items():
        mlc.log_text(run_id, text, f"evaluation/{name}")
    if not config.mlflow_run_id:
        tracking.end_run(uri, run_id)
    logger.info("evaluation logged to MLflow run %s at %s", run_id, uri)
    return run_id


def run_evaluation(config: EvalConfig) -> dict[str, Any]:
    """Evaluate; returns {"table": rows, "out": folder, "mlflow_run_id": id or None, ...}."""
    import ray

    from bpiml.evaluation.predict import check_model, map_kwargs
    from bpiml.runtime.raycluster import check_gpus, init_ray

    config.validate()
    sets = parse_datasets(config.datasets)
    groups = parse_groups(config.groups)
    degradations = [d.name for d in degrade.parse_list(config.degrade)]
    items: list[dict[str, str]] = []
    for name, uri in sets.items():
        listed = load_test_set(uri, config.split)
        if config.limit:
            listed = listed[: config.limit]
        if not listed:
            raise ValueError(f"test set {name!r} ({uri}) has no images (split={config.split!r})")
        logger.info("test set %s: %d images (%d authentic) from %s", name, len(listed),
                    sum(1 for it in listed if not it["mask"]), uri)
        items += [{"set": name, "degradation": d, **it} for d in degradations for it in listed]
    tracking_uri = check_model(config.model, config.tracking_uri)  # fail before the cluster does any work
    storage.check_writable(config.out)
    config.save(storage.join(config.out, "config.json"))

    init_ray()
    check_gpus(config.num_gpus_per_worker, config.num_workers, "evaluate")
    start = time.perf_counter()
    ds = ray.data.from_items(items).map_batches(
        Evaluator,
        fn_constructor_kwargs={"model_uri": config.model, "threshold": config.threshold, "out": config.out,
                               "save_masks": config.save_masks, "tracking_uri": tracking_uri},
        **map_kwargs(config.num_workers, config.num_cpus_per_worker, config.num_gpus_per_worker, config.batch_size),
    )
    rows = [{k: _json_safe(v) for k, v in r.items()} for r in ds.take_all()]
    rows.sort(key=lambda r: (r["set"], degradations.index(r["degradation"]), r["id"]))
    for r in rows:  # back to nan for averaging
        for k in ("score", "f1", "iou", "auc"):
            r[k] = math.nan if r[k] is None else float(r[k])
        r["manipulated"] = bool(r["manipulated"])
    elapsed = time.perf_counter() - start
    errors = [r for r in rows if r["error"]]
    for r in errors[:10]:
        logger.warning("failed %s (%s, %s): %s", r["id"], r["set"], r["degradation"], r["error"])
    table = aggregate(rows, list(sets), groups, degradations, config.threshold)

    result = {"model": config.model, "threshold": config.threshold, "seconds": round(elapsed, 3),
              "images": len(rows), "failed": len(errors), "table": [{k: _json_safe(v) for k, v in r.items()} for r in table]}
    files = {
        "results.json": json.dumps(result, indent=2) + "\n",
        "results.csv": table_csv(table),
        "results.txt": format_table(table) + "\n",
        "per_image.jsonl": "".join(json.dumps({k: _json_safe(v) for k, v in r.items()}) + "\n" for r in rows),
    }
    for name, text in files.items():
        storage.write_bytes(storage.join(config.out, name), text.encode())
    run_id = log_to_mlflow(config, table, {k: v for k, v in files.items() if k != "per_image.jsonl"})
    logger.info("evaluated %d predictions (%d failed) in %.1f s -> %s", len(rows), len(errors), elapsed, config.out)
    return {**result, "table": table, "out": config.out, "mlflow_run_id": run_id}


def build_parser(prog: str = "bpiml evaluate") -> argparse.ArgumentParser:
    """EvalConfig flags; the list flags repeat and accumulate (`--dataset a=x --dataset b=y`)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], conflict_handler="resolve")
    EvalConfig.add_arguments(parser)
    for dest, flags, what in (("datasets", ("--datasets", "--dataset"), "test set name=URI"),
                              ("groups", ("--groups", "--group"), "group name=set1,set2"),
                              ("degrade", ("--degrade",), "degradations, e.g. jpeg:90,jpeg:50,resize:0.5")):
        parser.add_argument(*flags, dest=dest, action="extend", nargs="+", default=[], help=f"{what} (repeatable)")
    return parser


def print_result(result: dict[str, Any]) -> None:
    print(format_table(result["table"]))
    print(f"\nresults: {storage.join(result['out'], 'results.json')}"
          + (f"  (MLflow run {result['mlflow_run_id']})" if result["mlflow_run_id"] else ""))


def cli_evaluate(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print_result(run_evaluation(EvalConfig.from_args(args)))
    return 0
