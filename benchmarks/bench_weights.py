"""Memory while fetching SAM weights by name: peak RSS above the process baseline, side by side with
the file's size, for a file as large as ViT-H's (2.5 GB) served over loopback.

    python benchmarks/bench_weights.py                  # 2.56 GB, about 1 min and 5 GB of scratch disk
    python benchmarks/bench_weights.py --size-mb 256    # quick

The file is random bytes written once to `--scratch`; the `OFFICIAL["vit_h"]` entry is pointed at its
size and SHA-256 and `BPIML_SAM_BASE_URL` at a loopback server, so the fetch runs exactly as
`--checkpoint vit_h` does on a node: stream to a temp file in chunks, verify size and SHA-256, rename.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bpiml.pseudolabel.teachers import weights


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(8 << 20)
    with open(path, "wb") as f:
        for start in range(0, size, len(block)):
            chunk = block[: min(len(block), size - start)]
            f.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=weights.OFFICIAL["vit_h"].size / (1 << 20))
    parser.add_argument("--scratch", default=os.environ.get("TMPDIR", "/var/tmp"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-weights-", dir=args.scratch))
    try:
        name = weights.OFFICIAL["vit_h"].file
        (root / "serve").mkdir()
        size = int(args.size_mb * (1 << 20))
        sha = make_file(root / "serve" / name, size)
        weights.OFFICIAL["vit_h"] = weights.OfficialWeights("vit_h", name, size, sha)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root / "serve")))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        os.environ[weights.BASE_URL_ENV] = f"http://127.0.0.1:{httpd.server_port}/"
        os.environ["BPIML_CACHE"] = str(root / "cache")
        baseline, peak_before = rss_now_mb(), rss_peak_mb()
        started = time.perf_counter()
        path = weights.local_checkpoint("vit_h")
        elapsed = time.perf_counter() - started
        httpd.shutdown()
        peak = max(rss_peak_mb(), peak_before)
        print(f"file                 {size / (1 << 20):10.1f} MB")
        print(f"baseline RSS         {baseline:10.1f} MB")
        print(f"peak RSS             {peak:10.1f} MB   (+{peak - baseline:.1f} MB above the baseline)")
        print(f"peak above baseline / file size = {(peak - baseline) / (size / (1 << 20)):.4f}")
        print(f"fetched and verified in {elapsed:.1f} s ({size / (1 << 20) / elapsed:.0f} MB/s) -> {path}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
