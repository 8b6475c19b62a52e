"""The jobs' command lines: each option once, in groups, after the job's examples; one console switch.

    parser = job_parser("jobs/train.py", __doc__, TrainConfig, f"a quick run: {SMOKE_TEST}")
    args, config = parse_job(parser, TrainConfig, argv, SMOKE_TEST)  # bad options: exit 2, naming the flag
    setup_console(args)
    from bpiml.train.job import run_training  # after parsing: --help and usage errors import no torch/Ray

Groups: the job's own options, nested configs (e.g. `model options`), `run` (`--config`,
`--smoke-test`) and `console` (`--quiet`: warnings, errors and the final summary only;
`--verbose`: debug lines too). `docs/cli.md` is generated from these parsers (`scripts/cli_docs.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from typing import Any, NoReturn

from bpiml.config import BaseConfig, ConfigError, HelpFormatter, flag_name
from bpiml.runtime.credentials import move_uri_credentials
from bpiml.runtime.logs import setup_logging


def job_parser(prog: str, doc: str | None, config_cls: Any, smoke_test: str | None = None,
               conflict_handler: str = "error") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter,
                                     usage="%(prog)s [options]",
                                     conflict_handler=conflict_handler)
    config_cls.add_arguments(parser.add_argument_group(f"{prog.rsplit('/', 1)[-1].removesuffix('.py')} options"),
                             groups=parser)
    run = parser.add_argument_group("run")
    run.add_argument("--config", metavar="FILE",
                     help="JSON/YAML file (local or s3://) with any of the options above as keys (snake_case, "
                          "nested options as mappings); flags given explicitly override it")
    if smoke_test:
        run.add_argument("--smoke-test", action="store_true", help=smoke_test)
    add_console_flags(parser)
    return parser


def parse_job(parser: argparse.ArgumentParser, config_cls: type[BaseConfig], argv: Sequence[str] | None = None,
              smoke_test: dict[str, Any] | None = None) -> tuple[argparse.Namespace, Any]:
    """The parsed flags and the job's config (defaults < `--config` < flags < smoke test); a bad option
    or value, in a flag or the `--config` file, ends in an argparse error naming the flag (exit 2)."""
    args = parser.parse_args(argv)
    return args, config_from_args(parser, config_cls, args, smoke_test)


def config_from_args(parser: argparse.ArgumentParser, config_cls: type[BaseConfig], args: argparse.Namespace,
                     smoke_test: dict[str, Any] | None = None) -> Any:
    try:
        return config_cls.from_cli(args, smoke_test)
    except ConfigError as err:
        config_error(parser, err)
    except FileNotFoundError as err:
        parser.error(f"--config {args.config}: {err}")
    except ValueError as err:
        parser.error(_flagged(str(err), config_cls))


def config_error(parser: argparse.ArgumentParser, err: ConfigError) -> NoReturn:
    parser.error(f"{flag_name(err.key)} {err.detail}")


def _keys(config_cls: type[BaseConfig], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for f in dataclasses.fields(config_cls):
        kind = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        keys += _keys(type(kind), f"{prefix}{f.name}.") if isinstance(kind, BaseConfig) else [prefix + f.name]
    return keys


def _flagged(message: str, config_cls: type[BaseConfig]) -> str:
    """A validation message with the config keys it names as flags: snake_case keys anywhere
    (`pretrain_epochs` -> `--pretrain-epochs`), a one-word key where it opens the message (`store must ...`)."""
    for key in sorted(_keys(config_cls), key=len, reverse=True):
        where = r"(?<![\w.-])" if "_" in key or "." in key else "^"
        message = re.sub(rf"{where}{re.escape(key)}(?![\w-])", flag_name(key), message)
    return message


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
