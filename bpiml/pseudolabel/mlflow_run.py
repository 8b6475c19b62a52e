"""A pseudo-labeling run in MLflow (`--experiment NAME`; off by default).

One MLflow run per job: params (the resolved config, credentials redacted), the summary's counts
and throughput as metrics, the teacher-confidence histogram as a figure, `summary.json`, and the
review page of the `REVIEW_PAGE_RECORDS` least confident records (drawn into a temporary folder and
logged under `review_page/` by the page writer the job is given: `review/` sits above this package,
so `jobs/pseudolabel.py` passes `bpiml.review.page.write_page` in). Tracking URI: `--tracking-uri`,
else MLFLOW_TRACKING_URI, else the project's sqlite (`bpiml.runtime.tracking`).
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any, Callable

from bpiml.config import redact
from bpiml.pseudolabel.config import PseudoLabelConfig
from bpiml.runtime import tracking

logger = logging.getLogger(__name__)

REVIEW_PAGE_RECORDS = 100  # the review page logged with a run shows this many least confident records
# `bpiml.review.page.write_page`'s signature: (store, out folder, per_page=, limit=) -> the pages written
PageWriter = Callable[..., list[str]]
METRIC_KEYS = ("images_in_manifest", "labeled_this_run", "skipped_already_labeled", "relabeled", "rejected",
               "labeled_total", "reject_rate", "seconds", "images_per_second", "mean_iou_vs_gt")


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's numbers as MLflow metrics (None values are left out)."""
    metrics = {k: summary[k] for k in METRIC_KEYS if summary.get(k) is not None}
    confidence = summary.get("confidence") or {}
    if confidence.get("mean") is not None:
        metrics["confidence_mean"] = confidence["mean"]
        metrics.update({f"confidence_{k}": v for k, v in confidence["quantiles"].items() if v is not None})
    for key in ("below_review", "images_with_confidence", "images_without_confidence"):
        if key in confidence:
            metrics[f"confidence_{key}"] = confidence[key]
    return metrics


def confidence_figure(confidence: dict[str, Any] | None, title: str) -> Any:
    """A matplotlib figure of the confidence histogram, the review threshold marked."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - only a run with --experiment draws

    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    if confidence and confidence.get("images_with_confidence"):
        edges, counts = confidence["histogram"]["edges"], confidence["histogram"]["counts"]
        axes.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", color="#4878a8", edgecolor="white")
        axes.axvline(confidence["review_below"], color="#c44e52", linestyle="--",
                     label=f"review below {confidence['review_below']}: {confidence['below_review']} images")
        axes.legend(loc="upper left")
    else:
        axes.text(0.5, 0.5, "no teacher confidence (box teacher or no boxes)", ha="center", va="center")
    axes.set_xlim(0, 1)
    axes.set_xlabel("teacher confidence (image: min over its boxes)")
    axes.set_ylabel("images")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def log_review_page(mlc: Any, run_id: str, out: str, write_page: PageWriter) -> int:
    """Draw the review page of `out`'s least confident records with `write_page` and log it under
    `review_page/`; returns how many pages were logged (0, with a warning, when it cannot be drawn:
    the run is logged anyway)."""
    with tempfile.TemporaryDirectory(prefix="bpiml-review-page-") as folder:
        try:
            pages = write_page(out, folder, per_page=REVIEW_PAGE_RECORDS, limit=REVIEW_PAGE_RECORDS)
        except (OSError, ValueError) as err:
            logger.warning("review page of %s not logged: %s: %s", out, type(err).__name__, err)
            return 0
        mlc.log_artifacts(run_id, folder, "review_page")
    return len(pages)


def check_tracking(cfg: PseudoLabelConfig) -> str:
    """Reach the tracking server and make the experiment now, before any labeling: a wrong URI fails
    the job at once instead of after the whole run. Returns the tracking URI."""
    uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
    try:
        tracking.ensure_experiment(uri, str(cfg.experiment))
    except Exception as err:  # MlflowException, connection errors: all mean "cannot log this run"
        raise ValueError(f"--experiment {cfg.experiment}: cannot reach MLflow at {redact(uri)}: "
                         f"{type(err).__name__}: {err}") from err
    return uri


def log_pseudolabel_run(cfg: PseudoLabelConfig, summary: dict[str, Any], review_page: PageWriter | None = None) -> str:
    """Log one finished pseudo-labeling job to `cfg.experiment`; returns the MLflow run id. `review_page`:
    the writer of the review page logged with it (none: no page)."""
    uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
    run_id = tracking.start_or_resume_run(uri, str(cfg.experiment), run_name=f"pseudolabel-{summary['teacher']}",
                                          tags={"bpiml.job": "pseudolabel", "bpiml.out": cfg.out,
                                                "bpiml.gpu_decision": summary.get("gpu_decision", "")})
    try:
        tracking.log_params(uri, run_id, cfg.to_dict())
        tracking.log_metrics(uri, run_id, summary_metrics(summary), step=0)
        tracking.log_dict(uri, run_id, summary, "summary.json")
        mlc = tracking.client(uri)
        mlc.log_figure(run_id, confidence_figure(summary.get("confidence"), summary["teacher_identity"]),
                       "confidence_histogram.png")
        if review_page is not None:
            log_review_page(mlc, run_id, cfg.out, review_page)
    except Exception:
        tracking.end_run(uri, run_id, "FAILED")
        raise
    tracking.end_run(uri, run_id)
    logger.info("logged the pseudo-labeling run to MLflow %s, experiment %r, run %s", uri, cfg.experiment, run_id)
    return run_id
