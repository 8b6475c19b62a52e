"""Tables of JSON lines kept as many part files in one folder (a sharded manifest, a rejects table).

A job run `R` writes `part-R-<hash>.jsonl` files while it runs, one per block of rows, each the
moment its rows are done, so a killed run loses only the rows still in flight. The name's hash is
taken over the rows themselves: a retried block rewrites the same file instead of adding a second
copy. At the end the run's parts are merged into `shard-R-<k>.jsonl` files and the marker
`_R.compacted` is written; then the parts are deleted.

Which files make up the table (`table_files`):

- `part-R-*` files of runs without a marker (a run that was killed, or is running);
- `shard-R-*` files of runs with a marker (a crash between the shards and the marker leaves shards
  that nobody reads; a crash after the marker leaves parts that nobody reads).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

from bpiml.data import storage

_FILE = re.compile(r"^(part|shard)-(?P<run>[A-Za-z0-9_.]+)-(?P<rest>[A-Za-z0-9]+)\.jsonl$")
MARKER_SUFFIX = ".compacted"


def new_run_id(clock: str, token: str) -> str:
    """A run id that sorts by start time: `<YYYYmmdd_HHMMSS>.<token>`."""
    return f"{clock}.{token}"


def part_name(run_id: str, rows: list[str]) -> str:
    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
    return f"part-{run_id}-{digest}.jsonl"


def encode_rows(rows: Iterable[dict[str, Any] | str]) -> list[str]:
    """Rows -> JSON lines, as every table file holds them (keys sorted, no NaN); a row given as a string is
    one encoded so already (`encode_rows([row])[0]`: a record built and encoded once, where it is made)."""
    return [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False, allow_nan=False, sort_keys=True)
            for r in rows]


def _write_lines(uri: str, lines: list[str]) -> str:
    storage.write_bytes(uri, ("\n".join(lines) + "\n").encode("utf-8"))
    return uri


def write_part(folder: str, run_id: str, rows: list[dict[str, Any]] | list[str]) -> str | None:
    """Write rows as one part file named after their content; returns its URI (None for no rows)."""
    if not rows:
        return None
    lines = encode_rows(rows)
    return _write_lines(storage.join(folder, part_name(run_id, lines)), lines)


def marker_uri(folder: str, run_id: str) -> str:
    return storage.join(folder, f"_{run_id}{MARKER_SUFFIX}")


def _classify(folder: str) -> tuple[dict[str, list[str]], dict[str, list[str]], set[str]]:
    parts: dict[str, list[str]] = {}
    shards: dict[str, list[str]] = {}
    marked: set[str] = set()
    for uri in storage.list_files(folder):
        name = os.path.basename(uri)
        if name.startswith("_") and name.endswith(MARKER_SUFFIX):
            marked.add(name[1:-len(MARKER_SUFFIX)])
            continue
        m = _FILE.match(name)
        if m:
            (parts if m.group(1) == "part" else shards).setdefault(m.group("run"), []).append(uri)
    return parts, shards, marked


def table_files(folder: str) -> list[str]:
    """The files that make up the table in `folder` now (see the module doc), sorted by run."""
    parts, shards, marked = _classify(folder)
    files = [u for run, uris in parts.items() if run not in marked for u in uris]
    files += [u for run, uris in shards.items() if run in marked for u in uris]
    return sorted(files)


def run_parts(folder: str, run_id: str) -> list[str]:
    """The part files of run `run_id` in `folder`, sorted."""
    return sorted(u for u in storage.list_files(folder, ".jsonl") if os.path.basename(u).startswith(f"part-{run_id}-"))


def uncompacted_runs(folder: str) -> list[str]:
    parts, _, marked = _classify(folder)
    return sorted(run for run in parts if run not in marked)


def stale_files(folder: str) -> list[str]:
    """Files no reader uses: parts of compacted runs, shards of runs without a marker."""
    parts, shards, marked = _classify(folder)
    return sorted([u for run, uris in parts.items() if run in marked for u in uris]
                  + [u for run, uris in shards.items() if run not in marked for u in uris])


def read_rows(uri: str) -> Iterator[dict[str, Any]]:
    """The rows of one file; a line cut short by a crash (or any non-JSON line) is skipped."""
    for line in storage.read_bytes(uri).decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            yield value


def iter_table(folder: str) -> Iterator[dict[str, Any]]:
    for uri in table_files(folder):
        yield from read_rows(uri)


def write_shards(folder: str, run_id: str, rows: Iterable[dict[str, Any]], shard_rows: int) -> list[str]:
    """Write rows as `shard-<run>-<k>.jsonl` files of at most `shard_rows` rows each."""
    written, batch = [], []
    for row in rows:
        batch.append(row)
        if len(batch) >= shard_rows:
            written.append(write_shard(folder, run_id, len(written), batch))
            batch = []
    if batch:
        written.append(write_shard(folder, run_id, len(written), batch))
    return written


def write_shard(folder: str, run_id: str, k: int, rows: list[dict[str, Any]]) -> str:
    """Write rows as the run's shard number `k`; returns its URI."""
    return _write_lines(storage.join(folder, f"shard-{run_id}-{k:06d}.jsonl"), encode_rows(rows))


def rewrite_without(uri: str, drop: set[tuple[str, str]], key: tuple[str, str] = ("id", "fingerprint")) -> int:
    """Rewrite one file without the rows whose (key fields) are in `drop`; returns how many were dropped.
    A file left empty is deleted."""
    rows = list(read_rows(uri))
    kept = [r for r in rows if (str(r.get(key[0])), str(r.get(key[1]))) not in drop]
    if len(kept) == len(rows):
        return 0
    if kept:
        _write_lines(uri, encode_rows(kept))
    else:
        storage.remove(uri)
    return len(rows) - len(kept)
