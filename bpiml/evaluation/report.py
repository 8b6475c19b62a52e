"""Visual report: a self-contained HTML page plus a PNG grid, worst samples first.

Each sample row shows image | boxes | pseudo mask | prediction | ground truth (masks as red overlays,
boxes in green); missing panels are grey. The page also holds the metric tables and the training
curves as inline SVG line charts (no plotting library needed). Files written to `out_dir`
(local or s3://): `index.html`, `grid.png`, `samples/<n>_<id>.png`.
"""

from __future__ import annotations

import argparse
import heapq
import html
import json
import logging
import math
import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from bpiml.data import imageio, manifest, metrics, naming, storage
from bpiml.data.visual import PANELS, grid, sample_row
from bpiml.evaluation.audit import audit_pseudo_labels
from bpiml.evaluation.report_html import CSS, curves_html, fmt, html_table
from bpiml.evaluation.tables import read_per_image
from bpiml.pseudolabel.store import PseudoStore
from bpiml.runtime import tracking

logger = logging.getLogger(__name__)

def sample_score(sample: Mapping[str, Any]) -> float:
    """F1 used to sort samples: given, else prediction vs GT, else pseudo vs GT; nan when unknown."""
    if sample.get("f1") is not None:
        return float(sample["f1"])
    gt = sample.get("gt")
    if gt is None or not np.asarray(gt).any():
        return math.nan
    for key in ("pred", "pseudo"):
        if sample.get(key) is not None:
            m = np.asarray(sample[key])
            if m.shape == np.asarray(gt).shape:
                return metrics.pixel_f1(m, gt)
    return math.nan


# --- the report ------------------------------------------------------------------------------
def build_report(samples: Sequence[Mapping[str, Any]], tables: Mapping[str, Sequence[Mapping[str, Any]]],
                 curves: Mapping[str, Any], out_dir: str, title: str = "bpiml report",
                 mlflow_run_id: str | None = None, max_samples: int = 48, tracking_uri: str = "") -> str:
    """Write the report; returns the URI of `index.html`.

    samples: dicts with "id", "image" (HxWx3 uint8) and optional "boxes", "pseudo", "pred", "gt"
    (HxW masks or probabilities) and "f1" (else computed); sorted worst first, at most `max_samples`.
    tables: name -> rows (dicts). curves: name -> list of numbers, or name -> {series: list}.
    """
    files: dict[str, bytes] = {}
    scored = [(sample_score(s), i, s) for i, s in enumerate(samples)]
    scored.sort(key=lambda t: (math.isnan(t[0]), t[0], t[1]))  # worst first, unknown scores last
    scored = scored[:max_samples]
    figures, strips, captions = [], [], []
    for rank, (score, _, sample) in enumerate(scored):
        strip = sample_row(sample)
        name = f"samples/{rank:03d}_{naming.file_stem(str(sample['id']))}.png"
        files[name] = imageio.encode_image(strip, "png")
        caption = f"#{rank + 1} {sample['id']}  F1 {fmt(score)}"
        extra = {k: sample[k] for k in ("iou", "teacher", "set") if sample.get(k) is not None}
        caption += "".join(f"  {k} {fmt(v)}" for k, v in extra.items())
        strips.append(strip)
        captions.append(caption)
        figures.append(f'<figure><figcaption>{html.escape(caption)}</figcaption>'
                       f'<img src="{name}" alt="{html.escape(str(sample["id"]))}" width="{strip.shape[1]}" '
                       f'height="{strip.shape[0]}"></figure>')
    if strips:
        files["grid.png"] = imageio.encode_image(grid(strips, captions), "png")
    grid_link = '<a href="grid.png">all in one PNG</a>' if strips else ""
    table_html = "".join(f"<h3>{html.escape(name)}</h3>{html_table(rows)}" for name, rows in tables.items())
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<h2>Metrics</h2>{table_html or '<p>(no tables)</p>'}"
            f"<h2>Training curves</h2>{curves_html(curves)}"
            f"<h2>Samples, worst first ({len(figures)} of {len(samples)})</h2>"
            f"<p>{' | '.join(PANELS)}; masks tinted red with a yellow outline, boxes in green. {grid_link}</p>"
            f"{''.join(figures) or '<p>(no samples)</p>'}</body></html>")
    files["index.html"] = page.encode("utf-8")
    for name, data in files.items():
        storage.write_bytes(storage.join(out_dir, name), data)
    if mlflow_run_id:
        log_report_to_mlflow(files, mlflow_run_id, tracking_uri=tracking_uri)
    index = storage.join(out_dir, "index.html")
    logger.info("report with %d samples, %d tables, %d curves -> %s", len(figures), len(tables), len(curves), index)
    return index


def log_report_to_mlflow(files: Mapping[str, bytes], run_id: str, artifact_path: str = "report",
                         tracking_uri: str = "") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            path = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        tracking.client(tracking.resolve_tracking_uri(tracking_uri)).log_artifacts(run_id, tmp, artifact_path)


# --- from an evaluation output and a pseudo-labeled store -------------------------------------
def _norm(uri: str) -> str:
    return storage.absolute(uri)


def pseudo_index(store: str) -> dict[str, dict[str, Any]]:
    """Resolved image URI -> {"boxes", "pseudo_mask" URI, "teacher", "gt"} of a pseudo-labeled store."""
    opened = PseudoStore.open(store)
    index = {}
    for r in manifest.read_manifest(opened.root):
        index[_norm(opened.image(r))] = {"id": r.id, "boxes": r.boxes, "teacher": r.extra.get("teacher"),
                                         "pseudo_mask": opened.pseudo_mask(r), "gt": opened.mask(r)}
    return index


def report_samples(eval_dir: str | None, store: str | None, set_name: str | None = None,
                 limit: int = 48, audit_rows: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Samples from an evaluation's per-image rows (clean predictions) joined with a pseudo-labeled store.

    Only the `limit` worst rows (by the evaluation's F1) are read from disk. With only a store, its
    records become samples without prediction: the `limit` worst by pseudo-vs-GT IoU when
    `audit_rows` (from `bpiml.evaluation.audit`) are given, else the first `limit`.
    """
    pseudo = pseudo_index(store) if store else {}
    if eval_dir:
        rows = (r for r in read_per_image(eval_dir) if r["degradation"] == "none" and not r.get("error")
                and (set_name is None or r["set"] == set_name))
        worst = heapq.nsmallest(limit, rows, key=lambda r: (r["f1"] is None, r["f1"] if r["f1"] is not None else 0.0,
                                                            r["set"], r["id"]))  # streamed: holds `limit` rows
        entries = [{"id": r["id"], "image": r["image"], "gt": r["mask"] or None, "f1": r["f1"], "iou": r["iou"],
                    "set": r["set"], "pred": storage.join(eval_dir, r["pred_mask"]) if r.get("pred_mask") else None}
                   for r in worst]
    else:
        order = {r["id"]: r["iou"] for r in audit_rows or []}
        chosen = sorted(pseudo.items(), key=lambda kv: order.get(kv[1]["id"], math.inf))[:limit]
        entries = [{"id": p["id"], "image": uri, "gt": p["gt"], "pred": None} for uri, p in chosen]
    samples = []
    for e in entries:
        p = pseudo.get(_norm(e["image"]), {})
        try:
            sample = {"id": e["id"], "image": imageio.load_image(e["image"])[0], "boxes": p.get("boxes"),
                      "teacher": p.get("teacher"), "f1": e.get("f1"), "iou": e.get("iou"), "set": e.get("set")}
            for key, uri in (("gt", e["gt"] or p.get("gt")), ("pred", e["pred"]), ("pseudo", p.get("pseudo_mask"))):
                sample[key] = imageio.load_mask(uri) if uri else None
        except Exception as err:
            logger.warning("report: skipping %s: %s: %s", e["id"], type(err).__name__, err)
            continue
        samples.append(sample)
    return samples


def mlflow_curves(run_id: str, keys: Sequence[str] | None = None, tracking_uri: str = "") -> dict[str, list[float]]:
    """Metric histories (more than one point) of an MLflow run, all its metrics or `keys`, by step."""
    client = tracking.client(tracking.resolve_tracking_uri(tracking_uri))
    names = list(keys) if keys else sorted(client.get_run(run_id).data.metrics)
    out = {}
    for name in names:
        history = sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))
        if len(history) > 1:
            out[name] = [m.value for m in history]
    return out


def run_report(args: argparse.Namespace) -> int:
    """`bpiml report` after parsing (`bpiml.evaluation.cli.report_parser`): tables, samples, curves -> the page."""
    tables: dict[str, list[dict[str, Any]]] = {}
    audit_rows = None
    if args.eval_dir:
        result = json.loads(storage.read_bytes(storage.join(args.eval_dir, "results.json")))
        keys = ("name", "degradation", "n_images", "n_manipulated", "n_authentic", "pixel_f1", "pixel_iou",
                "pixel_auc", "image_auc", "image_bacc")
        tables["evaluation"] = [{k: (math.nan if r.get(k) is None else r[k]) for k in keys} for r in result["table"]]
    if args.store:
        try:
            audit = audit_pseudo_labels(args.store, worst_k=0)
            audit_rows = audit["rows"]
            tables["pseudo-mask audit (vs GT)"] = [
                {"teacher": name, **{k: s[k] for k in ("n", "iou_mean", "iou_median", "boundary_f1_mean",
                                                        "boundary_f1_median")}}
                for name, s in [*audit["teachers"].items(), ("all", audit["all"])]]
        except ValueError as err:
            logger.warning("no pseudo-mask audit: %s", err)
    curves: dict[str, Any] = {}
    if args.curves:
        curves.update(json.loads(storage.read_bytes(args.curves)))
    if args.curves_run_id:
        curves.update(mlflow_curves(args.curves_run_id, tracking_uri=args.tracking_uri))
    samples = report_samples(args.eval_dir, args.store, args.set_name, args.max_samples, audit_rows)
    index = build_report(samples, tables, curves, args.out, args.title, args.mlflow_run_id, args.max_samples,
                         args.tracking_uri)
    print(f"report: {index}")
    return 0
