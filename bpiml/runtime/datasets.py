"""Reading JSON-lines tables with Ray Data, the same way in every job.

Read tasks and the light map steps after them ask for a quarter CPU (`READ_CPUS`; Ray Data's
default is a whole one): on nodes whose CPUs are partly held by teacher actors or training workers,
a task that needs a whole CPU waits until one is free. (Ray Data's hash-shuffle tasks always ask
for one whole CPU, so every node needs one CPU beyond what actors and workers hold.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray
import ray.data
from ray.data._internal.datasource.text_datasource import TextDatasource

from bpiml.data import storage

READ_CPUS = 0.25  # per read task


class NumberedLines(TextDatasource):
    """Ray Data's text reader that also keeps each line's 1-based number in its file (`line`), so a bad
    line can be named `file:line`. Empty lines are dropped after numbering, as `read_text` drops them."""

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        lines = f.readall().decode(self.encoding).splitlines()
        kept = [i for i, text in enumerate(lines) if text.strip()]
        yield pa.table({"text": pa.array([lines[i] for i in kept], pa.string()),
                        "line": pa.array([i + 1 for i in kept], pa.int64())})


def read_lines(uris: list[str], include_paths: bool = False, line_numbers: bool = False,
               **kwargs: Any) -> ray.data.Dataset:
    """A dataset of {"text"[, "line"][, "path"]} rows, one per non-empty line of the files (local or
    s3://, one filesystem); `line_numbers` adds each line's number in its file."""
    if not uris:
        raise ValueError("no files to read")
    filesystem, _ = storage.pyarrow_fs(uris[0])
    paths = [storage.pyarrow_fs(u)[1] for u in uris]
    if not line_numbers:
        return ray.data.read_text(paths, filesystem=filesystem, include_paths=include_paths,
                                  num_cpus=READ_CPUS, **kwargs)
    return ray.data.read_datasource(NumberedLines(paths, filesystem=filesystem, include_paths=include_paths),
                                    num_cpus=READ_CPUS, **kwargs)
