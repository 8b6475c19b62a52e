"""Batch prediction over a store with a registered model or a checkpoint, on Ray Data.

    python jobs/predict.py --model models:/bpiml-student@champion --store s3://b/store --split test \\
        --out s3://b/predictions/run1 --num-workers 4 --num-cpus-per-worker 0.5
    ray job submit --working-dir . -- python jobs/predict.py ... --num-gpus-per-worker 0.25
Writes masks/<id>.png, probs/<id>.png, overlays/<id>.jpg, the tables predictions/ and rejects/,
summary.json, config.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import bpiml  # noqa: F401
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bpiml.runtime.loopback import keep_loopback

keep_loopback()  # before anything imports ray

from bpiml.runtime.jobcli import job_parser, setup_console  # noqa: E402
from bpiml.evaluation.predict import PredictConfig, run_predict  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    return job_parser("jobs/predict.py", __doc__, PredictConfig, "predict at most 4 images")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(args: argparse.Namespace) -> int:
    setup_console(args)
    config = PredictConfig.from_cli(args, smoke_test={"limit": 4})
    print(json.dumps(run_predict(config), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
