"""The pseudo-labeling pipeline: a box-annotated store in, one teacher mask per image out.

Ray Data reads the store's manifest (no listing of keys), parses and decodes on CPU tasks, and maps
a pool of actors that each hold one frozen teacher (loaded once in `__init__`). Actors write the
masks; the driver streams the per-image records into part files, so a re-run with the same output
skips what is done and the final manifest holds exactly one record per labeled image.

    <out>/pseudo/<id>.png      one-channel 0/255 mask at the image's resolution
    <out>/manifest.jsonl       input record + source, pseudo_mask, teacher, teacher_version, mask_area, iou_gt, notes
    <out>/rejects.jsonl        id, image, reason, action: "rejected" (not labeled), or "converted"/"clipped" (labeled)
    <out>/config.json          the resolved config
    <out>/summary.json         counts, throughput, mean pseudo-vs-GT IoU
    <out>/parts/               streamed records of every run (what resume reads)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

from bpiml.data import storage
from bpiml.config import BaseConfig, check_choice, check_range, field

logger = logging.getLogger(__name__)

TEACHER_CHOICES = ("auto", "sam", "grabcut", "box")
VARIANTS = ("vit_b", "vit_l", "vit_h", "tiny")
DEFAULT_STORE = ".bpiml/sample"
DEFAULT_OUT = ".bpiml/sample-pseudo"


@dataclasses.dataclass
class PseudoLabelConfig(BaseConfig):
    store: str = field(DEFAULT_STORE, "input store root (local folder or s3://bucket/prefix) holding manifest.jsonl")
    out: str = field(DEFAULT_OUT, "output store root for pseudo masks, manifest, rejects, config and summary")
    teacher: str = field("auto", "sam | grabcut | box | auto (sam when --checkpoint is given, else grabcut)")
    checkpoint: str | None = field(None, "SAM checkpoint, local path or s3:// URI (sam_vit_b_01ec64.pth, ...)")
    variant: str = field("vit_b", "SAM variant: vit_b | vit_l | vit_h (tiny: test model)")
    fast: bool | None = field(None, "SAM fast path (fused attention, bf16); default: on for GPU, off for CPU")
    compile: bool = field(False, "torch.compile the SAM image encoder (GPU)")
    num_actors: int = field(2, "teacher actors in the pool (one model each)")
    gpus_per_actor: float = field(0.0, "GPUs per teacher actor; 0 = CPU")
    cpus_per_actor: float = field(0.5, "CPUs reserved per teacher actor (fractional leaves room for decode tasks)")
    batch_size: int = field(4, "images per teacher call (SAM: images per encoder pass)")
    limit: int | None = field(None, "label at most this many images of the manifest (first N lines)")
    max_reject_rate: float = field(0.05, "fail the job when more than this fraction of images is rejected")
    rows_per_block: int = field(16, "manifest rows per Ray Data block (parallelism of decoding)")
    s3_endpoint: str | None = field(None, "S3-compatible endpoint URL (MinIO, test server); default: AWS environment")
    flush_every: int = field(1000, "records per streamed part file (resume granularity)")

    def validate(self) -> None:
        check_choice("teacher", self.teacher, TEACHER_CHOICES)
        check_choice("variant", self.variant, VARIANTS)
        check_range("num_actors", self.num_actors, 1)
        check_range("gpus_per_actor", self.gpus_per_actor, 0)
        check_range("cpus_per_actor", self.cpus_per_actor, 0)
        check_range("batch_size", self.batch_size, 1)
        check_range("max_reject_rate", self.max_reject_rate, 0, 1)
        check_range("rows_per_block", self.rows_per_block, 1)
        check_range("flush_every", self.flush_every, 1)
        if self.limit is not None:
            check_range("limit", self.limit, 1)
        if self.teacher == "sam" and not self.checkpoint:
            raise ValueError("teacher 'sam' needs --checkpoint (local path or s3:// URI of the SAM weights)")
        if self.store.rstrip("/") == self.out.rstrip("/"):
            raise ValueError(f"out must differ from store, both are {self.out!r}")

    @property
    def resolved_teacher(self) -> str:
        if self.teacher != "auto":
            return self.teacher
        return "sam" if self.checkpoint else "grabcut"


# --- stage 1: parse and decode (CPU tasks) -----------------------------------------------------
def _empty_image() -> np.ndarray:
    return np.zeros((1, 1, 3), np.uint8)


def decode_rows(batch: dict[str, np.ndarray], store: str) -> dict[str, Any]:
    """Manifest lines -> decoded images and clean boxes; bad rows become rejects."""
    from bpiml.data.boxes import sanitize_boxes
    from bpiml.data.imageio import DecodeError, decode_image
    from bpiml.data.manifest import Record, image_uri

    out: dict[str, list[Any]] = {k: [] for k in ("id", "record", "image", "boxes", "status", "reason", "notes")}
    for line in batch["text"]:
        status, reason, notes = "ok", "", []
        image, boxes = _empty_image(), np.zeros((0, 4), np.float32)
        rec_id, record = "", {}
        try:
            raw = json.loads(line)
            rec_id = str(raw.get("id", "")) if isinstance(raw, dict) else ""
            rec = Record.from_dict(raw)
            record = rec.to_dict()
            image, notes = decode_image(storage.read_bytes(image_uri(store, rec)), rec.image)
            boxes, box_notes = sanitize_boxes(rec.boxes, image.shape[1], image.shape[0])
            notes = notes + box_notes
            if rec.boxes and len(boxes) == 0:
                status, reason = "rejected", "every box is degenerate or outside the image"
        except json.JSONDecodeError as err:
            status, reason = "rejected", f"manifest line is not JSON: {err}"
        except FileNotFoundError as err:
            status, reason = "rejected", f"image missing: {err}"
        except DecodeError as err:
            status, reason = "rejected", f"image unreadable: {err}"
        except (ValueError, TypeError, KeyError) as err:
            status, reason = "rejected", f"bad record: {err}"
        except OSError as err:
            status, reason = "rejected", f"image unreadable: {type(err).__name__}: {err}"
        if status != "ok":
            image = _empty_image()
        out["id"].append(rec_id)
        out["record"].append(json.dumps(record or {"raw": str(line)[:500]}))
        out["image"].append(image)
        out["boxes"].append(np.asarray(boxes, np.float32).reshape(-1, 4))
        out["status"].append(status)
        out["reason"].append(reason)
        out["notes"].append(json.dumps(notes))
    return out


# --- stage 2: the teacher actors -------------------------------------------------------------
class TeacherLabeler:
    """One frozen teacher per actor (loaded once); a batch of images in, their masks out.

    Nothing else happens here, so the accelerator is not kept waiting by decoding, PNG encoding
    or writes: those run in CPU tasks before and after this stage.
    """

    def __init__(self, config: dict[str, Any]):
        from bpiml.pseudolabel.teachers import build_teacher

        self.cfg = PseudoLabelConfig.from_dict(config)
        if self.cfg.s3_endpoint:
            storage.set_s3_endpoint(self.cfg.s3_endpoint)
        device = "cuda" if self.cfg.gpus_per_actor > 0 else "cpu"
        self.teacher = build_teacher(
            self.cfg.resolved_teacher,
            checkpoint=self.cfg.checkpoint,
            variant=self.cfg.variant,
            device=device,
            fast=self.cfg.fast,
            compile=self.cfg.compile,
            batch_size=self.cfg.batch_size,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["status"])
        ok = [i for i in range(n) if batch["status"][i] == "ok"]
        masks = self.teacher.predict([batch["image"][i] for i in ok], [batch["boxes"][i] for i in ok]) if ok else []
        by_row = dict(zip(ok, masks))
        return {
            "id": list(batch["id"]),
            "record": list(batch["record"]),
            "status": list(batch["status"]),
            "reason": list(batch["reason"]),
            "notes": list(batch["notes"]),
            "mask": [by_row[i].astype(np.uint8) if i in by_row else np.zeros((1, 1), np.uint8) for i in range(n)],
            "teacher": [self.teacher.name] * n,
            "teacher_version": [self.teacher.version] * n,
        }


# --- stage 3: write masks, compare with ground truth (CPU tasks) ------------------------------
def write_masks(batch: dict[str, np.ndarray], store: str, out: str) -> dict[str, list[Any]]:
    """Encode and write each mask as PNG, score it against the GT mask if any, emit the output record."""
    from bpiml.data.imageio import DecodeError, decode_mask, encode_mask_png
    from bpiml.data.manifest import Record, mask_uri

    n = len(batch["status"])
    records = [json.loads(r) for r in batch["record"]]
    status = [str(s) for s in batch["status"]]
    reason = [str(r) for r in batch["reason"]]
    jobs = {}
    with ThreadPoolExecutor(max_workers=8) as pool:  # object-store writes are latency-bound
        for i in range(n):
            if status[i] == "ok":
                rel = f"pseudo/{_safe_name(records[i]['id'])}.png"
                data = encode_mask_png(batch["mask"][i].astype(bool))
                jobs[i] = (rel, pool.submit(storage.write_bytes, storage.join(out, rel), data))
        for i, (rel, future) in jobs.items():
            try:
                future.result()
            except OSError as err:
                status[i], reason[i] = "rejected", f"mask write failed: {err}"
                continue
            mask = batch["mask"][i].astype(bool)
            notes = json.loads(batch["notes"][i])
            iou = None
            gt_uri = mask_uri(store, Record.from_dict(records[i]))
            if gt_uri:
                try:
                    gt = decode_mask(storage.read_bytes(gt_uri), records[i].get("mask") or "")
                    if gt.shape == mask.shape:
                        iou = _iou(mask, gt)
                    else:
                        notes.append(f"ground-truth mask size {gt.shape} differs from image {mask.shape}: IoU skipped")
                except (FileNotFoundError, DecodeError) as err:
                    notes.append(f"ground-truth mask unreadable: {err}")
            records[i].update(source=store, pseudo_mask=rel, teacher=str(batch["teacher"][i]),
                              teacher_version=str(batch["teacher_version"][i]), mask_area=float(mask.mean()),
                              iou_gt=iou, notes=notes)
    return {"id": [str(x) for x in batch["id"]], "status": status, "reason": reason,
            "record": [json.dumps(r) for r in records], "notes": [str(x) for x in batch["notes"]]}


def _safe_name(record_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in record_id)


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


# --- driver: parts, resume, summary ---------------------------------------------------------
class _PartWriter:
    """Streams JSON lines into numbered part files below `root` (one object per flush)."""

    def __init__(self, root: str, prefix: str, flush_every: int):
        self.root, self.prefix, self.flush_every = root, prefix, flush_every
        self.rows: list[str] = []
        self.seq = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(json.dumps(row))
        if len(self.rows) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        uri = storage.join(self.root, f"{self.prefix}-{self.seq:06d}.jsonl")
        storage.write_bytes(uri, ("\n".join(self.rows) + "\n").encode())
        self.rows, self.seq = [], self.seq + 1


def _read_parts(out: str, kind: str) -> Iterator[dict[str, Any]]:
    for uri in storage.list_files(storage.join(out, "parts"), ".jsonl"):
        if not os.path.basename(uri).startswith(kind):
            continue
        for line in storage.read_bytes(uri).decode(errors="replace").splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a part cut short by a crash: its images are simply labeled again


def _manifest_lines(manifest: str, limit: int | None) -> list[str]:
    lines = [ln for ln in storage.read_bytes(manifest).decode().splitlines() if ln.strip()]
    return lines[:limit] if limit else lines


def _line_id(line: str) -> str | None:
    try:
        value = json.loads(line)
        return str(value["id"]) if isinstance(value, dict) and "id" in value else None
    except json.JSONDecodeError:
        return None


def check_inputs(cfg: PseudoLabelConfig) -> str:
    """Fail fast (before any cluster work) on a missing store, unwritable output or missing weights."""
    from bpiml.data.manifest import manifest_uri

    manifest = manifest_uri(cfg.store)
    storage.check_readable(manifest)
    storage.check_writable(cfg.out)
    if cfg.checkpoint:
        storage.check_readable(cfg.checkpoint)
    return manifest


def run_pseudolabel(cfg: PseudoLabelConfig) -> dict[str, Any]:
    """Label every image of `cfg.store` into `cfg.out`; returns the summary (also saved as summary.json)."""
    import ray

    from bpiml.runtime.raycluster import check_gpus, init_ray

    if cfg.s3_endpoint:
        storage.set_s3_endpoint(cfg.s3_endpoint)
    # Local paths become absolute: Ray workers and the training job run in other folders.
    cfg = cfg.replace(store=storage.absolute(cfg.store), out=storage.absolute(cfg.out))
    manifest = check_inputs(cfg)
    if cfg.resolved_teacher == "grabcut" and cfg.teacher == "auto":
        logger.warning("=" * 78)
        logger.warning("NO SAM CHECKPOINT GIVEN: using the classical GrabCut teacher instead of SAM.")
        logger.warning("Pass --checkpoint <path or s3:// URI to sam_vit_*.pth> for SAM pseudo masks.")
        logger.warning("=" * 78)

    lines = _manifest_lines(manifest, cfg.limit)
    input_ids = [_line_id(ln) for ln in lines]
    done = {r["id"]: r for r in _read_parts(cfg.out, "records") if r.get("id")}
    todo, seen, duplicates = [], set(), []
    for ln, rid in zip(lines, input_ids):
        if rid is not None and rid in seen:
            duplicates.append(rid)
        elif rid is None or rid not in done:
            todo.append(ln)
        seen.add(rid)
    logger.info("%d images in %s; %d already labeled in %s; %d to label with teacher %s",
                len(lines), manifest, len(lines) - len(todo), cfg.out, len(todo), cfg.resolved_teacher)
    cfg.save(storage.join(cfg.out, "config.json"))

    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    parts = storage.join(cfg.out, "parts")
    records = _PartWriter(parts, f"records-{run_id}", cfg.flush_every)
    rejects = _PartWriter(parts, f"rejects-{run_id}", cfg.flush_every)
    counts = {"labeled": 0, "rejected": len(duplicates), "converted_or_clipped": 0}
    for rid in duplicates:
        rejects.add({"id": f"{rid}#duplicate", "image": None, "reason": f"duplicate id {rid!r}: only its first record is labeled",
                     "action": "rejected"})
    started = time.perf_counter()
    if todo:
        init_ray()
        check_gpus(cfg.gpus_per_actor, cfg.num_actors, "pseudo-labeling")
        ds = ray.data.from_items([{"text": ln} for ln in todo])
        ds = ds.repartition(target_num_rows_per_block=cfg.rows_per_block)
        # Decode and write run as CPU tasks before and after the teacher actors. Their CPU share differs
        # from the actors' so Ray Data does not fuse decoding into the (GPU) actor process.
        decode_cpus = 0.25 if cfg.cpus_per_actor != 0.25 else 0.3
        ds = ds.map_batches(decode_rows, fn_kwargs={"store": cfg.store}, batch_size=cfg.rows_per_block,
                            num_cpus=decode_cpus)
        remote_args: dict[str, Any] = {"num_cpus": cfg.cpus_per_actor}
        if cfg.gpus_per_actor > 0:
            remote_args["num_gpus"] = cfg.gpus_per_actor
        ds = ds.map_batches(
            TeacherLabeler,
            fn_constructor_args=(cfg.to_dict(),),
            batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
            **remote_args,
        )
        ds = ds.map_batches(write_masks, fn_kwargs={"store": cfg.store, "out": cfg.out},
                            batch_size=cfg.rows_per_block, num_cpus=0.25)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for rid, status, reason, record, notes in zip(
                batch["id"], batch["status"], batch["reason"], batch["record"], batch["notes"]
            ):
                rec = json.loads(record)
                if status == "ok":
                    records.add(rec)
                    counts["labeled"] += 1
                    for note in json.loads(notes):
                        counts["converted_or_clipped"] += 1
                        rejects.add({"id": str(rid), "image": rec.get("image"), "reason": note,
                                     "action": "clipped" if "box" in note else "converted"})
                else:
                    counts["rejected"] += 1
                    rejects.add({"id": str(rid), "image": rec.get("image", rec.get("raw")), "reason": str(reason),
                                 "action": "rejected"})
    records.flush()
    rejects.flush()
    elapsed = time.perf_counter() - started
    return _finish(cfg, lines, input_ids, counts, elapsed)


def _finish(cfg: PseudoLabelConfig, lines: list[str], input_ids: list[str | None], counts: dict[str, int],
            elapsed: float) -> dict[str, Any]:
    """Merge the parts into the final manifest and rejects table, check the reject rate, write the summary."""
    from bpiml.data.manifest import write_manifest

    done = {r["id"]: r for r in _read_parts(cfg.out, "records") if r.get("id")}
    wanted = [rid for rid in input_ids if rid is not None]
    final = [done[rid] for rid in dict.fromkeys(wanted) if rid in done]
    write_manifest(final, storage.join(cfg.out, "manifest.jsonl"))
    # Conversions/clips of labeled images from every run; rejections only where the image is still unlabeled,
    # latest attempt first (part names sort by run time).
    final_ids = {r["id"] for r in final}
    notes: dict[tuple[str, str], dict[str, Any]] = {}
    rejected: dict[str, dict[str, Any]] = {}
    for row in _read_parts(cfg.out, "rejects"):
        if row.get("action") == "rejected":
            if row.get("id") not in final_ids:
                rejected[row.get("id") or row.get("image") or ""] = row
        elif row.get("id") in final_ids:
            notes[(row["id"], row.get("reason", ""))] = row
    reject_rows = list(rejected.values()) + list(notes.values())
    storage.write_bytes(storage.join(cfg.out, "rejects.jsonl"),
                        "".join(json.dumps(r) + "\n" for r in reject_rows).encode())
    ious = [r["iou_gt"] for r in final if r.get("iou_gt") is not None]
    n_rejected = len(lines) - len(final)
    summary = {
        "images_in_manifest": len(lines),
        "labeled_total": len(final),
        "labeled_this_run": counts["labeled"],
        "skipped_already_labeled": len(final) - counts["labeled"],
        "rejected": n_rejected,
        "converted_or_clipped": counts["converted_or_clipped"],
        "reject_rate": n_rejected / max(len(lines), 1),
        "seconds": round(elapsed, 2),
        "images_per_second": round(counts["labeled"] / elapsed, 2) if elapsed > 0 and counts["labeled"] else 0.0,
        "mean_iou_vs_gt": round(float(np.mean(ious)), 4) if ious else None,
        "images_with_gt": len(ious),
        "teacher": cfg.resolved_teacher,
        "out": cfg.out,
    }
    storage.write_bytes(storage.join(cfg.out, "summary.json"), (json.dumps(summary, indent=2) + "\n").encode())
    logger.info("\n%s", format_summary(summary))
    if summary["reject_rate"] > cfg.max_reject_rate:
        raise RuntimeError(
            f"{n_rejected} of {len(lines)} images rejected ({summary['reject_rate']:.1%} > max_reject_rate "
            f"{cfg.max_reject_rate:.1%}); see {storage.join(cfg.out, 'rejects.jsonl')}"
        )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    iou = summary["mean_iou_vs_gt"]
    rows = [
        ("teacher", summary["teacher"]),
        ("images in manifest", summary["images_in_manifest"]),
        ("labeled (total)", summary["labeled_total"]),
        ("labeled this run", summary["labeled_this_run"]),
        ("skipped (already labeled)", summary["skipped_already_labeled"]),
        ("rejected", f"{summary['rejected']} ({summary['reject_rate']:.1%})"),
        ("converted / clipped", summary["converted_or_clipped"]),
        ("throughput", f"{summary['images_per_second']} images/s over {summary['seconds']} s"),
        ("mean pseudo-vs-GT IoU", "n/a (no GT masks)" if iou is None else f"{iou:.4f} over {summary['images_with_gt']} images"),
        ("output", summary["out"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "pseudo-labeling summary\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
