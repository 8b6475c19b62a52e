"""Make a store of forged images with exact masks and human-like boxes from ordinary photos, on Ray.

    python jobs/synthesize.py                           # embedded default: scikit-image's photos -> .bpiml/synth
    python jobs/synthesize.py --photos photos/ --out synth/ --n 20000 --seed 1
    ray job submit --working-dir . -- python jobs/synthesize.py --photos s3://b/photos --out s3://b/synth \\
        --n 1000000

Kinds: splicing (an object-shaped region of another photo), copy-move (scaled, rotated, flipped)
and removal (inpainting), feathered or Poisson-blended, colour-matched, then post-processed
(resize, blur, noise, JPEG, saved as JPEG or PNG), plus authentic images through the same chain.
The same seed and options make the same images; rerunning the command resumes the output and a
larger --n extends it. Train on it with `jobs/train.py --store <out> --supervision gt`, or mix it
into a box-supervised run (`--add-store`, `--pretrain-store`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

try:
    import bpiml  # noqa: F401
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bpiml.runtime.loopback import keep_loopback

keep_loopback()  # before anything imports ray

from bpiml.runtime.jobcli import job_parser, parse_job, setup_console  # noqa: E402
from bpiml.synth.config import DEFAULT_PHOTOS, SynthConfig  # noqa: E402

SMOKE_TEST = {"n": 16, "part_rows": 8, "gallery": 8}


def build_parser() -> argparse.ArgumentParser:
    return job_parser("jobs/synthesize.py", __doc__, SynthConfig, f"a quick run: {SMOKE_TEST}")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, SynthConfig]:
    """The flags and the config; a bad option ends in an argparse error naming the flag (exit 2)."""
    return parse_job(build_parser(), SynthConfig, argv, SMOKE_TEST)

def main(args: argparse.Namespace, config: SynthConfig) -> int:
    setup_console(args)
    # After parsing: --help and usage errors import no Ray.
    from bpiml.data.sample import write_bundled_photos  # noqa: PLC0415
    from bpiml.synth.job import run_synthesis  # noqa: PLC0415

    if config.photos == DEFAULT_PHOTOS and not Path(DEFAULT_PHOTOS).is_dir():
        logging.getLogger("bpiml").info("embedded default: writing scikit-image's bundled photos to %s", DEFAULT_PHOTOS)
        write_bundled_photos(DEFAULT_PHOTOS)
    print(json.dumps(run_synthesis(config), indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main(*parse_args()))
