"""Reading JSON-lines tables with Ray Data, the same way in every job.

Read tasks and the light map steps after them ask for a quarter CPU (`READ_CPUS`; Ray Data's
default is a whole one): on nodes whose CPUs are partly held by teacher actors or training workers,
a task that needs a whole CPU waits until one is free. (Ray Data's hash-shuffle tasks always ask
for one whole CPU, so every node needs one CPU beyond what actors and workers hold.)
"""

from __future__ import annotations

from typing import Any

import ray
import ray.data

from bpiml.data import storage

READ_CPUS = 0.25  # per read task


def read_lines(uris: list[str], include_paths: bool = False, **kwargs: Any) -> ray.data.Dataset:
    """A dataset of {"text"[, "path"]} rows, one per line of the files (local or s3://, one filesystem)."""
    if not uris:
        raise ValueError("no files to read")
    filesystem, _ = storage.pyarrow_fs(uris[0])
    paths = [storage.pyarrow_fs(u)[1] for u in uris]
    return ray.data.read_text(paths, filesystem=filesystem, include_paths=include_paths,
                              num_cpus=READ_CPUS, **kwargs)
