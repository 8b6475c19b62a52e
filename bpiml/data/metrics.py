"""Pixel- and image-level metrics for manipulation localization (numpy only, any device upstream).

Conventions (IMDL-BenCo style, made explicit):

- A pixel is predicted positive when its probability is strictly greater than `threshold` (0.5),
  so a logit of exactly 0 (probability 0.5) counts as negative. Image-level decisions use the
  same rule on the image score.
- Per-image pixel F1 = 2TP / (2TP + FP + FN) and IoU = TP / (TP + FP + FN), with no epsilon.
  When the denominator is zero (ground truth *and* prediction empty) both are defined as 1.0:
  an empty prediction on an empty mask is a correct answer. (IMDL-BenCo adds an epsilon and
  gets 0.0 there.) The choice only matters when you call these functions yourself: dataset
  averages of pixel metrics are taken over **manipulated images only** (GT mask with at least one
  positive pixel); authentic images are excluded from pixel averages and enter the image-level
  detection metrics instead. This is the usual protocol of IMDL-BenCo and the papers built on it.
- Per-image pixel AUC is the exact rank statistic (Mann-Whitney U with mid-ranks for ties), defined
  only where the mask holds both classes; `nan` otherwise, and nan values are left out of averages.
- Image-level detection: score = max pixel probability, label = GT mask has a positive pixel.
  AUC over images (exact, ties count one half), balanced accuracy at `threshold`.
- Boundary F1 (for pseudo-mask audits): boundaries are mask pixels with a 4-neighbour outside the
  mask (image borders do not count as outside); a boundary pixel matches when the other mask's
  boundary lies within `tolerance` pixels (Euclidean). Both boundaries empty -> 1.0, one empty -> 0.0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Mapping

import numpy as np
from scipy import ndimage

THRESHOLD = 0.5


def _as_bool(mask: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    return mask > threshold


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} differs from ground-truth shape {b.shape}")


def confusion(prob: np.ndarray, gt: np.ndarray, threshold: float = THRESHOLD) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) pixel counts of `prob > threshold` against the boolean mask `gt`."""
    pred = _as_bool(prob, threshold)
    gt = _as_bool(gt)
    _check_same_shape(pred, gt)
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    tn = int(pred.size - tp - fp - fn)
    return tp, fp, fn, tn


def pixel_f1(prob: np.ndarray, gt: np.ndarray, threshold: float = THRESHOLD) -> float:
    """Pixel F1 of one image; 1.0 when prediction and GT are both empty (see module doc)."""
    tp, fp, fn, _ = confusion(prob, gt, threshold)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def pixel_iou(prob: np.ndarray, gt: np.ndarray, threshold: float = THRESHOLD) -> float:
    """Pixel IoU of one image; 1.0 when prediction and GT are both empty (see module doc)."""
    tp, fp, fn, _ = confusion(prob, gt, threshold)
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC = P(score_pos > score_neg) + 0.5 P(tie) (scikit-learn); nan unless both classes occur."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores ({scores.size}) and labels ({labels.size}) differ in length")
    if labels.all() or not labels.any():
        return math.nan
    # Imported here: scikit-learn costs ~1.5 s to import, and most users of this module (the
    # pseudo-labeling tasks, the training loop) only need F1/IoU.
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def pixel_auc(prob: np.ndarray, gt: np.ndarray) -> float:
    """Per-image pixel AUC; nan when the mask lacks either class."""
    prob = np.asarray(prob)
    gt = _as_bool(gt)
    _check_same_shape(prob, gt)
    return rank_auc(prob, gt)


def image_score(prob: np.ndarray) -> float:
    """Image-level manipulation score: the maximum pixel probability (0 for an empty array)."""
    prob = np.asarray(prob)
    return float(prob.max()) if prob.size else 0.0


def balanced_accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float = THRESHOLD) -> float:
    """(TPR + TNR) / 2 with `score > threshold` as positive; the mean of the rates that exist."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    pred = scores > threshold
    rates = []
    if labels.any():
        rates.append(float((pred & labels).sum() / labels.sum()))
    if (~labels).any():
        rates.append(float((~pred & ~labels).sum() / (~labels).sum()))
    return float(np.mean(rates)) if rates else math.nan


def detection_metrics(scores: Iterable[float], labels: Iterable[bool], threshold: float = THRESHOLD) -> dict[str, float]:
    """Image-level AUC and balanced accuracy (nan AUC when only one class is present)."""
    s = np.asarray(list(scores), dtype=np.float64)
    y = np.asarray(list(labels), dtype=bool)
    return {"image_auc": rank_auc(s, y), "image_bacc": balanced_accuracy(s, y, threshold)}


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boolean map of mask pixels that have a 4-neighbour outside the mask (inner boundary)."""
    m = _as_bool(mask)
    padded = np.pad(m, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return m & ~interior


def boundary_f1(pred: np.ndarray, gt: np.ndarray, tolerance: float = 2.0) -> float:
    """Boundary F1 of two masks with a pixel tolerance (see module doc for the edge cases)."""
    pb, gb = boundary(pred), boundary(gt)
    _check_same_shape(pb, gb)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    dist_to_g = ndimage.distance_transform_edt(~gb)
    dist_to_p = ndimage.distance_transform_edt(~pb)
    precision = float((dist_to_g[pb] <= tolerance).sum() / n_p)
    recall = float((dist_to_p[gb] <= tolerance).sum() / n_g)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def image_row(prob: np.ndarray, gt: np.ndarray | None, threshold: float = THRESHOLD) -> dict[str, float | bool]:
    """All per-image metrics of one prediction. `gt=None` means authentic (an all-zero mask).

    Pixel F1/IoU/AUC are nan for authentic images so that averages skip them.
    """
    prob = np.asarray(prob, dtype=np.float32)
    gt_bool = np.zeros(prob.shape, dtype=bool) if gt is None else _as_bool(gt)
    manipulated = bool(gt_bool.any())
    row: dict[str, float | bool] = {"manipulated": manipulated, "score": image_score(prob),
                                    "area": float((prob > threshold).mean()) if prob.size else math.nan}
    if manipulated:
        row.update(f1=pixel_f1(prob, gt_bool, threshold), iou=pixel_iou(prob, gt_bool, threshold),
                   auc=pixel_auc(prob, gt_bool))
    else:
        row.update(f1=math.nan, iou=math.nan, auc=math.nan)
    return row


class MeanAccumulator:
    """Running means of named per-image values; nan/None values are skipped and counted apart.

    >>> acc = MeanAccumulator(); acc.add({"f1": 1.0}); acc.add({"f1": 0.0, "auc": float("nan")})
    >>> acc.means()["f1"], acc.counts()["f1"], acc.counts().get("auc", 0)
    (0.5, 2, 0)
    """

    def __init__(self) -> None:
        self._sum: dict[str, float] = defaultdict(float)
        self._n: dict[str, int] = defaultdict(int)
        self.images = 0

    def add(self, values: Mapping[str, float | None]) -> None:
        self.images += 1
        for key, value in values.items():
            if value is None or isinstance(value, bool):
                continue
            value = float(value)
            if math.isnan(value):
                continue
            self._sum[key] += value
            self._n[key] += 1

    def means(self) -> dict[str, float]:
        """Mean per key (keys that only ever saw nan are absent)."""
        return {k: self._sum[k] / self._n[k] for k in self._sum if self._n[k]}

    def mean(self, key: str) -> float:
        return self._sum[key] / self._n[key] if self._n.get(key) else math.nan

    def counts(self) -> dict[str, int]:
        return dict(self._n)


def summarize(rows: Iterable[Mapping[str, object]], threshold: float = THRESHOLD) -> dict[str, float | int]:
    """Dataset summary of `image_row` outputs: pixel means over manipulated images, image metrics.

    Image-level AUC / balanced accuracy are reported only when authentic images exist
    (nan otherwise: a detection metric on manipulated-only sets is meaningless).
    """
    rows = list(rows)
    acc = MeanAccumulator()
    for r in rows:
        if r.get("manipulated"):
            acc.add({k: r.get(k) for k in ("f1", "iou", "auc")})  # type: ignore[misc]
    labels = [bool(r.get("manipulated")) for r in rows]
    scores = [float(r.get("score", 0.0)) for r in rows]  # type: ignore[arg-type]
    n_auth = labels.count(False)
    out: dict[str, float | int] = {
        "n_images": len(rows),
        "n_manipulated": len(rows) - n_auth,
        "n_authentic": n_auth,
        "pixel_f1": acc.mean("f1"),
        "pixel_iou": acc.mean("iou"),
        "pixel_auc": acc.mean("auc"),
        "image_auc": math.nan,
        "image_bacc": math.nan,
    }
    if n_auth:
        out.update(detection_metrics(scores, labels, threshold))
    # the share of each authentic image predicted forged (calibration: 0 is right), nan without authentic images
    areas = [float(r["area"]) for r in rows if not r.get("manipulated") and r.get("area") is not None]  # type: ignore[arg-type]
    areas = [a for a in areas if not math.isnan(a)]
    out["authentic_area"] = float(np.mean(areas)) if areas else math.nan
    return out
