"""Batch prediction over a store with a registered model or a checkpoint, on Ray Data.

    python jobs/predict.py --model models:/bpiml-student@champion --store s3://b/store --split test \\
        --out s3://b/predictions/run1 --num-workers 4 --cpus-per-worker 0.5
    ray job submit --working-dir . -- python jobs/predict.py ... --gpus-per-worker 0.25
Writes into --out (a folder) masks/<name>.png, probs/<name>.png (--probs: png | npy | none),
overlays/<name>.jpg, the tables predictions/ and rejects/, summary.json, config.json;
`bpiml predict --image photo.jpg --out DIR` writes one image's in the same layout.
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

from bpiml.runtime.jobcli import job_parser, parse_job, setup_console  # noqa: E402
from bpiml.evaluation.config import PredictConfig  # noqa: E402

SMOKE_TEST = {"limit": 4}


def build_parser() -> argparse.ArgumentParser:
    return job_parser("jobs/predict.py", __doc__, PredictConfig, "predict at most 4 images")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, PredictConfig]:
    """The flags and the config; a bad option ends in an argparse error naming the flag (exit 2)."""
    return parse_job(build_parser(), PredictConfig, argv, SMOKE_TEST)

def main(args: argparse.Namespace, config: PredictConfig) -> int:
    setup_console(args)
    from bpiml.evaluation.predict import run_predict  # noqa: PLC0415 - after parsing: --help imports no torch or Ray

    print(json.dumps(run_predict(config), indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main(*parse_args()))
