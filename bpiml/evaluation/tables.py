"""Evaluation tables: per-set, mean-over-sets and group rows; text, CSV and MLflow renderings.

An evaluation output holds the table (`results.json` / `.csv` / `.txt`) and the per-image table
`per_image/` (JSONL parts or shards, `bpiml.data.parts`; read it with `read_per_image`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bpiml.data import degrade, metrics, parts, storage
from bpiml.evaluation import figures
from bpiml.evaluation.streaming_metrics import Stats
from bpiml.model import mlflow_model
from bpiml.runtime import tracking

logger = logging.getLogger(__name__)

METRIC_KEYS = ("pixel_f1", "pixel_iou", "pixel_auc", "image_auc", "image_bacc")
COUNT_KEYS = ("n_images", "n_manipulated", "n_authentic")
PER_IMAGE_DIR = "per_image"


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _table(per_set: Callable[[str, str], dict[str, Any]], pooled: Callable[[str], dict[str, Any]],
           set_names: list[str], groups: dict[str, list[str]], degradations: list[str]) -> list[dict[str, Any]]:
    """Table rows: one per (set, degradation) from `per_set(name, degradation)`, then `average` (the mean
    over sets, each set weighted once), `pooled` (`pooled(degradation)`: every image of every set
    weighted once) and one mean per group."""
    table = []
    for deg in degradations:
        summaries: dict[str, dict[str, Any]] = {}
        for name in set_names:
            summaries[name] = per_set(name, deg)
            table.append({"kind": "set", "name": name, "degradation": deg, **summaries[name]})
        for kind, name, members in [("average", "average", set_names)] + [("group", g, m) for g, m in groups.items()]:
            summary: dict[str, Any] = {k: int(sum(summaries[m][k] for m in members)) for k in COUNT_KEYS}
            summary.update({k: _nanmean([summaries[m][k] for m in members]) for k in METRIC_KEYS})
            table.append({"kind": kind, "name": name, "degradation": deg, **summary})
            if kind == "average":
                table.append({"kind": "pooled", "name": "pooled", "degradation": deg, **pooled(deg)})
    return table


def stats_table(stats: dict[tuple[str, str], Stats], set_names: list[str], groups: dict[str, list[str]],
                degradations: list[str]) -> list[dict[str, Any]]:
    """The table from merged partial statistics (`streaming_metrics.collect`): what the job computes."""
    def of(name: str, deg: str) -> Stats:
        return stats.get((name, deg)) or Stats()

    return _table(lambda name, deg: of(name, deg).summary(),
                  lambda deg: sum((of(name, deg) for name in set_names), Stats()).summary(),
                  set_names, groups, degradations)


def aggregate(rows: list[dict[str, Any]], set_names: list[str], groups: dict[str, list[str]],
              degradations: list[str], threshold: float = 0.5) -> list[dict[str, Any]]:
    """The table from per-image rows held in memory (`metrics.summarize`, exact image AUC): the
    reference for `stats_table`, and for small tools; rows with an `error` are left out."""
    def select(names: list[str], deg: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["set"] in names and r["degradation"] == deg and not r.get("error")]

    return _table(lambda name, deg: metrics.summarize(select([name], deg), threshold),
                  lambda deg: metrics.summarize(select(set_names, deg), threshold),
                  set_names, groups, degradations)


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


def read_per_image(eval_dir: str) -> Iterator[dict[str, Any]]:
    """The per-image rows of an evaluation output (in no particular order), streamed file by file."""
    return parts.iter_table(storage.join(eval_dir, PER_IMAGE_DIR))


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def metric_name(row: dict[str, Any], key: str) -> str:
    """MLflow metric name such as `eval/cvip/jpeg_70/pixel_f1` (only MLflow-safe characters)."""
    parts = ["eval", row["name"], row["degradation"].replace(":", "_"), key]
    return "/".join(re.sub(r"[^A-Za-z0-9_.\- ]", "_", str(p)) for p in parts)


def log_to_mlflow(config: Any, table: list[dict[str, Any]], files: dict[str, str], set_names: list[str],
                  stats: dict[tuple[str, str], Stats] | None = None, gpu_decision: str = "") -> str | None:
    """Log the table's metrics and files, and with `stats` (the merged statistics) the figures of
    `figures.log_figures`; a registered model's version gets the table in its model card
    (`record_on_model_card`); `gpu_decision` as the tag bpiml.evaluate.gpu_decision (its own key: the run
    may be a training run). Returns the run id, or None when MLflow is not configured."""
    if not config.mlflow or not (config.tracking_uri or config.mlflow_run_id or config.experiment
                                 or os.environ.get("MLFLOW_TRACKING_URI")):
        return None
    uri = tracking.resolve_tracking_uri(config.tracking_uri)
    run_id = config.mlflow_run_id or tracking.start_or_resume_run(
        uri, config.experiment or "bpiml-eval", run_name="evaluate", tags={"bpiml.job": "evaluate"})
    if not config.mlflow_run_id:
        tracking.log_params(uri, run_id, {"model": config.model, "threshold": config.threshold,
                                          "datasets": ",".join(set_names),
                                          "degrade": ",".join(config.degrade)})
    if gpu_decision:
        tracking.client(uri).set_tag(run_id, "bpiml.evaluate.gpu_decision", gpu_decision)
    values = {metric_name(r, k): float(r[k]) for r in table for k in METRIC_KEYS if not math.isnan(r[k])}
    tracking.log_metrics(uri, run_id, values, step=0)
    mlc = tracking.client(uri)
    for name, text in files.items():
        mlc.log_text(run_id, text, f"evaluation/{name}")
    if stats is not None:
        figures.log_figures(mlc, run_id, table, stats, set_names, config.threshold)
    record_on_model_card(uri, config.model, table, run_id)
    if not config.mlflow_run_id:
        tracking.end_run(uri, run_id)
    logger.info("evaluation logged to MLflow run %s at %s", run_id, uri)
    return run_id


def record_on_model_card(tracking_uri: str, model: str, table: list[dict[str, Any]], run_id: str) -> bool:
    """Write the per-set metrics (each set and degradation, and the average) into the model card of the
    registered version `model` names (its description) and tag the version `bpiml.evaluation_run`; False
    (nothing done) for a model that is not a registered version (a checkpoint, `runs:/...`)."""
    version = tracking.model_version(model, tracking_uri)
    if version is None:
        return False
    evaluations = {r["name"] if r["degradation"] == degrade.CLEAN else f"{r['name']} ({r['degradation']})":
                   {k: float(r[k]) for k in METRIC_KEYS} for r in table if r["kind"] in ("set", "average")}
    card = mlflow_model.with_evaluations(version.description or "", evaluations, f"evaluation run {run_id}")
    mlc = tracking.client(tracking_uri)
    mlc.update_model_version(version.name, version.version, description=card[:tracking.DESCRIPTION_LIMIT])
    mlc.set_model_version_tag(version.name, version.version, "bpiml.evaluation_run", run_id)
    logger.info("evaluation recorded in the model card of %s (version %s)", version.name, version.version)
    return True
