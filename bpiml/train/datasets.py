"""The Ray Datasets a training run reads (see `bpiml.train.data` for the steps they are made of)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import ray
from ray.data import RandomSeedConfig

from bpiml.data import manifest, storage
from bpiml.pseudolabel import store as pseudo_store
from bpiml.runtime.datasets import READ_CPUS, read_lines
from bpiml.train.config import TrainConfig
from bpiml.train.data import (
    CACHE_LIMIT,
    TrainingData,
    augment_samples,
    decode_samples,
    sample_rows,
)

DECODE_CPUS = 0.5  # decode tasks take half a CPU: they share nodes with the training workers
# Rows per block from the manifest on: one decode task each, and the unit the per-epoch shuffle
# moves. A manifest file is otherwise one block, decoded by one task into the object store whole
# (bench_scale: 1.9 GB at 100k records) and never reshuffled.
BLOCK_ROWS = 128


def store_roots(config: TrainConfig) -> tuple[str, str, dict[str, Any]]:
    """(pseudo store root, input store root, index) of the training store, checked."""
    opened = pseudo_store.PseudoStore.open(config.store, config.allow_external_source)
    return opened.root, opened.source, opened.index


def _count_block(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    counts: dict[str, int] = {}
    for split, reason in zip(batch["split"], batch["reason"]):
        key = f"split:{split}" if split else f"skip:{reason}"
        counts[key] = counts.get(key, 0) + 1
    return {"counts": np.asarray([json.dumps(counts)], dtype=object)}


def count_samples(rows: ray.data.Dataset) -> dict[str, int]:
    """Split and skip counts by one pass (one small row per block comes back, never the samples)."""
    total: dict[str, int] = {}
    for row in rows.map_batches(_count_block, batch_format="numpy", num_cpus=READ_CPUS).iter_rows():
        for key, n in json.loads(row["counts"]).items():
            total[key] = total.get(key, 0) + n
    return total


def _only(batch: dict[str, Any], split: str) -> dict[str, Any]:
    keep = np.asarray([s == split for s in batch["split"]], dtype=bool)
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def _decoded(rows: ray.data.Dataset, split: str, config: TrainConfig) -> ray.data.Dataset:
    ds = rows.map_batches(_only, fn_kwargs={"split": split}, batch_format="numpy", num_cpus=READ_CPUS)
    if config.limit:
        ds = ds.limit(config.limit)
    return ds.map_batches(decode_samples, fn_kwargs={"size": config.model.img_size}, batch_size=16,
                          batch_format="numpy", num_cpus=DECODE_CPUS)


def training_data(config: TrainConfig) -> TrainingData:
    """The train and validation datasets of `config.store`, and what the driver needs to know of them."""
    root, source, index = store_roots(config)
    files = manifest.manifest_files(root)
    rows = read_lines(files).map_batches(sample_rows, batch_format="numpy", num_cpus=READ_CPUS, fn_kwargs={
        "root": root, "source": source, "supervision": config.supervision, "train_split": config.train_split,
        "val_split": config.val_split, "allow_external": config.allow_external_source})
    rows = rows.repartition(target_num_rows_per_block=BLOCK_ROWS)
    counts = count_samples(rows)
    n_train, n_val = counts.get("split:train", 0), counts.get("split:val", 0)
    if config.limit:
        n_train, n_val = min(n_train, config.limit), min(n_val, config.limit)
    train = _decoded(rows, "train", config)
    cache = config.cache_decoded if config.cache_decoded is not None else n_train <= CACHE_LIMIT
    if cache:
        train = train.materialize()
    val = _decoded(rows, "val", config) if n_val else train.limit(max(4, config.num_workers))
    augment = {"scale_min": config.aug_scale_min, "hflip": config.aug_hflip, "color": config.aug_color,
               "jpeg_prob": config.aug_jpeg_prob}
    train = train.randomize_block_order(seed=RandomSeedConfig(seed=config.seed, reseed_after_execution=True))
    train = train.map_batches(augment_samples, fn_kwargs={"augment": augment}, batch_size=16, batch_format="numpy",
                              num_cpus=DECODE_CPUS)
    if not n_val:  # no GT: memory statistics and overlays still come from a few train images
        val = val.map_batches(lambda b: {**b, "has_gt": np.zeros(len(b["id"]), bool)}, batch_format="numpy",
                              num_cpus=READ_CPUS)
    teacher = index.get("teacher") or _legacy_teacher(root)
    skipped = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("skip:") and k != "skip:"}
    return TrainingData(train=train, val=val, n_train=n_train, n_val=n_val, skipped=skipped,
                        teacher={**teacher, "teachers": index.get("teachers", {})}, source=source)


def _legacy_teacher(root: str) -> dict[str, Any]:
    uri = storage.join(root, "config.json")
    try:
        cfg = json.loads(storage.read_bytes(uri)) if storage.exists(uri) else {}
    except ValueError:
        cfg = {}
    return {"name": str(cfg.get("teacher", "unknown"))} if isinstance(cfg, dict) else {"name": "unknown"}
