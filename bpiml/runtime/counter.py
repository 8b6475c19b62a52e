"""Counts that a job's Ray tasks add up for its driver, so the driver never holds the rows.

    counter = start_counter()              # on the driver
    add_counts(counter, {"labeled": 32})   # in a task or a sink, once per block
    ray.get(counter.get.remote())          # on the driver, at the end
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

    def add(self, counts: dict[Any, float]) -> None:
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value

    def get(self) -> dict[Any, float]:
        return dict(self.counts)


def start_counter() -> Any:
    """A RunCounter on the driver's own node: it lives exactly as long as the driver, so losing a
    worker node (a spot node gone) never loses the run's counts."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return RunCounter.options(scheduling_strategy=here).remote()


def add_counts(counter: Any, counts: dict[Any, float]) -> None:
    if counter is not None and counts:
        ray.get(counter.add.remote(counts))
