"""The rejects table every job writes: one row per input it could not use, or used after a fix.

A row is `{"id", "image", "stage", "reason", "action"}`:

- `stage`: where it happened (`manifest`, `decode`, `teacher`, `write`, `train`, `predict`, `evaluate`);
- `action`: `rejected` (not used), or `converted` / `clipped` (used after a conversion of the
  image or a clip of its boxes; these never count against the reject rate).

Jobs write the rows as parts of a table under `<out>/rejects/` (`REJECTS_DIR`, `bpiml.data.parts`;
training: one `rejects/worker-<rank>.jsonl` per worker) and end with `check_reject_rate`, which fails past the job's `max_reject_rate` after everything else was
written, so a bad input costs its row, never the rest of the job.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable

REJECTS_DIR = "rejects"  # the rejects table's folder in a job's output


class RejectRateError(RuntimeError):
    """More inputs were rejected than the job allows (raised after all outputs are written)."""


@dataclass
class Reject:
    id: str  # record id ("" when the line could not be parsed far enough to have one)
    image: str | None  # image path or URI as given, or the raw line for unparseable input
    stage: str  # manifest | decode | teacher | write | train | predict | evaluate
    reason: str  # human-readable, names the file and what is wrong with it
    action: str = "rejected"  # rejected | converted | clipped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def note_action(note: str) -> str:
    """The action of a decode note: box notes are `clipped`, the rest `converted`."""
    return "clipped" if "box" in note else "converted"


def to_jsonl(rows: Iterable[Reject | dict[str, Any]]) -> str:
    return "".join(json.dumps(r.to_dict() if isinstance(r, Reject) else r, default=str) + "\n" for r in rows)


def check_reject_rate(rejected: int, total: int, max_rate: float, what: str, where: str) -> float:
    """The reject rate; raises `RejectRateError` naming `where` when it is above `max_rate`.

    An empty input counts as fully rejected: a job that used nothing has not succeeded.
    """
    rate = rejected / total if total else 1.0
    if rate > max_rate or total == 0:
        raise RejectRateError(
            f"{what}: {rejected} of {total} inputs rejected ({rate:.1%} > max_reject_rate {max_rate:.1%}); "
            f"see {where}")
    return rate
