"""Online prediction over HTTP with a registered model or a checkpoint, on Ray Serve.

    python jobs/serve.py --model models:/bpiml-student@champion               # local Ray, until Ctrl-C
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

from bpiml.runtime.jobcli import job_parser, setup_console
from bpiml.serving.app import run_serve
from bpiml.serving.config import ServeConfig


def build_parser() -> argparse.ArgumentParser:
    return job_parser("jobs/serve.py", __doc__, ServeConfig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(args: argparse.Namespace) -> int:
    setup_console(args)
    print(json.dumps(run_serve(ServeConfig.from_cli(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
