"""Does anything grow with the store? Pseudo-labeling and the training data path at N records, side by side.

For each N a synthetic store of N records (distinct ids and boxes, pointing at a few tiny images)
is pseudo-labeled with the box teacher, then the training datasets are built from the output and
one epoch of the train dataset is streamed (decode + augment, no model). Each stage at each N runs
in a fresh driver process with its own local Ray, importing what that job's driver imports (the
pseudo-labeling driver no torch, the training driver torch); a thread samples the driver's RSS and
the object store's bytes in use. Printed per N and stage: driver peak RSS and its baseline after
imports and `ray.init`, object-store peak, images/s; then the ratios largest N / smallest N (flat
in N means ~1.0 for RSS and images/s).

    python benchmarks/bench_scale.py                              # N = 20k and 100k (~15 min on 2 cores)
    python benchmarks/bench_scale.py --sizes 2000 10000           # quick
    python benchmarks/bench_scale.py --stages pseudolabel --sizes 20000 1000000   # the driver at 1M records (~25 min)
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
from typing import Any

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


def _start(cpus: int) -> tuple[float, Sampler]:
    import ray

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    baseline = rss_mb()
    sampler = Sampler()
    sampler.start()
    return baseline, sampler


def _finish(sampler: Sampler, baseline: float) -> dict[str, float]:
    import ray

    sampler.stop.set()
    sampler.join()
    ray.shutdown()
    return {"baseline_mb": baseline, "object_store_peak_mb": sampler.store_peak,
            "peak_mb": max(sampler.rss_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def pseudolabel(n: int, work: Path, cpus: int, part_rows: int, wave_rows: int) -> dict[str, float]:
    """The pseudo-labeling driver, as `jobs/pseudolabel.py` runs it (it imports no torch)."""
    from bpiml.pseudolabel.config import PseudoLabelConfig
    from bpiml.pseudolabel.job import run_pseudolabel

    baseline, sampler = _start(cpus)
    started = time.perf_counter()
    summary = run_pseudolabel(PseudoLabelConfig(store=str(work / f"store-{n}"), out=str(work / f"pseudo-{n}"),
                                                teacher="box", num_workers=1, cpus_per_worker=0.5, batch_size=64,
                                                part_rows=part_rows, wave_rows=wave_rows))
    seconds = time.perf_counter() - started
    return {**_finish(sampler, baseline), "rows": summary["labeled_this_run"],
            "img_s": summary["labeled_this_run"] / seconds}


def _consume(dataset: Any) -> int:
    return sum(len(b["id"]) for b in dataset.iter_batches(batch_size=64, batch_format="numpy"))


def train_data(n: int, work: Path, cpus: int, part_rows: int, wave_rows: int) -> dict[str, float]:
    """The training driver's data path (`bpiml.train.datasets`): one epoch streamed, decode + augment."""
    import ray

    from bpiml.train.config import TrainConfig
    from bpiml.train.datasets import training_data

    consume = ray.remote(num_cpus=0.25)(_consume)
    baseline, sampler = _start(cpus)
    config = TrainConfig(store=str(work / f"pseudo-{n}"), num_workers=1, cache_decoded=False, batch_size=64)
    config = config.replace(model=config.model.replace(img_size=64, backbone_weights="none"))
    started = time.perf_counter()
    data = training_data(config)
    rows = ray.get(consume.remote(data.train))  # in a worker, as a training worker reads its shard
    seconds = time.perf_counter() - started
    return {**_finish(sampler, baseline), "rows": rows, "img_s": rows / seconds}


STAGES = {"pseudolabel": pseudolabel, "train_data": train_data}


def run_stage(stage: str, n: int, work: str, cpus: int, part_rows: int, wave_rows: int) -> dict[str, float]:
    """One stage at one N in a fresh driver process (a job's driver starts empty too)."""
    done = subprocess.run([sys.executable, __file__, "--stage", stage, "--one", str(n), "--work", work,
                           "--cpus", str(cpus), "--part-rows", str(part_rows), "--wave-rows", str(wave_rows)],
                          capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{stage} at N={n} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    from bpiml.pseudolabel.config import PseudoLabelConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--part-rows", type=int, default=256)
    parser.add_argument("--wave-rows", type=int, default=PseudoLabelConfig.wave_rows,
                        help="records per labeling wave (default: the job's)")
    parser.add_argument("--stages", nargs="+", choices=sorted(STAGES), default=list(STAGES),
                        help="which stages to run at each N (default: all)")
    parser.add_argument("--work", help="scratch folder (default: a temp folder, removed)")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = STAGES[args.stage](args.one, Path(args.work), args.cpus, args.part_rows, args.wave_rows)
        print("RESULT " + json.dumps(result), flush=True)
        return
    results: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.work) as work:
        for n in args.sizes:
            make_store(Path(work) / f"store-{n}", n)
            results[n] = {stage: run_stage(stage, n, work, args.cpus, args.part_rows, args.wave_rows)
                          for stage in args.stages}
            for stage, r in results[n].items():
                print(f"N={n:>9,}  {stage:<11}  driver peak {r['peak_mb']:6.0f} MB (baseline {r['baseline_mb']:4.0f}, "
                      f"+{r['peak_mb'] - r['baseline_mb']:4.0f})  object store peak {r['object_store_peak_mb']:7.1f} MB  "
                      f"{r['img_s']:6.0f} img/s  ({r['rows']:,} rows)", flush=True)
    small, large = args.sizes[0], args.sizes[-1]
    print(f"\nlargest / smallest N ({large:,} / {small:,} = {large / small:.0f}x records):")
    for stage in args.stages:
        a, b = results[small][stage], results[large][stage]
        print(f"  {stage:<11}  driver peak RSS {b['peak_mb'] / a['peak_mb']:.2f}x   "
              f"above baseline {b['peak_mb'] - b['baseline_mb']:.0f} / {a['peak_mb'] - a['baseline_mb']:.0f} MB   "
              f"object store peak {b['object_store_peak_mb'] / max(a['object_store_peak_mb'], 1e-9):.2f}x   "
              f"images/s {b['img_s'] / a['img_s']:.2f}x")


if __name__ == "__main__":
    main()
