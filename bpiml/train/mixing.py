"""Several training stores in one epoch: each store's share of the epoch's samples set by its weight.

An epoch holds as many samples as all stores have train records together (N = sum n_i); store i
gives N * w_i / sum(w) of them. A store asked for more than it has is repeated and a store asked
for less is subsampled, with fresh draws every epoch:

    store i (decoded and cached, or its rows when too large to cache)
      -> map_batches(draw_rows): each row `times` times + once more with probability `fraction`,
         shuffled within the block  (draws / n_i = times + fraction)
      -> repartition into blocks of MIX_BLOCK_ROWS rows
    union of the stores -> randomize_block_order (each epoch) -> augment -> the workers' local shuffle

The draw uses an unseeded generator inside the task, so each execution of the dataset, i.e. each
epoch, draws anew (as the augmentation does). The small blocks are what the per-epoch block shuffle
moves: the stores' samples interleave at that grain, and the copies of a repeated block spread
over several blocks.

Not used, and why (Ray 2.60, measured on 2 CPUs): `Dataset.random_sample(f, seed=RandomSeedConfig(
..., reseed_after_execution=True))` drew the same rows every epoch once inside a union; a store
unioned with itself for whole copies hands Ray Train's streaming split the same block twice, which
it refuses ("Wait requires a list of unique ray_waitables"); one map branch per copy works but
each operator slows every epoch (7 branches: ~9 s an epoch for 340 small samples, 1: ~0.8 s).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from bpiml.runtime.datasets import READ_CPUS

MIX_BLOCK_ROWS = 32  # rows per block after the draw: the grain at which the stores interleave


def epoch_draws(sizes: list[int], weights: list[float]) -> list[float]:
    """Expected samples per epoch from each store: N * w_i / sum(w), N = sum of the sizes."""
    total, weight = sum(sizes), sum(weights)
    return [total * w / weight for w in weights]


def draw_rows(batch: dict[str, Any], times: int, fraction: float, store: int) -> dict[str, np.ndarray]:
    """Each row `times` times, plus once more with probability `fraction`, in a random order; tagged with
    its store's index (0 = --store). A new draw each time the task runs (each epoch)."""
    rng = np.random.default_rng()
    n = len(batch["id"])
    counts = np.full(n, times) + (rng.random(n) < fraction)
    index = rng.permutation(np.repeat(np.arange(n), counts))
    out = {k: np.asarray(v)[index] for k, v in batch.items()}
    out["store"] = np.full(len(index), store, np.int16)
    return out


def drawn(ds: ray.data.Dataset, n: int, draws: float, store: int) -> ray.data.Dataset | None:
    """One epoch's `draws` samples (in expectation) from a store's `n` (None when it gives none)."""
    if n <= 0 or draws <= 0:
        return None
    times = int(draws // n)
    ds = ds.map_batches(draw_rows, fn_kwargs={"times": times, "fraction": draws / n - times, "store": store},
                        batch_size=None, batch_format="numpy", num_cpus=READ_CPUS)
    return ds.repartition(target_num_rows_per_block=MIX_BLOCK_ROWS)
