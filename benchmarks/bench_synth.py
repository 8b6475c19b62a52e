"""How fast does the synthesizer make images, per CPU core, and does it scale with Ray workers?

Four measurements side by side, each in fresh processes:
- `1 process, no Ray`: `bpiml.synth.make.make_one` + encode in a loop (the per-core ceiling, files not written);
- `2 processes, no Ray`: two such loops at once, half the images each: how the machine itself scales;
- `ray, 1 worker` and `ray, 2 workers`: the whole job (`run_synthesis`) on a local Ray with 1 and 2 CPUs,
  `--num-workers` 1 and 2, writing the store to a temporary folder.
Printed: images/s (wall clock, Ray start-up of the tasks included), images/s per core, and images per
second of task time (what one busy core makes), then the ratio 2 workers / 1 worker (2.0 = linear).
The photo pool is scikit-image's bundled photos unless `--photos` names a folder or store.

    python benchmarks/bench_synth.py                     # 512 images per measurement, 512 px
    python benchmarks/bench_synth.py --photos /work/shared/data/natural --n 400
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import bpiml  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bare(photos: str, n: int, max_side: int) -> dict[str, float]:
    from bpiml.synth.config import SynthConfig
    from bpiml.synth.job import recipe_of
    from bpiml.synth.make import make_one
    from bpiml.synth.pool import photo_pool

    import cv2

    cv2.setNumThreads(1)  # one core, as one synthesis task holds
    cfg = SynthConfig(photos=photos, out="/nonexistent-out", n=n, max_side=max_side)
    pool, recipe = photo_pool(photos), recipe_of(cfg)
    make_one(0, pool, None, recipe)  # warm the photo cache and imports
    started = time.perf_counter()
    for i in range(n):
        make_one(i, pool, None, recipe)
    seconds = time.perf_counter() - started
    return {"images": n, "seconds": seconds, "cores": 1, "task_rate": n / seconds}


def with_ray(photos: str, n: int, max_side: int, workers: int) -> dict[str, float]:
    import ray

    from bpiml.synth.config import SynthConfig
    from bpiml.synth.job import run_synthesis

    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as out:
        summary = run_synthesis(SynthConfig(photos=photos, out=out, n=n, max_side=max_side, part_rows=16,
                                            num_workers=workers, gallery=0))
    run = summary["this_run"]
    return {"images": run["made"], "seconds": run["seconds"], "cores": workers,
            "task_rate": run["images_per_task_second"]}


def measure(kind: str, copies: int = 1) -> dict[str, float]:
    """Run one measurement in `copies` child processes at once (each its own imports, caches and Ray);
    several copies add up their images and take the slowest one's seconds."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_synth as b; "
            f"print('RESULT', json.dumps(b.{kind}))")
    children = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(copies)]
    results = []
    for child in children:
        out, err = child.communicate()
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"{kind} failed:\n{err[-3000:]}")
        results.append(json.loads(line.split(" ", 1)[1]))
    if copies == 1:
        return results[0]
    return {"images": sum(r["images"] for r in results), "seconds": max(r["seconds"] for r in results),
            "cores": copies, "task_rate": sum(r["task_rate"] for r in results) / copies}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default="", help="folder of photos or store (default: scikit-image's photos)")
    parser.add_argument("--n", type=int, default=512, help="images per measurement")
    parser.add_argument("--max-side", type=int, default=512)
    args = parser.parse_args()
    photos = args.photos
    if not photos:
        from bpiml.data.sample import write_bundled_photos

        photos = tempfile.mkdtemp(prefix="bench-synth-photos-")
        write_bundled_photos(photos)
    rows = {
        "1 process, no Ray": measure(f"bare({photos!r}, {args.n}, {args.max_side})"),
        "2 processes, no Ray": measure(f"bare({photos!r}, {args.n // 2}, {args.max_side})", copies=2),
        "ray, 1 worker": measure(f"with_ray({photos!r}, {args.n}, {args.max_side}, 1)"),
        "ray, 2 workers": measure(f"with_ray({photos!r}, {args.n}, {args.max_side}, 2)"),
    }
    print(f"{'measurement':<18} {'images':>7} {'seconds':>8} {'images/s':>9} {'per core':>9} {'per task-second':>16}")
    for name, r in rows.items():
        rate = r["images"] / r["seconds"]
        print(f"{name:<18} {r['images']:>7.0f} {r['seconds']:>8.1f} {rate:>9.1f} {rate / r['cores']:>9.1f} "
              f"{r['task_rate']:>16.1f}")
    rate = {k: r["images"] / r["seconds"] for k, r in rows.items()}
    print(f"scaling 2 workers / 1 worker: {rate['ray, 2 workers'] / rate['ray, 1 worker']:.2f}x (2.00 = linear); "
          f"the machine itself, 2 bare processes / 1: {rate['2 processes, no Ray'] / rate['1 process, no Ray']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
