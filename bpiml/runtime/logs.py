"""The jobs' console: one log format, credentials redacted from every line and traceback.

`setup_logging()` is what every entry point (jobs/*.py, `bpiml <command>`, the training workers)
calls first. Lines go to stderr as `time LEVEL logger: message`; a URI's `user:password@` or a
secret query parameter never reaches the console or the Ray job log, also not inside an
exception's traceback (`bpiml.config.redact`).
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from types import TracebackType

from bpiml.config import redact

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output (message, exception, stack) passes through `redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# Errors whose message is the answer: when one is the cause of what failed (a Ray task's error wraps it,
# a second error on the way out hides it), its message is repeated as the traceback's last line.
ROOT_CAUSES = ("StorageUnavailable",)


def root_cause(err: BaseException) -> BaseException | None:
    """The first error of a ROOT_CAUSES kind among `err`'s causes and contexts (and a Ray task error's
    `cause`), or None."""
    todo, seen = [err], set()
    while todo and len(seen) < 50:
        item = todo.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if any(name in (type(item).__name__, *(c.__name__ for c in type(item).__mro__)) for name in ROOT_CAUSES):
            return item
        todo += [item.__cause__, item.__context__, getattr(item, "cause", None)]
    return None


def _stop_ray_log_stream() -> None:
    """A job's driver that fails: stop Ray first, or the workers' log lines Ray streams to the driver keep
    arriving after the traceback and bury its last line."""
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001 - the job's own error is what must be printed
            pass


def _redacting_excepthook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
    _stop_ray_log_stream()
    text = "".join(traceback.format_exception(kind, err, tb))
    line = cause_line(err, text)
    sys.stderr.write(redact(text + (f"{line}\n" if line else "")))


def cause_line(err: BaseException, text: str) -> str:
    """`caused by <Kind>: <message>` for a ROOT_CAUSES error behind `err`: found among its causes, or in its
    formatted traceback (a Ray task's error carries the remote one as text only); '' when there is none."""
    cause = root_cause(err)
    if cause is not None and cause is not err:
        return f"caused by {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    if cause is err:
        return ""
    found = [m for m in _CAUSE_IN_TEXT.finditer(text)]
    return f"caused by {found[-1].group(1)}: {found[-1].group(2).strip()}" if found else ""


_CAUSE_IN_TEXT = re.compile(rf"^(?:[\w.]+\.)?({'|'.join(ROOT_CAUSES)}): (.*)$", re.MULTILINE)


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
