"""Online serving (Ray Serve, HTTP, dynamic batching) next to the batch path, same machine, same run.

    python benchmarks/bench_serve.py                            # CPU, 1 replica of 1 CPU, 128 px student (~2 min)
    python benchmarks/bench_serve.py --img-size 224 --max-batch-size 16 --gpus-per-worker 1 --cpus-per-worker 4

Batch path: `predict_batch` in this process on the same decoded images, batches of --max-batch-size,
with as many torch threads as a replica has CPUs: its ms per image is the floor serving can reach.
Serving: a local Ray of --ray-cpus CPUs, one replica, clients in threads (a keep-alive session each)
POSTing JPEG bytes to /predict (JSON answer with the mask as base64 PNG), at 1, 8 and 32 at once.
Per level: requests/s, p50/p99 latency, the replica's mean batch size (from /healthz), and
`cost ratio` = serving ms per request / batch-path ms per image (1.0 = HTTP, decoding, encoding
and queueing cost nothing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import torch

from bpiml.data import imageio
from bpiml.evaluation.inference import predict_batch
from bpiml.model.student import StudentConfig, build_student
from bpiml.runtime.loopback import free_port


def batch_path_ms(model: torch.nn.Module, images: list[np.ndarray], batch_size: int, rounds: int) -> float:
    """Milliseconds per image of `predict_batch` over all images, best of `rounds` passes (after one warm-up)."""
    predict_batch(model, images[:batch_size], "cpu")
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            predict_batch(model, images[i: i + batch_size], "cpu")
        best = min(best, (time.perf_counter() - start) / len(images))
    return best * 1000


def load(url: str, bodies: list[bytes], clients: int, requests_total: int) -> tuple[float, list[float]]:
    """`clients` threads send `requests_total` requests in all; (requests/s, latencies in ms)."""
    latencies: list[float] = []
    lock, counter = threading.Lock(), iter(range(requests_total))

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                k = next(counter, None)
            if k is None:
                return
            start = time.perf_counter()
            answer = session.post(f"{url}/predict", data=bodies[k % len(bodies)], timeout=300)
            elapsed = (time.perf_counter() - start) * 1000
            answer.raise_for_status()
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return requests_total / (time.perf_counter() - start), latencies


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=128, help="student input size")
    parser.add_argument("--image-px", type=int, default=256, help="side of the (square, JPEG) request images")
    parser.add_argument("--images", type=int, default=32, help="distinct images")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8, 32], help="concurrency levels")
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.01)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="replica CPUs (= torch threads in the batch path)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--rounds", type=int, default=3, help="batch-path passes (best one counts)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    import ray  # here: the batch path above runs without Ray
    from ray import serve

    from bpiml.serving.app import deploy
    from bpiml.serving.config import ServeConfig

    torch.manual_seed(0)
    model = build_student(StudentConfig(img_size=args.img_size, backbone_weights="none")).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.image_px, args.image_px, 3), dtype=np.uint8) for _ in range(args.images)]
    bodies = [imageio.encode_image(im, "jpeg", 90) for im in images]
    decoded = [imageio.decode_image(b)[0] for b in bodies]  # the batch path sees what the replica decodes
    torch.set_num_threads(max(1, int(args.cpus_per_worker)))
    batch_ms = batch_path_ms(model, decoded, args.max_batch_size, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pt"
        torch.save({"model_config": model.config.to_dict(), "model_state": model.state_dict(), "epoch": 0}, checkpoint)
        ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        try:
            url = deploy(ServeConfig(model=str(checkpoint), port=free_port(), max_batch_size=args.max_batch_size,
                                     batch_wait_timeout_s=args.batch_wait_timeout_s, cpus_per_worker=args.cpus_per_worker,
                                     gpus_per_worker=args.gpus_per_worker, max_ongoing_requests=max(args.clients),
                                     blocking=False))
            load(url, bodies, 4, 8)  # warm-up: model, connections, first batches
            rows = []
            for clients in args.clients:
                before = requests.get(f"{url}/healthz", timeout=30).json()
                rps, latencies = load(url, bodies, clients, max(args.requests, 2 * clients))
                after = requests.get(f"{url}/healthz", timeout=30).json()
                mean_batch = (after["requests"] - before["requests"]) / max(after["batches"] - before["batches"], 1)
                rows.append((clients, rps, latencies, mean_batch))
        finally:
            serve.shutdown()
            ray.shutdown()
    print(f"student {args.img_size}x{args.img_size}, requests {args.image_px}x{args.image_px} JPEG; 1 replica, "
          f"{args.cpus_per_worker:g} CPU / {args.gpus_per_worker:g} GPU; max batch {args.max_batch_size}, "
          f"wait {args.batch_wait_timeout_s * 1000:g} ms")
    print(f"batch path (predict_batch in-process, {torch.get_num_threads()} threads): {batch_ms:.1f} ms/image "
          f"= {1000 / batch_ms:.1f} images/s")
    print(f"{'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} {'cost ratio':>10}")
    for clients, rps, latencies, mean_batch in rows:
        p50 = statistics.median(latencies)
        p99 = float(np.percentile(latencies, 99))
        print(f"{clients:>7} {rps:>8.1f} {p50:>8.1f} {p99:>8.1f} {mean_batch:>10.2f} {1000 / rps / batch_ms:>10.2f}")


if __name__ == "__main__":
    main(parse_args())
