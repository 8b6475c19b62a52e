"""Does anything grow with the store? Pseudo-labeling and the training data path at N records, side by side.

For each N a synthetic store of N records (distinct ids and boxes, pointing at a few tiny images)
is pseudo-labeled with the box teacher, then the training datasets are built from the output and
one epoch of the train dataset is streamed (decode + augment, no model). Each N runs in a fresh
driver process with its own local Ray; a thread samples the driver's RSS and the object store's
bytes in use. Printed per N: driver peak RSS, object-store peak, images/s of both stages; then the
ratios largest N / smallest N (flat in N means ~1.0 for RSS and images/s).

    python benchmarks/bench_scale.py                              # N = 20k and 100k (~15 min on 2 cores)
    python benchmarks/bench_scale.py --sizes 2000 10000           # quick
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

try:
    import bpiml  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


class Sampler(threading.Thread):
    """Peak driver RSS and object-store bytes in use, sampled every `period` seconds."""

    def __init__(self, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.period, self.stop, self.rss_peak, self.store_peak = period, threading.Event(), 0.0, 0.0

    def run(self) -> None:
        import ray
        from ray._private.internal_api import (
            get_memory_info_reply,
            get_state_from_address,
        )

        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        while not self.stop.wait(self.period):
            self.rss_peak = max(self.rss_peak, rss_mb())
            try:
                used = get_memory_info_reply(state).store_stats.object_store_bytes_used
                self.store_peak = max(self.store_peak, used / (1 << 20))
            except Exception:  # noqa: BLE001, S110 - a sample missed is not a failure
                pass


def make_store(root: Path, n: int, n_images: int = 8) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for k in range(n_images):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        (root / "images" / f"{k}.png").write_bytes(buf.getvalue())
    with open(root / "manifest.jsonl", "w") as f:
        for i in range(n):
            x, y = int(rng.integers(0, 16)), int(rng.integers(0, 16))
            split = "val" if i % 10 == 0 else "train"
            f.write(json.dumps({"id": f"img-{i:09d}", "image": f"images/{i % n_images}.png",
                                "boxes": [[x, y, x + 12, y + 12]], "split": split}) + "\n")


def one(n: int, work: Path, cpus: int, part_rows: int) -> dict[str, float]:
    import ray

    from bpiml.pseudolabel.config import PseudoLabelConfig
    from bpiml.pseudolabel.job import run_pseudolabel
    from bpiml.train.config import TrainConfig
    from bpiml.train.datasets import training_data

    store, out = work / f"store-{n}", work / f"pseudo-{n}"
    make_store(store, n)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    baseline = rss_mb()
    sampler = Sampler()
    sampler.start()
    started = time.perf_counter()
    summary = run_pseudolabel(PseudoLabelConfig(store=str(store), out=str(out), teacher="box", num_actors=1,
                                                cpus_per_actor=0.5, batch_size=64, part_rows=part_rows))
    label_s = time.perf_counter() - started
    config = TrainConfig(store=str(out), num_workers=1, cache_decoded=False, batch_size=64)
    config = config.replace(model=config.model.replace(img_size=64, backbone_weights="none"))
    started = time.perf_counter()
    data = training_data(config)
    rows = sum(len(b["id"]) for b in data.train.iter_batches(batch_size=256, batch_format="numpy"))
    train_s = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    ray.shutdown()
    return {"n": n, "labeled": summary["labeled_this_run"], "label_img_s": summary["labeled_this_run"] / label_s,
            "train_rows": rows, "train_img_s": rows / train_s, "driver_baseline_mb": baseline,
            "driver_peak_mb": max(sampler.rss_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "object_store_peak_mb": sampler.store_peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--part-rows", type=int, default=256)
    parser.add_argument("--work", help="scratch folder (default: a temp folder, removed)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, Path(args.work), args.cpus, args.part_rows)), flush=True)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.work) as work:
        for n in args.sizes:
            done = subprocess.run([sys.executable, __file__, "--one", str(n), "--work", work, "--cpus", str(args.cpus),
                                   "--part-rows", str(args.part_rows)], capture_output=True, text=True, check=False)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"N={n} failed:\n{(done.stdout + done.stderr)[-4000:]}")
            results.append(json.loads(line[len("RESULT "):]))
            r = results[-1]
            print(f"N={n:>9,}  driver peak {r['driver_peak_mb']:7.0f} MB (baseline {r['driver_baseline_mb']:.0f})  "
                  f"object store peak {r['object_store_peak_mb']:7.1f} MB  pseudo-label {r['label_img_s']:7.0f} img/s  "
                  f"train data {r['train_img_s']:7.0f} img/s", flush=True)
    small, large = results[0], results[-1]
    print(f"\nlargest / smallest N ({large['n']:,} / {small['n']:,} = {large['n'] / small['n']:.0f}x records):")
    print(f"  driver peak RSS        {large['driver_peak_mb'] / small['driver_peak_mb']:.2f}x")
    print(f"  object store peak      {large['object_store_peak_mb'] / max(small['object_store_peak_mb'], 1e-9):.2f}x")
    print(f"  pseudo-label images/s  {large['label_img_s'] / small['label_img_s']:.2f}x")
    print(f"  train data images/s    {large['train_img_s'] / small['train_img_s']:.2f}x")


if __name__ == "__main__":
    main()
