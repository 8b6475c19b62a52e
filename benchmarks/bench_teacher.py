"""Teacher throughput alone (images/s): SAM stock vs fast path side by side, plus GrabCut and box.

    python benchmarks/bench_teacher.py                          # CPU: tiny SAM, < 1 min
    python benchmarks/bench_teacher.py --device cuda --variant vit_b vit_h --compile

Without `--checkpoint` the SAM architecture is built with random weights (throughput does not
depend on the weights). Inputs are random `--size`-square images with `--boxes` boxes each.
Reference figures quoted in the issue (one H100, 1024x1024, images/s): ViT-B stock 52.5, SDPA+bf16 97.3, +compile
247.5; ViT-H 18.7 / 31.3 / 56.2.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import torch

from bpiml.pseudolabel.teachers.box import BoxTeacher
from bpiml.pseudolabel.teachers.grabcut import GrabCutTeacher
from bpiml.pseudolabel.teachers.sam import SamTeacher, build_sam_architecture, load_sam


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--variant", nargs="+", default=["vit_b"] if cuda else ["tiny"], help="SAM variants")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--checkpoint", default=None, help="SAM weights (one variant only); random weights if omitted")
    parser.add_argument("--batch-size", type=int, default=8 if cuda else 4, help="images per encoder pass")
    parser.add_argument("--size", type=int, default=1024, help="input image side, pixels")
    parser.add_argument("--images", type=int, default=64 if cuda else 8, help="images timed per teacher")
    parser.add_argument("--boxes", type=int, default=2, help="boxes per image")
    parser.add_argument("--compile", action="store_true", help="also time the fast path with torch.compile")
    parser.add_argument("--threads", type=int, default=0 if cuda else 1,
                        help="torch CPU threads (0 = torch's default; 1 on CPU keeps shared machines steady)")
    parser.add_argument("--grabcut-images", type=int, default=8, help="images timed for GrabCut (0 = skip)")
    return parser.parse_args(argv)


def make_inputs(count: int, size: int, boxes_per_image: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    images, boxes = [], []
    for _ in range(count):
        images.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        corners = rng.uniform(0, size * 0.6, (boxes_per_image, 2))
        sides = rng.uniform(size * 0.1, size * 0.4, (boxes_per_image, 2))
        boxes.append(np.concatenate([corners, corners + sides], axis=1).astype(np.float32))
    return images, boxes


def images_per_second(teacher, images: list[np.ndarray], boxes: list[np.ndarray], warmup: int) -> float:
    if warmup:
        teacher.predict(images[:warmup], boxes[:warmup])
    start = time.perf_counter()
    teacher.predict(images, boxes)  # returns host masks, so GPU work is finished when it returns
    return len(images) / (time.perf_counter() - start)


def main(args: argparse.Namespace) -> int:
    if args.checkpoint and len(args.variant) != 1:
        raise ValueError(f"--checkpoint fits one variant, got --variant {' '.join(args.variant)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    images, boxes = make_inputs(args.images, args.size, args.boxes)
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), "
          f"{args.images} images {args.size}x{args.size}, {args.boxes} boxes each, batch {args.batch_size}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    header = f"{'teacher':<14} {'stock img/s':>11} {'fast img/s':>10} {'fast/stock':>10}"
    if args.compile:
        header += f" {'+compile':>9} {'ratio':>6}"
    print(header)
    for variant in args.variant:
        if args.checkpoint:
            sam, sha, variant = load_sam(args.checkpoint, variant)
        else:
            sam, sha = build_sam_architecture(variant), "random"
        common = dict(variant=variant, weights_id=sha, device=args.device, batch_size=args.batch_size)
        rates = [images_per_second(SamTeacher(copy.deepcopy(sam), fast=False, **common), images, boxes, args.batch_size)]
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        rates.append(images_per_second(SamTeacher(copy.deepcopy(sam), fast=True, **common), images, boxes, args.batch_size))
        if args.compile:  # warm up with two full batches: compilation happens on the first
            compiled = SamTeacher(copy.deepcopy(sam), fast=True, compile=True, **common)
            rates.append(images_per_second(compiled, images, boxes, 2 * args.batch_size))
        row = f"sam-{variant:<10} {rates[0]:11.1f} {rates[1]:10.1f} {rates[1] / rates[0]:10.2f}"
        if args.compile:
            row += f" {rates[2]:9.1f} {rates[2] / rates[0]:6.2f}"
        print(row, flush=True)
        del sam
    if args.grabcut_images:
        gc_images, gc_boxes = images[: args.grabcut_images], boxes[: args.grabcut_images]
        print(f"{'grabcut':<14} {images_per_second(GrabCutTeacher(), gc_images, gc_boxes, 1):11.1f}")
    print(f"{'box':<14} {images_per_second(BoxTeacher(), images, boxes, 0):11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
