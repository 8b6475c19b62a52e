"""Train the student on a pseudo-labeled store with Ray Train; track and register it in MLflow.

    python jobs/train.py --gpus-per-worker 0    # embedded default: .bpiml/sample-pseudo, local Ray + MLflow, on CPU
    python jobs/train.py --smoke-test           # one short epoch on a few images (on a GPU: the default, by intent)
    python jobs/train.py --run-name exp1 --epochs 20       # rerun the same line later to resume exp1
    python jobs/train.py --store boxes/ --supervision box --pretrain-store synth/ --pretrain-epochs 5
    python jobs/train.py --store boxes/ --supervision box --add-store synth/,weight=1,supervision=gt
    ray job submit --working-dir . -- python jobs/train.py --store s3://b/pseudo --storage-path s3://b/runs \\
        --run-name exp1 --num-workers 8 --gpus-per-worker 1

The default store is what `python jobs/pseudolabel.py` writes with its defaults. Relative paths
(store, storage path, the sqlite MLflow DB in .bpiml/) are taken from the working directory, so
under `ray job submit` pass absolute or s3:// locations and MLFLOW_TRACKING_URI (via
`--runtime-env-json '{"env_vars": {...}}'`) to keep the outputs.
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

from bpiml.config import redact  # noqa: E402
from bpiml.runtime.jobcli import job_parser, parse_job, setup_console  # noqa: E402
from bpiml.train.config import TrainConfig  # noqa: E402

SMOKE_TEST = {"epochs": 1, "limit": 8, "batch_size": 4, "log_images": 2}


def build_parser() -> argparse.ArgumentParser:
    return job_parser("jobs/train.py", __doc__, TrainConfig, f"a quick run: {SMOKE_TEST}")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainConfig]:
    """The flags and the config; a bad option ends in an argparse error naming the flag (exit 2)."""
    return parse_job(build_parser(), TrainConfig, argv, SMOKE_TEST)

def main(args: argparse.Namespace, config: TrainConfig) -> int:
    setup_console(args)
    from bpiml.train.job import run_training  # noqa: PLC0415 - after parsing: --help imports no torch or Ray

    result = run_training(config)
    print(json.dumps(redact({
        "run_dir": result.run_dir,
        "start_epoch": result.start_epoch,
        "best_checkpoint": result.best_checkpoint,
        "best_metrics": result.best_metrics,
        "mlflow_run_id": result.mlflow_run_id,
        "tracking_uri": result.tracking_uri,
        "registered_model_uri": result.registered_model_uri,
        "gpu_decision": result.gpu_decision,
    }), indent=2, default=str))
    return 0

if __name__ == "__main__":
    sys.exit(main(*parse_args()))
