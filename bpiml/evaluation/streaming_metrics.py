"""Test-set metrics from partial sums, so that evaluation never holds its per-image rows.

Each block of per-image rows (the output of `evaluate.Evaluator`) becomes flat sums (`block_sums`)
keyed by `(set, degradation, stat)` (histogram bins: `(set, degradation, "pos" | "neg", bin)`); a
counter actor adds the blocks up (`bpiml.runtime.counter`); the driver turns the totals into one
`Stats` per (set, degradation) (`collect`), adds `Stats` for pooled rows, and reads off the summary
that `metrics.summarize` computes from the rows themselves:

- image counts, the pixel F1 / IoU / AUC means over manipulated images (sum and count of the non-nan
  values), the mean predicted-forged area over authentic images: the same values (up to the order
  of float additions);
- balanced accuracy, from the confusion counts of the image decisions at the threshold: the same;
- image AUC, from one histogram of image scores per label: (manipulated, authentic) pairs in
  different bins count exactly, pairs in one bin count one half (`tie_bound` says how much that can
  move the AUC). The bins are uniform in log-odds over [-LOGIT_RANGE, LOGIT_RANGE]: an image score
  is a maximum probability and crowds near 1, where bins uniform over [0, 1] would tie a confident
  model's scores (a bin is 8e-4 wide in probability at 0.5, 1e-8 near 0.99999).

Memory: 2 x BINS counts per (set, degradation), whatever the number of images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BINS = 10_000
LOGIT_RANGE = 16.0  # float32 probabilities stop below 1 at log-odds ~16.6
PIXEL_KEYS = ("f1", "iou", "auc")


def score_bins(scores: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Histogram bin of each image score (monotone in the score; nan counts as 0)."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    with np.errstate(divide="ignore"):
        logit = np.log(s) - np.log1p(-s)  # -inf at 0, inf at 1
    z = (np.clip(logit, -LOGIT_RANGE, LOGIT_RANGE) + LOGIT_RANGE) / (2 * LOGIT_RANGE)
    return np.minimum((z * bins).astype(np.int64), bins - 1)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def block_sums(rows: Iterable[Mapping[str, Any]], threshold: float, bins: int = BINS) -> dict[tuple, float]:
    """One block of per-image rows -> its partial statistics as flat sums (see module doc).

    Stats: `images`, `manipulated`, `failed` (rows with an `error`: they enter no metric), the image
    decisions `tp` / `fn` / `fp` / `tn`, `<f1|iou|auc|area>_sum` and `_n` (non-nan values only)."""
    out: dict[tuple, float] = {}

    def add(key: tuple, value: float = 1.0) -> None:
        out[key] = out.get(key, 0.0) + value

    for r in rows:
        at = (str(r["set"]), str(r["degradation"]))
        if r.get("error"):
            add((*at, "failed"))
            continue
        manipulated, score = bool(r["manipulated"]), _number(r["score"])
        add((*at, "images"))
        add((*at, "manipulated"), float(manipulated))
        add((*at, {(True, True): "tp", (True, False): "fn", (False, True): "fp", (False, False): "tn"}
             [(manipulated, score > threshold)]))
        add((*at, "pos" if manipulated else "neg", int(score_bins(np.array([score]), bins)[0])))
        values = {k: _number(r.get(k)) for k in PIXEL_KEYS} if manipulated else {"area": _number(r.get("area"))}
        for key, value in values.items():
            if not math.isnan(value):
                add((*at, f"{key}_sum"), value)
                add((*at, f"{key}_n"))
    return out


@dataclass
class Stats:
    """The merged sums of one (set, degradation), or of several added together (pooled rows)."""

    sums: dict[str, float] = field(default_factory=dict)
    pos: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))  # scores of manipulated images
    neg: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))  # scores of authentic images

    def __add__(self, other: Stats) -> Stats:
        keys = set(self.sums) | set(other.sums)
        return Stats({k: self.sums.get(k, 0.0) + other.sums.get(k, 0.0) for k in keys},
                     self.pos + other.pos, self.neg + other.neg)

    def get(self, key: str) -> float:
        return self.sums.get(key, 0.0)

    def _mean(self, key: str) -> float:
        n = self.get(f"{key}_n")
        return self.get(f"{key}_sum") / n if n else math.nan

    def auc(self) -> float:
        """Image AUC from the histograms (ties within a bin count one half); nan unless both labels occur."""
        n_pos, n_neg = int(self.pos.sum()), int(self.neg.sum())
        if not n_pos or not n_neg:
            return math.nan
        below = np.cumsum(self.neg) - self.neg  # authentic scores in lower bins
        wins = float(np.dot(self.pos.astype(np.float64), below + 0.5 * self.neg))
        return wins / (n_pos * n_neg)

    def tie_bound(self) -> float:
        """The most the histogram AUC can differ from the exact one: half the share of tied pairs."""
        n_pairs = float(self.pos.sum()) * float(self.neg.sum())
        return 0.5 * float(np.dot(self.pos.astype(np.float64), self.neg)) / n_pairs if n_pairs else 0.0

    def summary(self) -> dict[str, float | int]:
        """The keys and values of `metrics.summarize` over the rows these sums came from."""
        n, n_manip = int(self.get("images")), int(self.get("manipulated"))
        n_auth = n - n_manip
        out: dict[str, float | int] = {
            "n_images": n, "n_manipulated": n_manip, "n_authentic": n_auth,
            **{f"pixel_{k}": self._mean(k) for k in PIXEL_KEYS},
            "image_auc": math.nan, "image_bacc": math.nan,
        }
        if n_auth:
            rates = ([self.get("tp") / n_manip] if n_manip else []) + [self.get("tn") / n_auth]
            out.update(image_auc=self.auc(), image_bacc=float(np.mean(rates)))
        out["authentic_area"] = self._mean("area")
        return out


def collect(totals: Mapping[Any, float], bins: int = BINS) -> dict[tuple[str, str], Stats]:
    """Added-up `block_sums` (other keys ignored) -> {(set, degradation): Stats}."""
    out: dict[tuple[str, str], Stats] = {}
    for key, value in totals.items():
        if not isinstance(key, tuple) or len(key) not in (3, 4):
            continue
        stats = out.setdefault((key[0], key[1]), Stats(pos=np.zeros(bins, np.int64), neg=np.zeros(bins, np.int64)))
        if len(key) == 4:
            getattr(stats, key[2])[key[3]] += int(value)
        else:
            stats.sums[key[2]] = stats.get(key[2]) + value
    return out
