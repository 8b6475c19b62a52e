"""How fast does the synthesizer make images, per CPU core, and does it scale with Ray workers?

Three measurements side by side, each in a fresh process:
- `one core, no Ray`: `bpiml.synth.make.make_one` + encode in a loop (the per-core ceiling, files not written);
- `ray, 1 worker` and `ray, 2 workers`: the whole job (`run_synthesis`) on a local Ray with 1 and 2 CPUs,
  `--concurrency` 1 and 2, writing the store to a temporary folder.
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
                                            concurrency=workers, gallery=0))
    run = summary["this_run"]
    return {"images": run["made"], "seconds": run["seconds"], "cores": workers,
            "task_rate": run["images_per_task_second"]}


def measure(kind: str, args: argparse.Namespace) -> dict[str, float]:
    """Run one measurement in a child process (its own imports, caches and Ray)."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_synth as b; "
            f"print('RESULT', json.dumps(b.{kind}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(line.split(" ", 1)[1])


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
        "one core, no Ray": measure(f"bare({photos!r}, {args.n}, {args.max_side})", args),
        "ray, 1 worker": measure(f"with_ray({photos!r}, {args.n}, {args.max_side}, 1)", args),
        "ray, 2 workers": measure(f"with_ray({photos!r}, {args.n}, {args.max_side}, 2)", args),
    }
    print(f"{'measurement':<18} {'images':>7} {'seconds':>8} {'images/s':>9} {'per core':>9} {'per task-second':>16}")
    for name, r in rows.items():
        rate = r["images"] / r["seconds"]
        print(f"{name:<18} {r['images']:>7.0f} {r['seconds']:>8.1f} {rate:>9.1f} {rate / r['cores']:>9.1f} "
              f"{r['task_rate']:>16.1f}")
    one, two = (rows[k]["images"] / rows[k]["seconds"] for k in ("ray, 1 worker", "ray, 2 workers"))
    print(f"scaling 2 workers / 1 worker: {two / one:.2f}x (2.00 = linear)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
