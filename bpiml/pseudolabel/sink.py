"""The Ray Data sink of a pseudo-labeling run: each block of finished rows becomes part files.

Per block: the labeled records go to `manifest/part-<run>-<hash>.jsonl`, the reject rows (and the
conversion/clip notes of labeled images) to `rejects/part-<run>-<hash>.jsonl`, the superseded
records to `supersede/part-<run>-<hash>.jsonl`. A block is written as soon as it reaches the sink,
after its masks were written, so a record in a part always has its mask, and a killed run loses
only the blocks still in flight. Counts go to the run's counter actor, never into a list on the
driver.
"""

from __future__ import annotations

import json
from typing import Any

from bpiml.data import rejects
from bpiml.data.manifest import SHARDS_DIR
from bpiml.data.rejects import REJECTS_DIR
from bpiml.pseudolabel.rows import BAD_LINE_PREFIX
from bpiml.pseudolabel.store import SUPERSEDE_DIR
from bpiml.runtime.batch import PartsSink, Routed


def _reject_row(row: dict[str, Any]) -> dict[str, Any]:
    image = None
    try:
        image = json.loads(row["line"]).get("image")
    except (json.JSONDecodeError, AttributeError):
        image = row["line"][:200] or None
    rid = "" if row["id"].startswith(BAD_LINE_PREFIX) else row["id"]
    return rejects.Reject(rid, image, row["stage"] or "manifest", row["reason"]).to_dict()


def route(rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict], list[dict], dict[str, float]]:
    """(records, reject rows, supersede rows, counts) of one block of finished rows."""
    records, reject_rows, supersede = [], [], []
    counts: dict[str, float] = {"labeled": 0, "rejected": 0, "notes": 0, "iou_sum": 0.0, "iou_n": 0}
    for row in rows:
        status = row["status"]
        if status == "ok":
            record = json.loads(row["line"])
            records.append(record)
            counts["labeled"] += 1
            counts[f"teacher:{record.get('teacher_version')}"] = counts.get(f"teacher:{record.get('teacher_version')}", 0) + 1
            if record.get("iou_gt") is not None:
                counts["iou_sum"] += float(record["iou_gt"])
                counts["iou_n"] += 1
            for note in json.loads(row["notes"] or "[]"):
                reject_rows.append(rejects.Reject(record["id"], record.get("image"), "decode", note,
                                                  rejects.note_action(note)).to_dict())
                counts["notes"] += 1
        elif status == "rejected":
            reject_rows.append(_reject_row(row))
            counts["rejected"] += 1
            counts[f"rejected:{row['stage'] or 'manifest'}"] = counts.get(f"rejected:{row['stage'] or 'manifest'}", 0) + 1
        elif status == "superseded":
            supersede.append({k: row[k] for k in ("id", "fingerprint", "part", "pseudo_mask", "teacher_identity",
                                                  "delete_mask")})
        else:
            raise RuntimeError(f"row {row['id']!r} reached the sink with status {status!r}")
    return records, reject_rows, supersede, counts


def route_parts(rows: list[dict[str, Any]]) -> Routed:
    """One block's part files, the commit point (its records) last, and its counts."""
    records, reject_rows, supersede, counts = route(rows)
    return [(SUPERSEDE_DIR, supersede), (REJECTS_DIR, reject_rows), (SHARDS_DIR, records)], counts


def part_sink(out: str, run_id: str, counter: Any, part_rows: int = 64) -> PartsSink:
    """The sink of run `run_id` into the pseudo-labeled store `out` (see the module doc)."""
    return PartsSink(out, run_id, counter, part_rows, route_parts)
