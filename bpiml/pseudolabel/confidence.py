"""The teacher confidence of a pseudo store's records, summed up: histogram, quantiles, mean, how many to review.

`ConfidenceStats` adds records one at a time (or merges partial stats from Ray tasks) and keeps only
counts: a 1000-bin histogram over [0, 1], the sum, the number of records without a confidence
(the box teacher, images without boxes) and the exact number under the review threshold. The
summary's 10-bin histogram is read off the fine one; quantiles are exact to one fine bin (0.001).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

FINE_BINS = 1000  # histogram bins over [0, 1] that stats keep
SUMMARY_BINS = 10  # histogram bins in summary.json
QUANTILES = (5, 25, 50, 75, 95)  # percentiles in summary.json


@dataclasses.dataclass
class ConfidenceStats:
    review_below: float  # records with confidence < this are counted as `below_review`
    hist: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(FINE_BINS, np.int64))
    total: float = 0.0  # sum of confidences
    null: int = 0  # records without a confidence
    below: int = 0  # records with confidence < review_below

    def add(self, confidence: Any) -> None:
        if confidence is None:
            self.null += 1
            return
        value = min(max(float(confidence), 0.0), 1.0)
        self.hist[min(int(value * FINE_BINS), FINE_BINS - 1)] += 1
        self.total += value
        self.below += value < self.review_below

    def merge(self, other: ConfidenceStats) -> None:
        self.hist += other.hist
        self.total += other.total
        self.null += other.null
        self.below += other.below

    def to_counts(self) -> dict[str, Any]:
        """A small JSON-able form (non-zero bins only) for Ray tasks to return."""
        nonzero = np.flatnonzero(self.hist)
        return {"bins": {int(i): int(self.hist[i]) for i in nonzero}, "total": self.total, "null": self.null,
                "below": self.below}

    @classmethod
    def from_counts(cls, review_below: float, counts: dict[str, Any]) -> ConfidenceStats:
        stats = cls(review_below, total=float(counts["total"]), null=int(counts["null"]), below=int(counts["below"]))
        for i, n in counts["bins"].items():
            stats.hist[int(i)] = n
        return stats

    @property
    def count(self) -> int:
        return int(self.hist.sum())

    def quantile(self, q: float) -> float | None:
        """The `q`-quantile (0..1) to one fine bin: the midpoint of the bin that holds it."""
        if not self.count:
            return None
        index = int(np.searchsorted(np.cumsum(self.hist), q * self.count, side="left"))
        return round((min(index, FINE_BINS - 1) + 0.5) / FINE_BINS, 4)

    def summary(self) -> dict[str, Any]:
        """What summary.json holds under `confidence`."""
        coarse = self.hist.reshape(SUMMARY_BINS, FINE_BINS // SUMMARY_BINS).sum(axis=1)
        return {
            "images_with_confidence": self.count,
            "images_without_confidence": self.null,
            "mean": round(self.total / self.count, 4) if self.count else None,
            "quantiles": {f"p{p}": self.quantile(p / 100) for p in QUANTILES},
            "histogram": {"edges": [round(i / SUMMARY_BINS, 2) for i in range(SUMMARY_BINS + 1)],
                          "counts": [int(n) for n in coarse]},
            "review_below": self.review_below,
            "below_review": self.below,
        }


def format_confidence(summary: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Rows of the printed summary for the `confidence` part of summary.json."""
    if not summary or not summary.get("images_with_confidence"):
        null = (summary or {}).get("images_without_confidence", 0)
        return [("teacher confidence", f"none ({null} images without one: box teacher or no boxes)")]
    quantiles = " ".join(f"{k} {v:.3f}" for k, v in summary["quantiles"].items())
    hist = " ".join(str(n) for n in summary["histogram"]["counts"])
    return [
        ("teacher confidence", (f"mean {summary['mean']:.3f} over {summary['images_with_confidence']} images "
                                f"({summary['images_without_confidence']} without one)")),
        ("  quantiles", quantiles),
        ("  histogram (10 bins 0..1)", hist),
        (f"  to review (< {summary['review_below']})", str(summary["below_review"])),
    ]
