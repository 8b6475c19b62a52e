"""The jobs' console: one log format, credentials redacted from every line and traceback.

`setup_logging()` is what every entry point (jobs/*.py, `bpiml <command>`, the training workers)
calls first. Lines go to stderr as `time LEVEL logger: message`; a URI's `user:password@` or a
secret query parameter never reaches the console or the Ray job log, also not inside an
exception's traceback (`bpiml.config.redact`).
"""

from __future__ import annotations

import logging
import sys
import traceback
from types import TracebackType

from bpiml.config import redact

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output (message, exception, stack) passes through `redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _redacting_excepthook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(kind, err, tb))))


def setup_logging(level: int = logging.INFO, logger: logging.Logger | None = None) -> None:
    """Log `logger` (default: the root logger) at `level` through one redacting stderr handler.

    A named logger stops propagating, so Ray's own root handler in a worker does not print its
    lines a second time."""
    target = logger or logging.getLogger()
    if not target.handlers:
        target.addHandler(logging.StreamHandler())
    for handler in target.handlers:
        handler.setFormatter(RedactingFormatter(FORMAT))
    target.setLevel(level)
    if logger is not None:
        logger.propagate = False
    sys.excepthook = _redacting_excepthook
