"""Pseudo-label a box-annotated image store with a frozen teacher (SAM, GrabCut or boxes) on Ray Data.

    python jobs/pseudolabel.py                                  # embedded default: the sample store
    ray job submit --working-dir . -- python jobs/pseudolabel.py --store s3://b/store --out s3://b/pseudo \\
        --checkpoint vit_h --num-workers 8 --gpus-per-worker 1
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

try:
    import bpiml  # noqa: F401
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bpiml.runtime.loopback import keep_loopback

keep_loopback()  # before anything imports ray

from bpiml.runtime.jobcli import job_parser, parse_job, setup_console  # noqa: E402
from bpiml.pseudolabel.config import DEFAULT_STORE, PseudoLabelConfig  # noqa: E402

SMOKE_TEST = {"limit": 4}


def build_parser() -> argparse.ArgumentParser:
    return job_parser("jobs/pseudolabel.py", __doc__, PseudoLabelConfig, f"a quick run: {SMOKE_TEST}")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, PseudoLabelConfig]:
    """The flags and the config; a bad option ends in an argparse error naming the flag (exit 2)."""
    return parse_job(build_parser(), PseudoLabelConfig, argv, SMOKE_TEST)

def main(args: argparse.Namespace, config: PseudoLabelConfig, **seams: Any) -> int:
    """Run the job; `seams`: parts injected into `run_pseudolabel` (tests/slow_pseudolabel.py: a slowed labeler).
    The review page logged with an MLflow run is drawn by `bpiml.review.page`, which sits above `pseudolabel`."""
    setup_console(args)
    # After parsing: --help and usage errors import no torch or Ray.
    from bpiml.data.sample import make_sample_store  # noqa: PLC0415
    from bpiml.pseudolabel.job import run_pseudolabel  # noqa: PLC0415
    from bpiml.pseudolabel.summary import Summary, format_summary  # noqa: PLC0415
    from bpiml.review.page import write_page  # noqa: PLC0415

    if config.store == DEFAULT_STORE and not Path(DEFAULT_STORE, "manifest.jsonl").exists():
        logging.getLogger("bpiml").info("embedded default: writing the sample store to %s", DEFAULT_STORE)
        make_sample_store(DEFAULT_STORE)
    print(format_summary(Summary(**run_pseudolabel(config, review_page=write_page, **seams))))
    return 0

if __name__ == "__main__":
    sys.exit(main(*parse_args()))
