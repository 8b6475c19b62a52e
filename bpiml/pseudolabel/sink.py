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
from typing import Any, Iterable

from ray.data import Datasink
from ray.data.block import BlockAccessor

from bpiml.data import parts, rejects, storage
from bpiml.pseudolabel.rows import BAD_LINE_PREFIX
from bpiml.pseudolabel.store import REJECTS_DIR, SHARDS_DIR, SUPERSEDE_DIR
from bpiml.runtime.counter import add_counts, block_key


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


class PartSink(Datasink):
    """Writes each block's rows as part files of `out` for run `run_id` (see the module doc)."""

    def __init__(self, out: str, run_id: str, counter: Any, part_rows: int = 64) -> None:
        self.out, self.run_id, self.counter, self.part_rows = out, run_id, counter, part_rows

    @property
    def min_rows_per_write(self) -> int:
        """Hand each write about `part_rows` rows as soon as they are there (Ray Data would otherwise
        gather far bigger bundles, and a kill would lose them)."""
        return self.part_rows

    def write(self, blocks: Iterable[Any], ctx: Any) -> None:
        for block in blocks:
            accessor = BlockAccessor.for_block(block)
            if accessor.num_rows() == 0:
                continue
            rows = list(accessor.iter_rows(public_row_format=True))
            records, reject_rows, supersede, counts = route([dict(r) for r in rows])
            key = block_key(parts.write_part(storage.join(self.out, SUPERSEDE_DIR), self.run_id, supersede),
                            parts.write_part(storage.join(self.out, REJECTS_DIR), self.run_id, reject_rows),
                            # last: the commit point
                            parts.write_part(storage.join(self.out, SHARDS_DIR), self.run_id, records))
            add_counts(self.counter, counts, key)
