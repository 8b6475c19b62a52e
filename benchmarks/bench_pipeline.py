"""Pseudo-labeling pipeline overhead: the whole Ray Data job's images/s next to the teacher's own.

Both are measured in the same run on the same images with the same teacher settings; the ratio
pipeline / teacher is the share of the teacher's speed that the job keeps (decode, prompts, mask
writes and Ray Data scheduling included).

    python benchmarks/bench_pipeline.py                                     # CPU: tiny SAM, sample store
    python benchmarks/bench_pipeline.py --teacher sam --variant vit_h --checkpoint sam_vit_h.pth \\
        --gpus-per-actor 1 --num-actors 1 --store s3://bucket/store --limit 2000     # on a GPU node
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
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
    p.add_argument("--num-actors", type=int, default=1)
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--limit", type=int)
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    return p.parse_args()


def teacher_alone(args: argparse.Namespace, store: str, checkpoint: str | None) -> tuple[float, int]:
    """images/s of the bare teacher on pre-decoded images (decode not timed), same batch size."""
    from bpiml.pseudolabel.teachers import build_teacher

    records = read_manifest(store)[: args.limit] if args.limit else read_manifest(store)
    images, boxes = [], []
    for rec in records:
        img, _ = decode_image(storage.read_bytes(image_uri(store, rec)))
        images.append(img)
        boxes.append(sanitize_boxes(rec.boxes, img.shape[1], img.shape[0])[0])
    device = "cuda" if args.gpus_per_actor > 0 else "cpu"
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
                            variant=args.variant, num_actors=args.num_actors, gpus_per_actor=args.gpus_per_actor,
                            batch_size=args.batch_size, limit=args.limit, max_reject_rate=1.0)
    summary = run_pseudolabel(cfg)
    ray.shutdown()
    pipeline_ips = summary["images_per_second"]
    rows = {
        "images": n,
        "teacher": f"{args.teacher}/{args.variant}" if args.teacher == "sam" else args.teacher,
        "actors": args.num_actors,
        "teacher_alone_img_s": round(teacher_ips, 2),
        "pipeline_img_s": pipeline_ips,
        "pipeline_over_teacher": round(pipeline_ips / teacher_ips / args.num_actors, 3),
    }
    print("\npseudo-labeling pipeline vs teacher alone (same images, same run)")
    for k, v in rows.items():
        print(f"  {k:<22} {v}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main(parse_args())
