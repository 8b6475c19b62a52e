"""`bpiml predict`, `bpiml evaluate` and `bpiml report`: parse (fast, no torch/Ray/MLflow), then import and
run the work."""

from __future__ import annotations

import argparse
import json

from bpiml.config import HelpFormatter
from bpiml.evaluation.config import (
    EvalConfig,
    ImagePredictConfig,
    evaluate_parser,
    predict_image_parser,
)
from bpiml.runtime.jobcli import parse_job, setup_console


def cli_predict(argv: list[str] | None = None) -> int:
    args, config = parse_job(predict_image_parser(), ImagePredictConfig, argv)
    setup_console(args)
    from bpiml.evaluation.predict import predict_image  # noqa: PLC0415 - after parsing: a fast --help

    print(json.dumps(predict_image(config)))
    return 0


def cli_evaluate(argv: list[str] | None = None) -> int:
    args, config = parse_job(evaluate_parser(), EvalConfig, argv)
    setup_console(args)
    from bpiml.evaluation.evaluate import print_result, run_evaluation  # noqa: PLC0415 - after parsing

    print_result(run_evaluation(config))
    return 0


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="bpiml report",
                                     description="Visual report: a self-contained HTML page plus a PNG grid, worst samples first.")
    parser.add_argument("--eval", dest="eval_dir", default=None, help="evaluation output folder (results.json, per_image/, preds/)")
    parser.add_argument("--store", default=None, help="pseudo-labeled store (boxes, pseudo masks, audit)")
    parser.add_argument("--set", dest="set_name", default=None, help="only samples of this evaluation test set")
    parser.add_argument("--out", required=True, help="report folder (local or s3://)")
    parser.add_argument("--max-samples", type=int, default=48, help="samples shown, worst first")
    parser.add_argument("--curves", default=None, help="JSON file {name: [numbers]} of training curves")
    parser.add_argument("--curves-run-id", default=None, help="MLflow run whose metric histories are the curves")
    parser.add_argument("--mlflow-run-id", default=None, help="log the report into this MLflow run")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: env, then project sqlite)")
    parser.add_argument("--title", default="bpiml report", help="page title")
    return parser


def cli_report(argv: list[str] | None = None) -> int:
    parser = report_parser()
    args = parser.parse_args(argv)
    if not args.eval_dir and not args.store:
        parser.error("give --eval and/or --store")
    if args.max_samples < 1:
        parser.error(f"--max-samples must be >= 1, got {args.max_samples}")
    from bpiml.evaluation.report import run_report  # noqa: PLC0415 - imports torch and MLflow: after parsing

    return run_report(args)
