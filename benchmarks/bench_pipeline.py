"""Pseudo-labeling pipeline overhead: the whole Ray Data job's images/s next to the teacher's own.

Both are measured in the same run on the same images with the same teacher settings; the ratio
pipeline / teacher is the share of the teacher's speed that the job keeps (decode, prompts, mask
writes and Ray Data scheduling included).

    python benchmarks/bench_pipeline.py                                     # CPU: tiny SAM, sample store
    python benchmarks/bench_pipeline.py --teacher sam --variant vit_h --checkpoint sam_vit_h.pth \\
        --gpus-per-worker 1 --num-workers 1 --store s3://bucket/store --limit 2000     # on a GPU node

`--cpu-per-image N` measures instead what the pipeline itself costs: N synthetic records (the
`bench_scale` store: tiny images, one box each) labeled by the box teacher on a local Ray, and the CPU
seconds per image of the driver and every process it started (Ray's workers, actors, raylet, GCS),
read from /proc while the job runs. The box teacher costs next to nothing, so this is the price of
parsing, planning, decoding, mask writing, the rows between stages and the sink.

    python benchmarks/bench_pipeline.py --cpu-per-image 4000 --num-cpus 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

try:
    import bpiml  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bpiml.data import storage
from bpiml.data.boxes import sanitize_boxes
from bpiml.data.imageio import decode_image
from bpiml.data.manifest import image_uri, read_manifest
from bpiml.pseudolabel.config import PseudoLabelConfig
from bpiml.pseudolabel.job import run_pseudolabel


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="input store (default: a fresh sample store in a temp folder)")
    p.add_argument("--n-images", type=int, default=32, help="sample store size when --store is not given")
    p.add_argument("--teacher", default="sam", choices=["sam", "grabcut", "box"])
    p.add_argument("--variant", default="tiny")
    p.add_argument("--checkpoint", help="SAM weights (default for tiny: a random tiny SAM written to a temp file)")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--limit", type=int)
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    p.add_argument("--cpu-per-image", type=int, metavar="N",
                   help="measure CPU seconds per image of the pipeline with the box teacher on N synthetic records")
    return p.parse_args()


class ProcessCpu(threading.Thread):
    """CPU seconds (user + system) of this process and all its descendants, sampled from /proc every
    `period` s; a process that exits keeps its last sample (at most `period` of its time is missed)."""

    def __init__(self, period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.period, self.stop, self.last = period, threading.Event(), {}  # pid -> (name, seconds)
        self.tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        parent: dict[int, int] = {}
        stats: dict[int, tuple[str, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            name, rest = text[text.index("(") + 1: text.rindex(")")], text[text.rindex(")") + 2:].split()
            parent[int(entry)] = int(rest[1])
            stats[int(entry)] = (name, (int(rest[11]) + int(rest[12])) / self.tick)
        me = os.getpid()
        for pid, (name, seconds) in stats.items():
            p, hops = pid, 0
            while p not in (me, 0, 1) and hops < 32:
                p, hops = parent.get(p, 0), hops + 1
            if p == me:
                self.last[pid] = (name, seconds)

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self._sample()

    def finish(self) -> dict[str, float]:
        self.stop.set()
        self.join()
        self._sample()
        by_kind: dict[str, float] = {}
        for pid, (name, seconds) in self.last.items():
            kind = "driver" if pid == os.getpid() else "ray_worker" if name.startswith("ray::") else "ray_system"
            by_kind[kind] = by_kind.get(kind, 0.0) + seconds
        return by_kind


def cpu_per_image(args: argparse.Namespace) -> None:
    """CPU seconds per image of the box-teacher pipeline on `args.cpu_per_image` synthetic records."""
    import ray

    from bench_scale import make_store

    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bpiml-bench-cpu-"))
    make_store(tmp / "store", args.cpu_per_image)
    sampler = ProcessCpu()
    sampler._sample()
    before = dict(sampler.last)
    sampler.start()
    ray.init(address="local", num_cpus=args.num_cpus or 2, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    summary = run_pseudolabel(PseudoLabelConfig(store=str(tmp / "store"), out=str(tmp / "out"), teacher="box",
                                                num_workers=1, cpus_per_worker=0.5, batch_size=64))
    seconds = time.perf_counter() - started
    by_kind = sampler.finish()
    by_kind["driver"] -= before.get(os.getpid(), ("", 0.0))[1]  # the imports and the store before the run
    ray.shutdown()
    n = summary["labeled_this_run"]
    total = sum(by_kind.values())
    rows = {"images": n, "wall_s": round(seconds, 2), "cpu_s_total": round(total, 2),
            **{f"cpu_s_{k}": round(v, 2) for k, v in sorted(by_kind.items())},
            "cpu_ms_per_image": round(1000 * total / n, 3),
            "cpu_ms_per_image_workers": round(1000 * by_kind.get("ray_worker", 0.0) / n, 3)}
    print("\npseudo-labeling pipeline CPU time, box teacher")
    for k, v in rows.items():
        print(f"  {k:<26} {v}")
    print(json.dumps(rows))


def teacher_alone(args: argparse.Namespace, store: str, checkpoint: str | None) -> tuple[float, int]:
    """images/s of the bare teacher on pre-decoded images (decode not timed), same batch size."""
    from bpiml.pseudolabel.teachers import build_teacher

    records = read_manifest(store)[: args.limit] if args.limit else read_manifest(store)
    images, boxes = [], []
    for rec in records:
        img, _ = decode_image(storage.read_bytes(image_uri(store, rec)))
        images.append(img)
        boxes.append(sanitize_boxes(rec.boxes, img.shape[1], img.shape[0])[0])
    device = "cuda" if args.gpus_per_worker > 0 else "cpu"
    teacher = build_teacher(args.teacher, checkpoint=checkpoint, variant=args.variant, device=device,
                            batch_size=args.batch_size)
    teacher.predict(images[: args.batch_size], boxes[: args.batch_size])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(images), args.batch_size):
        teacher.predict(images[i: i + args.batch_size], boxes[i: i + args.batch_size])
    return len(images) / (time.perf_counter() - start), len(images)


def main(args: argparse.Namespace) -> None:
    import ray

    logging.basicConfig(level=logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="bpiml-bench-")
    store = args.store
    if not store:
        from bpiml.data.sample import make_sample_store

        store = make_sample_store(str(Path(tmp, "store")), n_images=args.n_images, seed=0)
    checkpoint = args.checkpoint
    if args.teacher == "sam" and not checkpoint:
        if args.variant != "tiny":
            sys.exit("--checkpoint is required for SAM variants other than tiny")
        from bpiml.pseudolabel.teachers.tiny_sam import save_tiny_sam_checkpoint

        checkpoint = save_tiny_sam_checkpoint(str(Path(tmp, "tiny_sam.pth")))

    teacher_ips, n = teacher_alone(args, store, checkpoint)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    cfg = PseudoLabelConfig(store=store, out=str(Path(tmp, "out")), teacher=args.teacher, checkpoint=checkpoint,
                            variant=args.variant, num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker,
                            batch_size=args.batch_size, limit=args.limit, max_reject_rate=1.0)
    summary = run_pseudolabel(cfg)
    ray.shutdown()
    pipeline_ips = summary["images_per_second"]
    rows = {
        "images": n,
        "teacher": f"{args.teacher}/{args.variant}" if args.teacher == "sam" else args.teacher,
        "actors": args.num_workers,
        "teacher_alone_img_s": round(teacher_ips, 2),
        "pipeline_img_s": pipeline_ips,
        "pipeline_over_teacher": round(pipeline_ips / teacher_ips / args.num_workers, 3),
    }
    print("\npseudo-labeling pipeline vs teacher alone (same images, same run)")
    for k, v in rows.items():
        print(f"  {k:<22} {v}")
    print(json.dumps(rows))


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.cpu_per_image:
        cpu_per_image(arguments)
    else:
        main(arguments)
