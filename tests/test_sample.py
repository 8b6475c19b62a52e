"""Synthetic sample store: deterministic bytes, valid manifest, boxes covering the true masks."""

from __future__ import annotations

import filecmp
import os

import numpy as np

from bpiml.data.imageio import load_image, load_mask
from bpiml.data.manifest import image_uri, mask_uri, read_manifest
from bpiml.data.sample import cli_make_sample, make_sample_store


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_same_seed_same_bytes(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    make_sample_store(a, n_images=8, seed=3, size=96)
    make_sample_store(b, n_images=8, seed=3, size=96)
    make_sample_store(c, n_images=8, seed=4, size=96)
    assert _files(a) == _files(b)
    _, mismatch, errors = filecmp.cmpfiles(a, b, _files(a), shallow=False)
    assert mismatch == [] and errors == []
    assert open(os.path.join(a, "manifest.jsonl"), "rb").read() != open(os.path.join(c, "manifest.jsonl"), "rb").read()


def test_store_contents_and_boxes_cover_masks(tmp_path):
    store = make_sample_store(str(tmp_path / "s"), n_images=24, seed=0, size=128)
    records = read_manifest(store)
    assert len(records) == 24
    kinds = [r.extra["kind"] for r in records]
    assert kinds.count("authentic") == round(24 * 0.15)
    assert {"splice", "copy-move"} <= set(kinds)
    assert sum(r.split == "val" for r in records) == 6 and {r.split for r in records} == {"train", "val"}
    for r in records:
        image, notes = load_image(image_uri(store, r))
        mask = load_mask(mask_uri(store, r))
        assert image.shape == (128, 128, 3) and notes == [] and mask.shape == (128, 128)
        if r.extra["kind"] == "authentic":
            assert r.boxes == [] and not mask.any()
            continue
        assert r.boxes and mask.sum() >= 16
        covered = np.zeros_like(mask)
        for x0, y0, x1, y1 in r.boxes:
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            covered[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
        assert (mask & ~covered).sum() <= 0.01 * mask.sum()  # only specks under min_area may be left out


def test_cli(tmp_path, capsys):
    assert cli_make_sample(["--out", str(tmp_path / "s"), "--n", "4", "--seed", "1", "--size", "64"]) == 0
    assert len(read_manifest(str(tmp_path / "s"))) == 4
    assert cli_make_sample(["--n", "4"]) == 2


def test_s3_store_round_trip(tmp_path, monkeypatch):
    """The same store written to and read from a real S3 API (moto server)."""
    moto_server = __import__("pytest").importorskip("moto.server")
    import boto3

    from bpiml.data import storage

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": url}.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bpiml-test")
        store = make_sample_store("s3://bpiml-test/sample", n_images=3, seed=5, size=64)
        make_sample_store(str(tmp_path / "local"), n_images=3, seed=5, size=64)
        records = read_manifest(store)
        assert records == read_manifest(str(tmp_path / "local"))
        uri = image_uri(store, records[0])
        assert uri == "s3://bpiml-test/sample/images/sample_000.jpg"
        assert storage.read_bytes(uri) == (tmp_path / "local" / "images" / "sample_000.jpg").read_bytes()
    finally:
        storage.set_s3_endpoint(None)
        server.stop()
