"""Evaluate a model on IMDL-BenCo test lists or store splits, clean and degraded, on Ray Data.

    python jobs/evaluate.py --model models:/bpiml-student@champion \\
        --dataset cvip=/data/cvip/index.json --dataset coverage=s3://b/coverage/index.json \\
        --group in_dist=cvip --group ood=coverage --degrade jpeg:90,jpeg:70,jpeg:50,resize:0.5 \\
        --out s3://b/eval/run1 --num-workers 2 --cpus-per-worker 0.5
    ray job submit --working-dir . -- python jobs/evaluate.py ...   # on a cluster
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import bpiml  # noqa: F401
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bpiml.runtime.loopback import keep_loopback

keep_loopback()  # before anything imports ray

from bpiml.runtime.jobcli import parse_job, setup_console  # noqa: E402
from bpiml.evaluation.config import EvalConfig, evaluate_parser  # noqa: E402

SMOKE_TEST = {"limit": 4}


def build_parser() -> argparse.ArgumentParser:
    return evaluate_parser("jobs/evaluate.py", __doc__, smoke_test="evaluate at most 4 images per set")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, EvalConfig]:
    """The flags and the config; a bad option ends in an argparse error naming the flag (exit 2)."""
    return parse_job(build_parser(), EvalConfig, argv, SMOKE_TEST)

def main(args: argparse.Namespace, config: EvalConfig) -> int:
    setup_console(args)
    from bpiml.evaluation.evaluate import print_result, run_evaluation  # noqa: PLC0415 - after parsing

    print_result(run_evaluation(config))
    return 0

if __name__ == "__main__":
    sys.exit(main(*parse_args()))
