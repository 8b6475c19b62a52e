"""The synthesizer job: a pool of ordinary photos in, a store of forged images with exact masks out.

    ranges of missing image indices -> synthesize_block (Ray tasks: make, write images and masks,
        then the block's manifest part) -> one small counts row per block back to the driver
    driver: lock, plan the ranges, progress, then counts by kind (a Ray Data pass over the parts),
        summary.json and gallery.html

The output is an ordinary store (`manifest/part-<start>-<end>.jsonl`, `images/`, `masks/`) that
every job reads. A part is written after its images and masks and holds the records of the index
range in its name, so it is the commit of that range: a rerun (after a kill, or with a larger
`--n`) lists the parts and makes only the missing indices, byte-identical to what a finished run
would have made (`bpiml.synth.make`). One job writes an output at a time (`bpiml.data.lock`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Callable

import cv2
import numpy as np
import ray

from bpiml.data import imageio, rejects, storage
from bpiml.data.lock import LOCK_FILE, WriterLock
from bpiml.data.manifest import SHARDS_DIR
from bpiml.data.rejects import REJECTS_DIR
from bpiml.runtime import progress, raycluster
from bpiml.runtime.datasets import READ_CPUS, read_lines
from bpiml.synth import gallery, make
from bpiml.synth.config import SynthConfig
from bpiml.synth.pool import Pool, photo_pool, shape_pool

logger = logging.getLogger(__name__)

RECIPE_FILE = "synth.json"  # the output's recipe and photo pool: a rerun must match it
_PART = re.compile(r"^part-(\d{9})-(\d{9})\.jsonl$")


BlockFn = Callable[..., dict[str, np.ndarray]]  # synthesize_block's signature: (batch, out, recipe, refs, threads)


def part_name(start: int, end: int) -> str:
    return f"part-{start:09d}-{end:09d}.jsonl"


def done_ranges(out: str) -> list[tuple[int, int]]:
    """The index ranges whose manifest part exists (sorted)."""
    names = [u.rsplit("/", 1)[-1] for u in storage.list_files(storage.join(out, SHARDS_DIR), ".jsonl")]
    return sorted((int(m[1]), int(m[2])) for m in map(_PART.match, names) if m)


def missing_ranges(n: int, done: list[tuple[int, int]], block: int) -> list[tuple[int, int]]:
    """[start, end) ranges of at most `block` indices covering range(n) minus the done ranges."""
    out, cursor = [], 0
    for start, end in done + [(n, n)]:
        for s in range(cursor, min(start, n), block):
            out.append((s, min(s + block, start, n)))
        cursor = max(cursor, end)
    return out


_POOLS: dict[str, Any] = {}


def _pools(refs: tuple[Any, Any]) -> tuple[Pool, Pool | None]:
    key = refs[0].hex()
    if key not in _POOLS:  # one ray.get per worker process, not per block
        _POOLS.clear()
        _POOLS[key] = (ray.get(refs[0]), ray.get(refs[1]) if refs[1] is not None else None)
    return _POOLS[key]


def synthesize_block(batch: dict[str, np.ndarray], out: str, recipe: make.Recipe, refs: tuple[Any, Any],
                     threads: int = 1) -> dict[str, np.ndarray]:
    """Make images [start, end): files first, then rejects, then the manifest part (the commit)."""
    pool, shapes = _pools(refs)
    cv2.setNumThreads(threads)  # a task holds `cpus_per_worker` CPUs: OpenCV's pool would take every core
    rows = []
    for start, end in zip(batch["start"], batch["end"]):
        started, records, bad, kinds = time.perf_counter(), [], [], {}
        for index in range(int(start), int(end)):
            try:
                record, image, mask = make.make_one(index, pool, shapes, recipe)
                make.write_one(out, record, image, mask)
            except (imageio.DecodeError, ValueError, OSError, cv2.error) as err:
                bad.append(rejects.Reject(make.record_id(recipe.seed, index), None, "synthesize",
                                          f"{type(err).__name__}: {err}").to_dict())
                continue
            records.append(record)
            kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
        if bad:
            storage.write_bytes(storage.join(out, REJECTS_DIR, part_name(int(start), int(end))),
                                rejects.to_jsonl(bad).encode())
        lines = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records)
        storage.write_bytes(storage.join(out, SHARDS_DIR, part_name(int(start), int(end))), lines.encode())
        rows.append({"made": len(records), "rejected": len(bad), "kinds": json.dumps(kinds),
                     "seconds": time.perf_counter() - started})
    return {k: np.asarray([r[k] for r in rows], dtype=object) for k in ("made", "rejected", "kinds", "seconds")}


def _count_kinds(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    counts: dict[str, int] = {}
    for text in batch["text"]:
        kind = str(json.loads(str(text)).get("kind", "unknown"))
        counts[kind] = counts.get(kind, 0) + 1
    return {"counts": np.asarray([json.dumps(counts)], dtype=object)}


def count_kinds(out: str) -> dict[str, int]:
    """Records per kind over the whole output, by a Ray Data pass (one small row per block comes back)."""
    files = storage.list_files(storage.join(out, SHARDS_DIR), ".jsonl")
    nonempty = [f for f in files if storage.size(f) > 0]
    total: dict[str, int] = {}
    if not nonempty:
        return total
    for row in read_lines(nonempty).map_batches(_count_kinds, batch_format="numpy", num_cpus=READ_CPUS).iter_rows():
        for kind, n in json.loads(row["counts"]).items():
            total[kind] = total.get(kind, 0) + n
    return dict(sorted(total.items()))


def check_recipe(out: str, cfg: SynthConfig, pool: Pool, shapes: Pool | None = None) -> dict[str, Any]:
    """An existing output must have been made with the same recipe, photo pool and shape pool."""
    wanted = {"recipe": cfg.recipe(), "recipe_hash": cfg.recipe_hash(), "photos": len(pool.paths),
              "pool_hash": pool.digest(), "shapes_hash": shapes.digest() if shapes is not None else None}
    uri = storage.join(out, RECIPE_FILE)
    if storage.exists(uri):
        had = json.loads(storage.read_bytes(uri))
        if any(had.get(k) != wanted[k] for k in ("recipe_hash", "pool_hash", "shapes_hash")):
            before = had.get("recipe", {})
            changed = sorted(k for k in {*before, *wanted["recipe"]} if before.get(k) != wanted["recipe"].get(k))
            if had.get("pool_hash") != wanted["pool_hash"]:
                changed.append(f"photo pool ({had.get('photos')} photos then, {len(pool.paths)} now)")
            if had.get("shapes_hash") != wanted["shapes_hash"]:
                changed.append("shape pool")
            raise ValueError(f"{out} was made with another recipe (changed: {', '.join(changed)}); a store keeps "
                             "one recipe so that its images are reproducible: use a new --out")
    storage.write_json(uri, wanted, sort_keys=True)
    return wanted


def recipe_of(cfg: SynthConfig) -> make.Recipe:
    return make.Recipe(seed=cfg.seed, mix=tuple(cfg.mix().items()), max_side=cfg.max_side, post_steps=cfg.post_steps,
                       val_fraction=cfg.val_fraction, box_pad=cfg.box_pad, box_jitter=cfg.box_jitter,
                       merge_distance=cfg.merge_distance)


def _run_blocks(cfg: SynthConfig, todo: list[tuple[int, int]], pool: Pool, shapes: Pool | None,
                block: BlockFn) -> dict[str, Any]:
    refs = (ray.put(pool), ray.put(shapes) if shapes is not None else None)
    items = ray.data.from_items([{"start": s, "end": e} for s, e in todo], override_num_blocks=len(todo))
    results = items.map_batches(block, batch_size=1, batch_format="numpy", num_cpus=cfg.cpus_per_worker,
                                concurrency=cfg.num_workers or None, num_gpus=cfg.gpus_per_worker or 0,
                                fn_kwargs={"out": cfg.out, "recipe": recipe_of(cfg), "refs": refs,
                                           "threads": max(1, int(cfg.cpus_per_worker))})
    counts: dict[str, float] = {"made": 0, "rejected": 0, "task_seconds": 0.0}
    started = last = time.monotonic()
    total = sum(e - s for s, e in todo)
    for row in results.iter_rows():
        counts["made"] += int(row["made"])
        counts["rejected"] += int(row["rejected"])
        counts["task_seconds"] += float(row["seconds"])
        if time.monotonic() - last > 30:
            last = time.monotonic()
            logger.info(progress.line("synthesizing", counts, ("made", "rejected"), total, last - started))
    counts["seconds"] = time.monotonic() - started
    return counts


def _prepare(cfg: SynthConfig) -> SynthConfig:
    if cfg.s3_endpoint:
        storage.set_s3_endpoint(cfg.s3_endpoint)
    return cfg.replace(photos=storage.absolute(cfg.photos), out=storage.absolute(cfg.out),
                       shapes=storage.absolute(cfg.shapes) if cfg.shapes else "")


def run_synthesis(cfg: SynthConfig, block: BlockFn = synthesize_block) -> dict[str, Any]:
    """Make `cfg.n` forged/authentic images into `cfg.out` (resuming it); returns the summary.
    `block`: the Ray Data task that makes one index range (`synthesize_block`; tests pass a slowed one)."""
    cfg = _prepare(cfg)
    pool = photo_pool(cfg.photos, cfg.all_photos, cfg.pool_split)
    shapes = shape_pool(cfg.shapes, cfg.pool_split)
    storage.check_writable(cfg.out)
    raycluster.init_ray()
    raycluster.check_paths_reachable({"photos": cfg.photos, "out": cfg.out}, "synthesis")
    with WriterLock(storage.join(cfg.out, LOCK_FILE), cfg.lock_ttl_s, "synthesis output") as lock:
        recipe = check_recipe(cfg.out, cfg, pool, shapes)
        todo = missing_ranges(cfg.n, done_ranges(cfg.out), cfg.part_rows)
        logger.info("synthesizing %d of %d images from %d photos into %s (%d tasks of <= %d)",
                    sum(e - s for s, e in todo), cfg.n, len(pool.paths), cfg.out, len(todo), cfg.part_rows)
        counts = _run_blocks(cfg, todo, pool, shapes, block) if todo else {"made": 0, "rejected": 0, "seconds": 0.0,
                                                                      "task_seconds": 0.0}
        lock.check()
        summary = build_summary(cfg, recipe, counts, count_kinds(cfg.out))
        storage.write_json(storage.join(cfg.out, "summary.json"), summary)
        if cfg.gallery:
            summary["gallery"] = gallery.write_gallery(cfg.out, cfg.gallery)
    attempted = counts["made"] + counts["rejected"]
    if attempted:
        rejects.check_reject_rate(int(counts["rejected"]), int(attempted), cfg.max_reject_rate, "synthesis",
                                  storage.join(cfg.out, REJECTS_DIR))
    return summary


def build_summary(cfg: SynthConfig, recipe: dict[str, Any], counts: dict[str, float], kinds: dict[str, int]
                  ) -> dict[str, Any]:
    made, seconds = counts["made"], counts["seconds"]
    return {
        "out": cfg.out, "images": sum(kinds.values()), "per_kind": kinds, "photos": recipe["photos"],
        "recipe_hash": recipe["recipe_hash"],
        "this_run": {"made": int(made), "rejected": int(counts["rejected"]), "seconds": round(seconds, 2),
                     "images_per_s": round(made / seconds, 2) if seconds else None,
                     "images_per_task_second": round(made / counts["task_seconds"], 2) if counts["task_seconds"] else None},
    }
