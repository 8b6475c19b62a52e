"""Pseudo-label a box-annotated image store with a frozen teacher (SAM, GrabCut or boxes) on Ray Data.

    python jobs/pseudolabel.py                                  # embedded default: the sample store
    ray job submit --working-dir . -- python jobs/pseudolabel.py --store s3://b/store --out s3://b/pseudo \\
        --checkpoint vit_h --num-actors 8 --gpus-per-actor 1
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    import bpiml  # noqa: F401
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bpiml.runtime.loopback import keep_loopback

keep_loopback()  # before anything imports ray

from bpiml.runtime.jobcli import job_parser, setup_console  # noqa: E402
from bpiml.data.sample import make_sample_store  # noqa: E402
from bpiml.pseudolabel.config import DEFAULT_STORE, PseudoLabelConfig  # noqa: E402
from bpiml.pseudolabel.job import run_pseudolabel  # noqa: E402
from bpiml.pseudolabel.summary import Summary, format_summary  # noqa: E402

SMOKE_TEST = {"limit": 4}


def build_parser() -> argparse.ArgumentParser:
    return job_parser("jobs/pseudolabel.py", __doc__, PseudoLabelConfig, f"a quick run: {SMOKE_TEST}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(args: argparse.Namespace) -> int:
    setup_console(args)
    config = PseudoLabelConfig.from_cli(args, smoke_test=SMOKE_TEST)
    if config.store == DEFAULT_STORE and not Path(DEFAULT_STORE, "manifest.jsonl").exists():
        logging.getLogger("bpiml").info("embedded default: writing the sample store to %s", DEFAULT_STORE)
        make_sample_store(DEFAULT_STORE)
    print(format_summary(Summary(**run_pseudolabel(config))))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
