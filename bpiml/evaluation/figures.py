"""Evaluation figures for MLflow, drawn from the table and the merged statistics (never from per-image rows).

- `metric_bars`: pixel F1, pixel AUC and image AUC per set (and the average / pooled rows), one group of
  bars per (set, degradation);
- `image_f1_by_threshold`: image-level F1 (an image is called manipulated when its score, the map's
  maximum, exceeds the threshold) against the threshold, per set, from the score histograms. Pixel F1
  against the threshold is not drawn: the statistics keep pixel sums at the one evaluation threshold only;
- `reliability`: the calibration of image scores: the share of manipulated images against the mean score
  in ten score bins, per set, with the ideal diagonal.

Figures are `matplotlib.figure.Figure` objects (no pyplot, no global backend); `log_figures` logs them to
an MLflow run under `evaluation/figures/`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bpiml.data import degrade
from bpiml.evaluation.streaming_metrics import LOGIT_RANGE, Stats

BAR_KEYS = ("pixel_f1", "pixel_auc", "image_auc")
CALIBRATION_BINS = 10


def bin_scores(bins: int, at: float = 0.5) -> np.ndarray:
    """The score (probability) of each histogram bin of `streaming_metrics.score_bins`: its centre (`at` 0.5)
    or its lower edge (`at` 0)."""
    logit = (np.arange(bins) + at) / bins * 2 * LOGIT_RANGE - LOGIT_RANGE
    return 1.0 / (1.0 + np.exp(-logit))


def f1_by_threshold(stats: Stats) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, image-level F1) at each histogram bin's lower edge: images in that bin and above are called
    manipulated (exact at the edges, where a score equal to the edge is counted as above)."""
    pos, neg = stats.pos.astype(np.float64), stats.neg.astype(np.float64)
    tp = np.cumsum(pos[::-1])[::-1]  # manipulated images at or above each bin
    fp = np.cumsum(neg[::-1])[::-1]
    fn = pos.sum() - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return bin_scores(len(pos), at=0.0), f1


def calibration(stats: Stats, bins: int = CALIBRATION_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean score, share manipulated, images) per uniform score bin that holds images."""
    scores = bin_scores(len(stats.pos))
    which = np.minimum((scores * bins).astype(int), bins - 1)
    pos = np.bincount(which, weights=stats.pos, minlength=bins)
    count = pos + np.bincount(which, weights=stats.neg, minlength=bins)
    mean = np.bincount(which, weights=scores * (stats.pos + stats.neg), minlength=bins)
    kept = count > 0
    return mean[kept] / count[kept], pos[kept] / count[kept], count[kept]


def metric_bars(table: list[dict[str, Any]]) -> Figure:
    rows = [r for r in table if r["kind"] in ("set", "average", "pooled")]
    fig = Figure(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    width = 0.8 / len(BAR_KEYS)
    for i, key in enumerate(BAR_KEYS):
        values = [0.0 if math.isnan(r[key]) else r[key] for r in rows]
        ax.bar(x + (i - 1) * width, values, width, label=key)
    ax.set_xticks(x, [f"{r['name']}\n{r['degradation']}" for r in rows], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("value (missing = 0)")
    ax.set_title("per-set metrics")
    ax.legend(fontsize=8)
    return fig


def _unit_axes(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, [0, 1] on both axes, a title and the legend."""
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=8)


def image_f1_by_threshold(stats: dict[str, Stats], threshold: float) -> Figure:
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for name, s in stats.items():
        if s.pos.sum():
            edges, f1 = f1_by_threshold(s)
            ax.plot(edges, f1, label=name)
    ax.axvline(threshold, color="grey", linestyle=":", label=f"threshold {threshold:g}")
    _unit_axes(ax, "image score threshold", "image-level F1", "image-level F1 against the threshold (clean)")
    return fig


def reliability(stats: dict[str, Stats]) -> Figure:
    fig = Figure(figsize=(5.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    for name, s in stats.items():
        if s.pos.sum() + s.neg.sum():
            mean, share, count = calibration(s)
            ax.plot(mean, share, marker="o", label=f"{name} ({int(count.sum())} images)")
    _unit_axes(ax, "mean image score in bin", "share of manipulated images", "reliability of image scores (clean)")
    return fig


def figures(table: list[dict[str, Any]], stats: dict[tuple[str, str], Stats], set_names: list[str],
            threshold: float) -> dict[str, Figure]:
    """Artifact file name -> figure, for the clean pass of each set and all sets pooled."""
    clean_stats = {name: stats.get((name, degrade.CLEAN)) or Stats() for name in set_names}
    if len(set_names) > 1:
        clean_stats["pooled"] = sum(clean_stats.values(), Stats())
    return {"metrics.png": metric_bars(table), "image_f1_by_threshold.png": image_f1_by_threshold(clean_stats, threshold),
            "image_score_reliability.png": reliability(clean_stats)}


def log_figures(mlflow_client: Any, run_id: str, table: list[dict[str, Any]], stats: dict[tuple[str, str], Stats],
                set_names: list[str], threshold: float) -> list[str]:
    """Log `figures` under `evaluation/figures/`; returns the artifact paths."""
    paths = []
    for name, fig in figures(table, stats, set_names, threshold).items():
        path = f"evaluation/figures/{name}"
        mlflow_client.log_figure(run_id, fig, path)
        paths.append(path)
    return paths
