"""The Ray Datasets a training run reads (see `bpiml.train.data` for the steps they are made of)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import ray
from ray.data import RandomSeedConfig

from bpiml.data import manifest
from bpiml.pseudolabel import reviews
from bpiml.pseudolabel import store as pseudo_store
from bpiml.runtime.datasets import READ_CPUS, read_lines
from bpiml.train import mixing
from bpiml.train.config import StoreSpec, TrainConfig
from bpiml.train.data import (
    CACHE_LIMIT,
    FILTERED,
    StorePart,
    TrainingData,
    augment_samples,
    decode_samples,
    sample_rows,
)

DECODE_CPUS = 0.5  # decode tasks take half a CPU: they share nodes with the training workers
# CPUs the data tasks need beside the workers: Ray Data's repartition (the BLOCK_ROWS split, the
# stores' mix) runs tasks of one whole CPU, which no setting lowers. With less free, validation
# waits for ever once the workers hold their CPUs (seen: 1 worker x 1.5 CPUs on 2 CPUs).
DATA_CPUS = 1.0
# Rows per block from the manifest on: one decode task each, and the unit the per-epoch shuffle
# moves. A manifest file is otherwise one block, decoded by one task into the object store whole
# (bench_scale: 1.9 GB at 100k records) and never reshuffled.
BLOCK_ROWS = 128


def _count_block(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    counts: dict[str, int] = {}
    for split, reason, review in zip(batch["split"], batch["reason"], batch["review"]):
        for key in (f"split:{split}" if split else f"skip:{reason}", f"review:{review}" if review else ""):
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


def _split(rows: ray.data.Dataset, split: str, config: TrainConfig) -> ray.data.Dataset:
    ds = rows.map_batches(_only, fn_kwargs={"split": split}, batch_format="numpy", num_cpus=READ_CPUS)
    return ds.limit(config.limit) if config.limit else ds


def _decode(ds: ray.data.Dataset, config: TrainConfig) -> ray.data.Dataset:
    return ds.map_batches(decode_samples, fn_kwargs={"size": config.model.img_size}, batch_size=16,
                          batch_format="numpy", num_cpus=DECODE_CPUS)


def _store_rows(spec: StoreSpec, config: TrainConfig) -> tuple[ray.data.Dataset, dict[str, int], pseudo_store.PseudoStore]:
    """One store's sample rows (targets by its supervision) and their split and skip counts."""
    opened = pseudo_store.PseudoStore.open(spec.uri, config.allow_external_source)
    rows = read_lines(manifest.manifest_files(opened.root)).map_batches(
        sample_rows, batch_format="numpy", num_cpus=READ_CPUS, fn_kwargs={
            "root": opened.root, "source": opened.source, "supervision": spec.supervision,
            "train_split": config.train_split, "val_split": config.val_split,
            "min_confidence": config.min_confidence,
            "decisions": reviews.latest_decisions(opened.root)})
    rows = rows.repartition(target_num_rows_per_block=BLOCK_ROWS)
    return rows, count_samples(rows), opened


def _skips(counts: dict[str, int]) -> dict[str, int]:
    return {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("skip:") and k != "skip:"}


def review_counts(counts: dict[str, int]) -> dict[str, int]:
    """Records a human reviewed (accepted, corrected, rejected) and those --min-confidence filtered out."""
    out = {status: counts.get(f"review:{status}", 0) for status in ("accepted", "corrected", "rejected")}
    return {"reviewed": sum(out.values()), **out, "filtered": counts.get(f"skip:{FILTERED}", 0)}


def _cached(config: TrainConfig, n_train: int) -> bool:
    return config.cache_decoded if config.cache_decoded is not None else n_train <= CACHE_LIMIT


def _store_part(spec: StoreSpec, rows: ray.data.Dataset, counts: dict[str, int],
                config: TrainConfig) -> tuple[StorePart, ray.data.Dataset]:
    """A store's decoded train samples (cached when small) and what an epoch draws from: those, or,
    for a store too large to cache, its rows (decoded after the draw)."""
    n_train = min(counts.get("split:train", 0), config.limit or counts.get("split:train", 0))
    rows = _split(rows, "train", config)
    train = _decode(rows, config)
    if _cached(config, n_train):
        train = train.materialize()
        return StorePart(spec, n_train, _skips(counts), train, review=review_counts(counts)), train
    return StorePart(spec, n_train, _skips(counts), train, review=review_counts(counts)), rows


def _mixed_train(config: TrainConfig, first: tuple[ray.data.Dataset, dict[str, int]]) -> list[StorePart]:
    """Every store's part; its `train` becomes this epoch's draws from it (`bpiml.train.mixing`)."""
    sources, parts = [], []
    for i, spec in enumerate(config.stores()):
        rows, counts = first if i == 0 else _store_rows(spec, config)[:2]
        part, source = _store_part(spec, rows, counts, config)
        parts.append(part)
        sources.append(source)
    shares = mixing.epoch_draws([p.n_train for p in parts], [p.spec.weight for p in parts])
    for i, (part, source, draws) in enumerate(zip(parts, sources, shares)):
        part.draws = draws
        ds = mixing.drawn(source, part.n_train, draws, i)
        part.epoch = None if ds is None else (ds if source is part.train else _decode(ds, config))
    return parts


def training_data(config: TrainConfig) -> TrainingData:
    """The train and validation datasets of the training stores, and what the driver needs to know of them.
    One store: its train split. Stores added (--add-store): each epoch's draws from all of them."""
    rows, counts, opened = _store_rows(config.stores()[0], config)
    n_val = min(counts.get("split:val", 0), config.limit or counts.get("split:val", 0))
    if config.add_store:
        parts = _mixed_train(config, (rows, counts))
        epochs = [p.epoch for p in parts if p.epoch is not None]
        train = epochs[0] if epochs else parts[0].train  # none has samples: the driver's checks say which
        if len(epochs) > 1:
            train = train.union(*epochs[1:])
        n_train = sum(p.n_train for p in parts)
    else:
        part, _ = _store_part(config.stores()[0], rows, counts, config)
        parts, train, n_train = [part], part.train, part.n_train
    val = _decode(_split(rows, "val", config), config) if n_val else parts[0].train.limit(max(4, config.num_workers))
    augment = {"scale_min": config.aug_scale_min, "hflip": config.aug_hflip, "color": config.aug_color,
               "jpeg_prob": config.aug_jpeg_prob}
    train = train.randomize_block_order(seed=RandomSeedConfig(seed=config.seed, reseed_after_execution=True))
    train = train.map_batches(augment_samples, fn_kwargs={"augment": augment}, batch_size=16, batch_format="numpy",
                              num_cpus=DECODE_CPUS)
    if not n_val:  # no GT: memory statistics and overlays still come from a few train images
        val = val.map_batches(lambda b: {**b, "has_gt": np.zeros(len(b["id"]), bool)}, batch_format="numpy",
                              num_cpus=READ_CPUS)
    teacher = opened.index.get("teacher") or {"name": "unknown"}  # an input store trained on its GT has none
    skipped: dict[str, int] = {}
    review: dict[str, int] = {}
    for part in parts:
        for totals, counted in ((skipped, part.skipped), (review, part.review)):
            for key, n in counted.items():
                totals[key] = totals.get(key, 0) + n
    return TrainingData(train=train, val=val, n_train=n_train, n_val=n_val, skipped=skipped,
                        teacher={**teacher, "teachers": opened.index.get("teachers", {})}, source=opened.source,
                        parts=parts, review=review)

