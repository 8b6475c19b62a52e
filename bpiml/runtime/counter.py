"""Counts that a job's Ray tasks add up for its driver, so the driver never holds the rows.

    counter = start_counter()              # on the driver
    add_counts(counter, {"labeled": 32})   # in a task or a sink, once per block
    ray.get(counter.get.remote())          # on the driver, at the end

A sink passes `key` (the names of the content-named parts it wrote): a write task that Ray retries
writes the same parts again and its counts are then taken once, so the counts always match the files.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote(num_cpus=0)
class RunCounter:
    """A dict of sums (one `add` per block); keys are names, or tuples (evaluation's partial statistics)."""

    def __init__(self) -> None:
        self.counts: dict[Any, float] = {}
        self.seen: set[str] = set()

    def add(self, counts: dict[Any, float], key: str | None = None) -> None:
        if key is not None:
            if key in self.seen:
                return
            self.seen.add(key)
        for name, value in counts.items():
            self.counts[name] = self.counts.get(name, 0) + value

    def get(self) -> dict[Any, float]:
        return dict(self.counts)


def start_counter() -> Any:
    """A RunCounter on the driver's own node: it lives exactly as long as the driver, so losing a
    worker node (a spot node gone) never loses the run's counts."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return RunCounter.options(scheduling_strategy=here).remote()


def add_counts(counter: Any, counts: dict[Any, float], key: str | None = None) -> None:
    """Add `counts`; with `key`, only the first time that key is seen (a retried write's counts)."""
    if counter is not None and counts:
        ray.get(counter.add.remote(counts, key))


def block_key(*uris: str | None) -> str | None:
    """The key of a block's counts: the parts it wrote (named by content), None when it wrote none."""
    written = [u for u in uris if u]
    return "|".join(written) if written else None
