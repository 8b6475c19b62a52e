"""The synthesizer job on a local Ray: deterministic per seed, exact masks and boxes, bad photos become
rejects, resumes after a real SIGKILL of its driver with every index exactly once, refuses a changed
recipe, extends with a larger n."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import ray

from bpiml.data import imageio
from bpiml.data.boxes import fill_boxes
from bpiml.data.manifest import read_manifest
from bpiml.data.sample import write_bundled_photos
from bpiml.synth.config import SynthConfig
from bpiml.synth.job import done_ranges, missing_ranges, run_synthesis

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_bundled_photos(str(folder))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def _config(photos: Path, out: Path, **kw) -> SynthConfig:
    values = {"photos": str(photos), "out": str(out), "n": 24, "seed": 5, "max_side": 160, "part_rows": 4,
              "gallery": 6, "max_reject_rate": 0.5, "lock_ttl_s": 3.0}
    return SynthConfig(**{**values, **kw})


# A driver whose blocks are slowed by an injected fake (each waits 0.3 s first), so a kill lands mid-run.
SLOW_DRIVER = """
import json, sys, time
from bpiml.synth import job
from bpiml.synth.config import SynthConfig

def slow_block(batch, **kwargs):
    time.sleep(0.3)
    return job.synthesize_block(batch, **kwargs)

job.run_synthesis(SynthConfig.from_dict(json.loads(sys.argv[1])), block=slow_block)
"""


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parts[len(out.parts)] in ("images", "masks", "manifest")}


def test_missing_ranges_cover_exactly_the_indices_not_done() -> None:
    assert missing_ranges(10, [], 4) == [(0, 4), (4, 8), (8, 10)]
    assert missing_ranges(10, [(0, 4), (6, 8)], 3) == [(4, 6), (8, 10)]
    assert missing_ranges(8, [(0, 4), (4, 8)], 4) == []
    got = missing_ranges(50, [(3, 9), (20, 30), (40, 41)], 7)
    covered = sorted(i for s, e in got + [(3, 9), (20, 30), (40, 41)] for i in range(s, e))
    assert covered == list(range(50)) and all(e - s <= 7 for s, e in got)


def test_a_store_of_exact_masks_boxes_and_rejects(photos: Path, tmp_path: Path) -> None:
    summary = run_synthesis(_config(photos, tmp_path / "a"))
    out = tmp_path / "a"
    records = read_manifest(str(out))
    rejected = [json.loads(line) for f in (out / "rejects").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(records) + len(rejected) == 24 and len(records) >= 20
    assert all("broken.jpg" in r["reason"] or "decode" in r["reason"].lower() for r in rejected)
    assert summary["images"] == len(records) and sum(summary["per_kind"].values()) == len(records)
    assert set(summary["per_kind"]) <= {"splice", "copy-move", "removal", "authentic"} and len(summary["per_kind"]) >= 3
    for r in records:
        image, _ = imageio.load_image(str(out / r.image))
        mask = imageio.load_mask(str(out / r.mask))
        assert mask.shape == image.shape[:2] and max(image.shape[:2]) <= 240  # max_side, then a post resize <= 1.5x
        if r.extra["kind"] == "authentic":
            assert not mask.any() and r.boxes == []
        else:  # the boxes cover the exact mask (padded and jittered like a human's)
            assert mask.any() and r.boxes
            inside = fill_boxes(mask.shape, r.boxes)
            assert (mask & inside).sum() >= 0.9 * mask.sum()
    assert (out / "gallery.html").read_text().count("<img") == 6


def test_same_seed_same_bytes_and_kill_resume_exactly_once(photos: Path, tmp_path: Path) -> None:
    """A driver SIGKILLed mid-run and the command rerun: every index once, byte-identical to a clean run."""
    clean = tmp_path / "clean"
    run_synthesis(_config(photos, clean, n=32))
    killed = tmp_path / "killed"
    args = [sys.executable, "-c", SLOW_DRIVER, _config(photos, killed, n=32, num_workers=1).to_json()]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(done_ranges(str(killed))) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(3.5)  # the killed driver's lock goes stale (ttl 3 s) and its last task is gone
    before = len(done_ranges(str(killed)))
    assert 2 <= before < 8, f"{before} of 8 parts done when the kill came"
    summary = run_synthesis(_config(photos, killed, n=32))
    assert summary["this_run"]["made"] + summary["this_run"]["rejected"] == 32 - 4 * before
    ids = Counter(r.id for r in read_manifest(str(killed)))
    assert set(ids.values()) == {1}
    assert _files(killed) == _files(clean)


def test_a_changed_recipe_is_refused_and_a_larger_n_extends(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "grow"
    run_synthesis(_config(photos, out, n=8))
    with pytest.raises(ValueError, match="another recipe.*seed"):
        run_synthesis(_config(photos, out, n=8, seed=6))
    again = run_synthesis(_config(photos, out, n=8))
    assert again["this_run"]["made"] + again["this_run"]["rejected"] == 0
    grown = run_synthesis(_config(photos, out, n=12, part_rows=3))
    assert grown["this_run"]["made"] + grown["this_run"]["rejected"] == 4
    covered = [i for s, e in done_ranges(str(out)) for i in range(s, e)]
    assert covered == list(range(12))  # no index twice, none missing
    rejected = [line for f in (out / "rejects").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(read_manifest(str(out))) + len(rejected) == 12
