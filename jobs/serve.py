"""Online prediction over HTTP with a registered model or a checkpoint, on Ray Serve.

    python jobs/serve.py --model models:/bpiml-student@champion --gpus-per-worker 0   # local Ray on CPU, until Ctrl-C
    python jobs/serve.py --model models:/bpiml-student@champion --max-replicas 4 --min-replicas 1 \\
        --max-batch-size 16 --gpus-per-worker 0.5 --api-key-env BPIML_SERVE_KEY
    ray job submit -- python jobs/serve.py --model models:/bpiml-student@champion --no-blocking
    curl -s --data-binary @photo.jpg http://127.0.0.1:8000/predict
Routes: POST /predict (?format=json|png|probs|npy), GET /healthz; see bpiml/serving/http.py.
Also startable as `serve run bpiml.serving.app:build_app model=models:/bpiml-student@champion`.
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
from bpiml.serving.config import ServeConfig  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    return job_parser("jobs/serve.py", __doc__, ServeConfig)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, ServeConfig]:
    """The flags and the config; a bad option ends in an argparse error naming the flag (exit 2)."""
    return parse_job(build_parser(), ServeConfig, argv)

def main(args: argparse.Namespace, config: ServeConfig) -> int:
    setup_console(args)
    from bpiml.serving.app import run_serve  # noqa: PLC0415 - after parsing: --help imports no torch or Ray

    print(json.dumps(run_serve(config), indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main(*parse_args()))
