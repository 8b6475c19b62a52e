"""The jobs' command lines: each option once, in groups, after the job's examples; one console switch.

    parser = job_parser("jobs/train.py", __doc__, TrainConfig, f"a quick run: {SMOKE_TEST}")
    args = parser.parse_args(argv)
    setup_console(args)

Groups: the job's own options, nested configs (e.g. `model options`), `run` (`--config`,
`--smoke-test`) and `console` (`--quiet`: warnings, errors and the final summary only;
`--verbose`: debug lines too). `docs/cli.md` is generated from these parsers (`scripts/cli_docs.py`).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from bpiml.runtime.credentials import move_uri_credentials
from bpiml.runtime.logs import setup_logging


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (examples keep their lines); an option's aliases share one metavar."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        return f"{', '.join(action.option_strings)} {self._format_args(action, self._get_default_metavar_for_optional(action))}"


def job_parser(prog: str, doc: str | None, config_cls: Any, smoke_test: str | None = None,
               conflict_handler: str = "error") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter,
                                     usage=f"%(prog)s [options]",
                                     conflict_handler=conflict_handler)
    config_cls.add_arguments(parser.add_argument_group(f"{prog.rsplit('/', 1)[-1].removesuffix('.py')} options"),
                             groups=parser)
    run = parser.add_argument_group("run")
    run.add_argument("--config", help="JSON/YAML file with any of the options above; flags given explicitly override it")
    if smoke_test:
        run.add_argument("--smoke-test", action="store_true", help=smoke_test)
    add_console_flags(parser)
    return parser


def add_console_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("console").add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="warnings, errors and the final summary only")
    group.add_argument("-v", "--verbose", action="store_true", help="debug lines too")


def log_level(args: argparse.Namespace) -> int:
    if getattr(args, "quiet", False):
        return logging.WARNING
    return logging.DEBUG if getattr(args, "verbose", False) else logging.INFO


def setup_console(args: argparse.Namespace) -> None:
    """Log at the level the flags ask for; credentials in MLFLOW_TRACKING_URI move to MLflow's own
    variables (`bpiml.runtime.credentials`). Ray Data's progress bars (totals estimated from block
    metadata) show only with `--verbose`: the jobs log their own progress with the true total."""
    level = log_level(args)
    setup_logging(level)
    move_uri_credentials()  # before anything prints, logs or forwards the tracking URI
    os.environ["BPIML_LOG_LEVEL"] = logging.getLevelName(level)  # the training workers log at the same level
    if level > logging.DEBUG:
        from ray.data import DataContext  # here: the console flags parse before ray is imported

        DataContext.get_current().enable_progress_bars = False
