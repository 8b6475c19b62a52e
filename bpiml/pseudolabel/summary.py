"""The summary of a pseudo-labeling run (`summary.json` and the table printed at the end)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from bpiml.pseudolabel.confidence import format_confidence
from bpiml.pseudolabel.config import PseudoLabelConfig
from bpiml.runtime.resources import GpuDecision


@dataclasses.dataclass
class Summary:
    teacher: str  # teacher name (sam | grabcut | box)
    teacher_identity: str  # what produced this run's masks (teacher + weights)
    images_in_manifest: int  # input records this run looked at (all of them, or the first --limit)
    labeled_this_run: int
    skipped_already_labeled: int  # input records whose mask was there with the same fingerprint
    relabeled: int  # input records labeled again: teacher, weights or the record changed
    rejected: int  # input records this run could not label (see rejects/)
    duplicates: int  # input lines whose id another line shares (each rejected, counted in `rejected` too)
    converted_or_clipped: int  # labeled after a conversion of the image or a clip of its boxes
    superseded_removed: int  # older records removed because this run replaced them
    labeled_total: int  # records in the output now
    teachers: dict[str, int]  # teacher_version -> records in the output now
    reject_rate: float
    rejected_by_stage: dict[str, int]
    seconds: float
    images_per_second: float
    mean_iou_vs_gt: float | None  # this run's pseudo masks against GT masks, where the store has them
    images_with_gt: int
    out: str
    confidence: dict[str, Any] | None = None  # teacher confidence of the records in the output now (confidence.py)
    gpus_per_worker: float | None = None  # GPUs per teacher actor this run asked for
    gpu_decision: str = ""  # that number and why (`bpiml.runtime.resources.GpuDecision`)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_counts(self) -> None:
        """Every input line has exactly one outcome in a run: labeled, skipped (already labeled) or
        rejected (duplicates and bad lines included, one reject row each). RuntimeError otherwise."""
        outcomes = self.labeled_this_run + self.skipped_already_labeled + self.rejected
        if outcomes != self.images_in_manifest:
            raise RuntimeError(
                f"pseudo-labeling counts do not add up: {self.images_in_manifest} input lines, but labeled "
                f"{self.labeled_this_run} + skipped {self.skipped_already_labeled} + rejected {self.rejected} = "
                f"{outcomes}; see {self.out}/summary.json and rejects/ (this is a bug: please report it)")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def build_summary(cfg: PseudoLabelConfig, counts: dict[str, float], committed: dict[str, Any], elapsed: float,
                  identity: str, decision: GpuDecision) -> Summary:
    count = lambda key: int(counts.get(key, 0))  # noqa: E731
    stats = committed["stats"]
    labeled, iou_n = count("labeled"), count("iou_n")
    return Summary(
        teacher=cfg.resolved_teacher, teacher_identity=identity, images_in_manifest=count("input"),
        labeled_this_run=labeled, skipped_already_labeled=count("skipped"), relabeled=count("relabel"),
        rejected=count("rejected"), duplicates=count("duplicate"), converted_or_clipped=count("notes"),
        superseded_removed=int(committed["removed"]["removed"]), labeled_total=int(stats["records"]),
        teachers=dict(stats["teachers"]), reject_rate=round(count("rejected") / max(count("input"), 1), 6),
        rejected_by_stage={k.split(":", 1)[1]: int(v) for k, v in counts.items() if k.startswith("rejected:")},
        seconds=round(elapsed, 2), images_per_second=round(labeled / elapsed, 2) if elapsed > 0 and labeled else 0.0,
        mean_iou_vs_gt=round(counts["iou_sum"] / iou_n, 4) if iou_n else None, images_with_gt=iou_n, out=cfg.out,
        confidence=stats["confidence"].summary() if "confidence" in stats else None, **decision.record())


def format_summary(summary: Summary) -> str:
    iou = summary.mean_iou_vs_gt
    teachers = ", ".join(f"{k}: {v}" for k, v in sorted(summary.teachers.items())) or "none"
    rows = [
        ("teacher", f"{summary.teacher} ({summary.teacher_identity})"),
        *([("GPUs", summary.gpu_decision)] if summary.gpu_decision else []),
        ("images in manifest", summary.images_in_manifest),
        ("labeled this run", summary.labeled_this_run),
        ("skipped (already labeled)", summary.skipped_already_labeled),
        ("relabeled (fingerprint changed)", summary.relabeled),
        ("rejected", f"{summary.rejected} ({summary.reject_rate:.1%}) {summary.rejected_by_stage or ''}".rstrip()),
        ("converted / clipped", summary.converted_or_clipped),
        ("records in the output", f"{summary.labeled_total} ({teachers})"),
        ("throughput", f"{summary.images_per_second} images/s over {summary.seconds} s"),
        ("mean pseudo-vs-GT IoU", "n/a (no GT masks)" if iou is None else f"{iou:.4f} over {summary.images_with_gt} images"),
        *format_confidence(summary.confidence),
        ("output", summary.out),
    ]
    if len(summary.teachers) > 1:
        rows.append(("WARNING", "the output holds masks of more than one teacher (see 'records in the output')"))
    width = max(len(k) for k, _ in rows)
    return "pseudo-labeling summary\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
