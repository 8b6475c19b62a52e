"""The Ray Data sink of a pseudo-labeling run: each block of labeled records becomes part files.

Per block: the labeled records go to `manifest/part-<run>-<hash>.jsonl`, the conversion/clip notes of
labeled images to `rejects/part-<run>-<hash>.jsonl` (the records last: a record in a part has its
notes). The reject rows and the superseded records never reach the sink: the stage that makes them
writes them to `rejects/` and `supersede/` at once (`rows.RejectsOut`, `plan.plan_block`), parts of
the same run named by content, so a retried task rewrites the same file and its counts are taken
once. A block is written as soon as it reaches the sink, after its masks were written, so a record
in a part always has its mask, and a killed run loses only the blocks still in flight. Counts go to
the run's counter actor, never into a list on the driver.
"""

from __future__ import annotations

import json
import math
from typing import Any

from bpiml.data import rejects
from bpiml.data.manifest import SHARDS_DIR
from bpiml.data.rejects import REJECTS_DIR
from bpiml.runtime.batch import PartsSink, Routed


def route(rows: list[dict[str, Any]]) -> Routed:
    """One block of labeled rows (`stages.OUT_COLUMNS`) -> its note rows and records, and its counts."""
    records, notes_rows = [], []
    counts: dict[str, float] = {"labeled": 0, "notes": 0, "iou_sum": 0.0, "iou_n": 0}
    for row in rows:
        records.append(str(row["line"]))  # the output record, encoded once by the write stage
        counts["labeled"] += 1
        key = f"teacher:{row['teacher_version']}"
        counts[key] = counts.get(key, 0) + 1
        if not math.isnan(float(row["iou_gt"])):
            counts["iou_sum"] += float(row["iou_gt"])
            counts["iou_n"] += 1
        for note in json.loads(str(row["notes"])):
            notes_rows.append(rejects.Reject(str(row["id"]), str(row["image"]), "decode", note,
                                             rejects.note_action(note)).to_dict())
            counts["notes"] += 1
    return [(REJECTS_DIR, notes_rows), (SHARDS_DIR, records)], counts


def part_sink(out: str, run_id: str, counter: Any, part_rows: int = 64) -> PartsSink:
    """The sink of run `run_id` into the pseudo-labeled store `out` (see the module doc)."""
    return PartsSink(out, run_id, counter, part_rows, route)
