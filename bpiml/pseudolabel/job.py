"""The pseudo-labeling job: a box-annotated store in, one teacher mask per image out, on Ray Data.

    read_text(manifest files) -> parse_lines -> plan (resume, by id) -> todo files      (one execution)
    per wave of todo files: decode_rows (CPU tasks) -> TeacherLabeler (actor pool, one frozen
        teacher each) -> write_masks (CPU tasks) -> part_sink                   (one execution each)

Nothing proportional to the store passes through the driver: Ray Data reads the manifest (one
file or many shards, local or s3://), tasks write the masks and the part files, and counts come
back through a counter actor. The output is a pseudo-labeled store (`bpiml.pseudolabel.store`);
rerunning the same command resumes it (`bpiml.pseudolabel.plan`); one job writes it at a time
(`bpiml.data.lock`). The waves keep the driver's memory bounded by a wave, not the store
(`bpiml.pseudolabel.waves`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import ray

from bpiml.data import inputs, parts, retry, storage
from bpiml.data import manifest as manifest_io
from bpiml.data.lock import LOCK_FILE, WriterLock
from bpiml.data.manifest import SHARDS_DIR
from bpiml.pseudolabel import commit, plan, waves
from bpiml.pseudolabel.config import PseudoLabelConfig
from bpiml.pseudolabel.labeler import TeacherLabeler
from bpiml.pseudolabel.sink import part_sink
from bpiml.pseudolabel.stages import decode_rows, parse_lines, write_masks
from bpiml.pseudolabel.store import (
    RECORD_VERSION,
    read_index,
    source_reference,
    write_index,
)
from bpiml.pseudolabel.summary import Summary, build_summary, format_summary
from bpiml.pseudolabel.teachers import teacher_identity, weights
from bpiml.runtime import progress, raycluster
from bpiml.runtime.batch import WRITE_CPUS, BatchJob, PartsSink, compact, run_batch
from bpiml.runtime.datasets import READ_CPUS, read_lines
from bpiml.runtime.resources import GpuDecision, wait_for_resources

if TYPE_CHECKING:  # mlflow_run imports MLflow: only a run with --experiment loads it
    from bpiml.pseudolabel.mlflow_run import PageWriter

logger = logging.getLogger(__name__)

PARTITION_BYTES = 64 << 20  # manifest bytes per plan partition


def check_locations(cfg: PseudoLabelConfig) -> list[str]:
    """Fail fast (before any cluster work) on a missing store, an unwritable output or missing weights."""
    files = manifest_io.manifest_files(cfg.store)
    if all(storage.size(f) == 0 for f in files):  # stops at the first file with content
        raise ValueError(f"{cfg.store}: the manifest is empty ({', '.join(files[:3])}): nothing to label")
    storage.check_writable(cfg.out)
    if cfg.checkpoint and weights.official_name(cfg.checkpoint) is None:
        storage.check_readable(cfg.checkpoint)
    return files


def check_output(index: dict[str, Any] | None, cfg: PseudoLabelConfig, identity: str, source: dict[str, str]) -> None:
    """An existing output must come from the same input store and, without --relabel, the same teacher."""
    if index is None:
        return
    if index.get("source") and index["source"] != source:
        raise ValueError(f"{cfg.out} was made from another input store ({index['source']}); this run reads "
                         f"{cfg.store} ({source}). Use a new --out for another store.")
    previous = (index.get("teacher") or {}).get("identity")
    if previous and previous != identity and not cfg.relabel:
        raise ValueError(
            f"{cfg.out} holds pseudo masks of teacher {previous}; this run's teacher is {identity}. Mixing teachers "
            "in one store would train on both without saying so: use a new --out, or pass --relabel to relabel "
            "every record with this teacher.")


RECORD_KEYS = ("store", "teacher", "variant", "fast", "max_boxes", "grabcut_time_limit_s")  # besides the teacher


def file_versions(uris: list[str]) -> list[str]:
    """A version per file ("size:mtime" locally, "size:ETag" on S3) from one listing per folder."""
    listed: dict[str, dict[str, str]] = {}
    for folder in dict.fromkeys(storage.parent(u) for u in uris):
        fs, path = storage.filesystem(folder)
        prefix = "s3://" if storage.is_s3(folder) else ""
        listed[folder] = {prefix + e["name"].rstrip("/"): f"{e.get('size')}:{e.get('ETag') or e.get('mtime')}"
                          for e in fs.ls(path, detail=True)}
    return [listed[storage.parent(u)].get(u, "gone") for u in uris]


def input_signature(cfg: PseudoLabelConfig, files: list[str], identity: str) -> str:
    """What a finished run's records follow from: the teacher's identity (its weights' content), the options
    that change a record, and each manifest file's version; resources, layout and endpoints change none."""
    options = {k: getattr(cfg, k) for k in RECORD_KEYS}
    listing = list(zip(files, file_versions(files)))
    return hashlib.sha256(json.dumps([identity, RECORD_VERSION, options, listing], sort_keys=True,
                                     default=str).encode()).hexdigest()


def unchanged_rerun(cfg: PseudoLabelConfig, index: dict[str, Any] | None, signature: str) -> dict[str, Any] | None:
    """The summary of a rerun with nothing to do, or None: the last run finished complete with no reject
    from the same manifest files, teacher and options (a reject is retried by a full pass; so is --limit)."""
    if cfg.limit or not index or not index.get("complete") or index.get("input_signature") != signature:
        return None
    uri = storage.join(cfg.out, "summary.json")
    try:
        last = json.loads(storage.read_bytes(uri))
    except (OSError, ValueError):
        return None
    if last.get("rejected") or last.get("duplicates") or last.get("out") != cfg.out:
        return None
    if (last.get("confidence") or {}).get("review_below") != cfg.review_below:  # the count to review is redone
        return None
    return {**last, "labeled_this_run": 0, "skipped_already_labeled": last["images_in_manifest"], "relabeled": 0,
            "converted_or_clipped": 0, "superseded_removed": 0, "seconds": 0.0, "images_per_second": 0.0,
            "mean_iou_vs_gt": None, "images_with_gt": 0}


def _plan_partitions(files: list[str]) -> int:
    sample = files[:256]
    total = sum(storage.size(u) for u in sample) * (len(files) / max(len(sample), 1))
    return int(min(512, max(2, math.ceil(total / PARTITION_BYTES))))


def plan_pipeline(cfg: PseudoLabelConfig, files: list[str], identity: str, run_id: str,
                  counter: Any) -> ray.data.Dataset:
    """Read -> parse -> plan: the rows to label (its reject and supersede rows are written as parts of run
    `run_id` by the plan itself)."""
    text = read_lines(files, include_paths=True, line_numbers=True)
    if cfg.limit:
        text = text.limit(cfg.limit)
    rows = text.map_batches(parse_lines, fn_kwargs={"identity": identity}, batch_size=1024, batch_format="numpy",
                            num_cpus=READ_CPUS)
    return plan.plan(rows, plan.read_done(cfg.out), counter, _plan_partitions(files), cfg.out, run_id)


def label_pipeline(cfg: PseudoLabelConfig, rows: ray.data.Dataset, run_id: str, counter: Any,
                   labeler: type[TeacherLabeler] = TeacherLabeler) -> ray.data.Dataset:
    """Rows to label -> decode -> teacher -> masks written: the labeled rows for the sink; each stage writes
    the rows it rejects as parts of run `run_id`. `labeler`: the teacher stage's actor class
    (`TeacherLabeler`; the kill tests pass a slowed subclass)."""
    # One block of `part_rows` records is the unit of work from here on: one decode task, one
    # teacher call per `batch_size`, one part file. Without this split a block is a whole todo
    # file and nothing is committed until it is labeled through (a kill would lose it all).
    rows = rows.repartition(target_num_rows_per_block=cfg.part_rows)
    # Decode and write are CPU tasks before and after the teacher actors. Their CPU share differs
    # from the actors' so Ray Data does not fuse decoding into the (GPU) actor process.
    decode_cpus = 0.25 if cfg.cpus_per_worker != 0.25 else 0.3
    side = {"out": cfg.out, "run_id": run_id, "counter": counter}
    decoded = rows.map_batches(decode_rows, fn_kwargs={"store": cfg.store, "max_boxes": cfg.max_boxes, **side},
                               batch_size=cfg.part_rows, batch_format="pyarrow", num_cpus=decode_cpus)
    labeled = decoded.map_batches(labeler, fn_constructor_args=(cfg.to_dict(), run_id, counter), **raycluster.actor_pool_kwargs(
        cfg.num_workers, cfg.cpus_per_worker, cfg.gpus_per_worker or 0.0, cfg.batch_size))
    return labeled.map_batches(write_masks, fn_kwargs={"store": cfg.store, **side},
                               batch_size=cfg.part_rows, batch_format="numpy", num_cpus=WRITE_CPUS)


def labeling_waves(cfg: PseudoLabelConfig, files: list[str], identity: str, run_id: str, counter: Any,
                   labeler: type[TeacherLabeler] = TeacherLabeler) -> Iterator[ray.data.Dataset]:
    """The run's executions (`bpiml.pseudolabel.waves`): runs the plan into the todo files, then yields one
    labeling pipeline per wave; a wave's todo files are removed once the caller has run it."""
    folder, rows_per_file = waves.todo_folder(cfg.out), waves.file_rows(cfg.wave_rows)
    plan_pipeline(cfg, files, identity, run_id, counter).write_datasink(
        waves.TodoSink(folder, run_id, rows_per_file), ray_remote_args={"num_cpus": WRITE_CPUS})
    groups = waves.wave_groups(parts.run_parts(folder, run_id), cfg.wave_rows, rows_per_file)
    if len(groups) > 1:
        logger.info("labeling in %d waves of at most %d records (--wave-rows)", len(groups), cfg.wave_rows)
    for k, group in enumerate(groups, 1):
        if len(groups) > 1:
            logger.info("wave %d of %d: %d todo files", k, len(groups), len(group))
        yield label_pipeline(cfg, waves.read_wave(group), run_id, counter, labeler)
        for uri in group:
            storage.remove(uri)


def _prepare(cfg: PseudoLabelConfig) -> PseudoLabelConfig:
    if cfg.s3_endpoint:
        storage.set_s3_endpoint(cfg.s3_endpoint)
    retry.set_budget(cfg.storage_retry_s)  # before Ray starts: its workers get it through worker_env()
    # Local paths become absolute: Ray workers and the training job run in other folders.
    cfg = cfg.replace(store=storage.absolute(cfg.store), out=storage.absolute(cfg.out))
    inputs.require_boxes(cfg.store, inputs.detect(cfg.store), "pseudo-labeling")
    store, _ = inputs.as_store(cfg.store, cfg.import_dir or storage.join(cfg.out, "inputs"), inputs.FOR_TRAINING)
    cfg = cfg.replace(store=storage.absolute(store))
    if cfg.resolved_teacher == "grabcut" and cfg.teacher == "auto":
        logger.warning("=" * 78)
        logger.warning("NO SAM CHECKPOINT GIVEN: using the classical GrabCut teacher instead of SAM.")
        logger.warning("Pass --checkpoint vit_h (official weights, by name), a path or an s3:// URI for SAM masks.")
        logger.warning("=" * 78)
    return cfg


def _teacher_options(cfg: PseudoLabelConfig) -> dict[str, Any]:
    return {"checkpoint": cfg.checkpoint} if cfg.resolved_teacher == "sam" else {}


def _log_to_mlflow(cfg: PseudoLabelConfig, summary: dict[str, Any], review_page: PageWriter | None) -> None:
    if cfg.experiment:
        from bpiml.pseudolabel.mlflow_run import log_pseudolabel_run  # noqa: PLC0415 - MLflow only with --experiment

        log_pseudolabel_run(cfg, summary, review_page)


def run_pseudolabel(cfg: PseudoLabelConfig, labeler: type[TeacherLabeler] = TeacherLabeler,
                    review_page: PageWriter | None = None) -> dict[str, Any]:
    """Label every image of `cfg.store` into `cfg.out`; returns the summary (also saved as summary.json).
    `labeler`: the teacher stage's actor class (`TeacherLabeler`; tests/slow_pseudolabel.py passes a slowed one).
    `review_page`: draws the review page logged with the MLflow run (`--experiment`); `jobs/pseudolabel.py`
    passes `bpiml.review.page.write_page` (`review/` sits above this package); none: no page."""
    cfg = _prepare(cfg)
    files = check_locations(cfg)
    if cfg.experiment:  # a wrong tracking URI fails now, not after the labeling
        from bpiml.pseudolabel.mlflow_run import check_tracking  # noqa: PLC0415 - MLflow only with --experiment

        check_tracking(cfg)
    identity = teacher_identity(cfg.resolved_teacher, **_teacher_options(cfg))
    source = source_reference(cfg.store, cfg.out)
    index = read_index(cfg.out)
    check_output(index, cfg, identity, source)
    signature = input_signature(cfg, files, identity)
    done = unchanged_rerun(cfg, index, signature)
    if done is not None:  # no pass over the store, no Ray: a finished output reruns in one listing, writing nothing
        logger.info("%s is complete for this manifest, teacher and options (run %s): nothing to label",
                    cfg.out, index["runs"][-1] if index.get("runs") else "?")
        _log_to_mlflow(cfg, done, review_page)
        return done
    decision = cfg.gpu_decision()
    logger.info("teacher actors: %s", decision)
    cfg = cfg.replace(gpus_per_worker=decision.gpus_per_worker)
    raycluster.init_ray()
    wait_for_resources(cfg.cpus_per_worker * cfg.num_workers, decision.gpus_per_worker * cfg.num_workers,
                       cfg.resource_wait_s, "pseudo-labeling")
    raycluster.check_paths_reachable({"store": cfg.store, "out": cfg.out}, "pseudo-labeling")
    return run_batch(PseudoLabelJob(cfg, files, identity, source, signature, decision, labeler, review_page))


class PseudoLabelJob(BatchJob):
    """`run_pseudolabel` on the batch skeleton (`bpiml.runtime.batch`): under the output's writer lock, the
    plan into the todo files and each wave into the parts sink, then supersedes applied, parts compacted,
    the index marked complete."""

    what, progress_keys = "pseudo-labeling", ("labeled", "rejected", "skipped")

    def __init__(self, cfg: PseudoLabelConfig, files: list[str], identity: str, source: dict[str, str],
                 signature: str, decision: GpuDecision, labeler: type[TeacherLabeler] = TeacherLabeler,
                 review_page: PageWriter | None = None) -> None:
        super().__init__(cfg.out, cfg.max_reject_rate)
        self.cfg, self.files, self.identity, self.source, self.signature = cfg, files, identity, source, signature
        self.decision, self.labeler, self.review_page = decision, labeler, review_page
        self.writer = WriterLock(storage.join(cfg.out, LOCK_FILE), cfg.lock_ttl_s, "pseudo-labeling output")
        self.runs: list[str] = []
        self.stats: dict[str, Any] = {}

    def lock(self) -> WriterLock:
        return self.writer

    def start(self, run_id: str, counter: Any) -> None:
        cfg = self.cfg
        index = read_index(cfg.out)
        check_output(index, cfg, self.identity, self.source)
        self.runs = (list((index or {}).get("runs", [])) + [run_id])[-20:]
        write_index(cfg.out, {**(index or {}), "complete": False, "source": self.source, "runs": self.runs})
        stale = waves.clear(waves.todo_folder(cfg.out))
        if stale:
            logger.info("removed %d todo files of an earlier run that did not finish: planned again", stale)
        cfg.save(storage.join(cfg.out, "config.json"))
        logger.info("pseudo-labeling %s -> %s with teacher %s (run %s)", cfg.store, cfg.out, self.identity, run_id)

    def total(self) -> int | None:
        total = progress.count_records(self.files)
        return min(total, self.cfg.limit) if total is not None and self.cfg.limit else total

    def pipelines(self, run_id: str, counter: Any) -> Iterator[ray.data.Dataset]:
        return labeling_waves(self.cfg, self.files, self.identity, run_id, counter, self.labeler)

    def sink(self, run_id: str, counter: Any) -> PartsSink:
        return part_sink(self.cfg.out, run_id, counter, self.cfg.part_rows)

    def commit(self, run_id: str) -> dict[str, Any]:
        cfg = self.cfg
        self.writer.check()
        removed = commit.apply_supersedes(cfg.out, run_id)
        compact(storage.join(cfg.out, SHARDS_DIR), cfg.shard_rows, cfg.part_rows)
        commit.clean_run_folders(cfg.out, run_id)
        waves.clear(waves.todo_folder(cfg.out))
        return {"removed": removed, "stats": commit.store_stats(cfg.out, cfg.review_below)}

    def summarize(self, counts: dict[Any, float], committed: dict[str, Any], elapsed: float) -> dict[str, Any]:
        self.stats = committed["stats"]
        return build_summary(self.cfg, counts, committed, elapsed, self.identity, self.decision).to_dict()

    def seal(self, summary: dict[str, Any]) -> None:
        write_index(self.cfg.out, {"complete": True, "source": self.source, "runs": self.runs,
                                   "input_signature": None if self.cfg.limit else self.signature,
                                   "teacher": {"identity": self.identity, "name": self.cfg.resolved_teacher},
                                   "records": self.stats["records"], "teachers": self.stats["teachers"]})

    def finish(self, summary: dict[str, Any]) -> None:
        done = Summary(**summary)
        logger.debug("\n%s", format_summary(done))  # jobs/pseudolabel.py prints it
        _log_to_mlflow(self.cfg, summary, self.review_page)
        if done.images_in_manifest == 0:
            raise ValueError(f"{self.cfg.store}: the manifest has no records (files: {', '.join(self.files[:3])})")
        done.check_counts()

    def rejected(self, summary: dict[str, Any]) -> tuple[int, int]:
        return summary["rejected"], summary["images_in_manifest"]
