"""`bpiml predict` and `bpiml evaluate`: parse (fast, no torch/Ray), then import and run the work."""

from __future__ import annotations

import json

from bpiml.evaluation.config import EvalConfig, ImagePredictConfig, evaluate_parser, predict_image_parser
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
