"""SAM weights by name, for real, against a loopback HTTP server standing in for the official host:
name -> download -> size and SHA-256 check -> node cache (and a cluster cache) -> file lock.

The server serves a tiny SAM checkpoint under the official file name; the `OFFICIAL` entry is
patched to that file's size and checksum, so the code path is exactly the one `--checkpoint vit_b`
takes on a cluster (with `BPIML_SAM_BASE_URL` pointing at the server instead of the official URL).
Faults are real: the server closes the connection mid-file, ignores Range, answers 5xx; offline
mode fails before any connection.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from loopback_http import FileServer

from bpiml.data import cache, download
from bpiml.pseudolabel.teachers import weights
from bpiml.pseudolabel.teachers.tiny_sam import save_tiny_sam_checkpoint

FILE = weights.OFFICIAL["vit_b"].file
PATH = f"/segment_anything/{FILE}"


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return Path(save_tiny_sam_checkpoint(str(tmp_path_factory.mktemp("w") / "tiny.pth"))).read_bytes()


@pytest.fixture(scope="module")
def tmp_bytes_half(tiny_bytes: bytes) -> int:
    return len(tiny_bytes) // 2 + 1234  # a cut inside the file, off any chunk boundary


@pytest.fixture()
def server(tiny_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    srv = FileServer({PATH: tiny_bytes})
    monkeypatch.setitem(weights.OFFICIAL, "vit_b", weights.OfficialWeights(
        "vit_b", FILE, len(tiny_bytes), hashlib.sha256(tiny_bytes).hexdigest()))
    monkeypatch.setenv(weights.BASE_URL_ENV, srv.url + "/segment_anything/")
    monkeypatch.setenv("BPIML_CACHE", str(tmp_path / "node-cache"))
    monkeypatch.delenv(weights.SHARED_CACHE_ENV, raising=False)
    for name in (*download.OFFLINE_ENVS, download.ATTEMPTS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(download, "FIRST_WAIT_S", 0.01)  # the backoff's shape, not its seconds, is under test
    yield srv
    srv.close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_by_name_downloads_once_verifies_and_loads(server: FileServer, tmp_path: Path) -> None:
    for name in ("vit_b", "sam:vit_b"):
        path = Path(weights.local_checkpoint(name))
        assert path == tmp_path / "node-cache" / "sam" / FILE
    assert server.gets[PATH] == 1  # the second call found it in the node cache
    assert path.read_bytes() == server.files[PATH]
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert any(k.startswith("image_encoder.") for k in state)
    assert weights.identity("vit_b") == weights.OFFICIAL["vit_b"].sha256[:16]  # known without reading the file
    assert weights.variant_of("vit_b") == "vit_b" and weights.variant_of(f"/w/{FILE}") == "vit_b"


@pytest.mark.parametrize("mode, words, kept", [
    ("corrupt", "does not match", []),  # a wrong file is deleted, never resumed
    ("truncated", "connection closed at", [f"{FILE}.part"]),  # cut short: kept for the next try to resume
    ("error", "HTTP 500", []),
])
def test_a_bad_download_is_a_clear_error_and_the_next_try_works(server: FileServer, tmp_path: Path, mode: str,
                                                                 words: str, kept: list[str]) -> None:
    server.mode = mode
    with pytest.raises(cache.FetchError, match=words):
        weights.local_checkpoint("vit_b")
    assert _leftovers(tmp_path / "node-cache") == kept  # never the checkpoint itself, unverified
    if mode != "corrupt":
        assert server.gets[PATH] == download.DEFAULT_ATTEMPTS  # transient: retried, then a clear error
    server.mode = "ok"
    assert Path(weights.local_checkpoint("vit_b")).read_bytes() == server.files[PATH]  # the next try works
    assert _leftovers(tmp_path / "node-cache") == [FILE]


def test_a_connection_dropped_mid_file_resumes_with_range(server: FileServer, tmp_bytes_half: int,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    server.drop_at = tmp_bytes_half
    with caplog.at_level(logging.INFO, logger="bpiml.data.download"):
        path = Path(weights.local_checkpoint("vit_b"))
    assert path.read_bytes() == server.files[PATH]  # byte-identical, and verified (SHA-256) before the rename
    assert server.ranged(PATH) == [None, f"bytes={tmp_bytes_half}-"]  # the second GET asked for the rest only
    assert "interrupted at" in caplog.text and "resuming" in caplog.text
    assert f"{len(server.files[PATH]) / 1e9:.2f} GB (100%)" in caplog.text  # progress: bytes, percent, rate
    assert "MB/s" in caplog.text


def test_a_partial_file_from_an_earlier_run_is_resumed(server: FileServer, tmp_path: Path,
                                                       tmp_bytes_half: int) -> None:
    part = tmp_path / "node-cache" / "sam" / f"{FILE}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(server.files[PATH][:tmp_bytes_half])  # what a killed run left behind
    assert Path(weights.local_checkpoint("vit_b")).read_bytes() == server.files[PATH]
    assert server.ranged(PATH) == [f"bytes={tmp_bytes_half}-"]


def test_a_server_that_ignores_range_restarts_from_zero(server: FileServer, tmp_bytes_half: int) -> None:
    server.ranges, server.drop_at = False, tmp_bytes_half
    assert Path(weights.local_checkpoint("vit_b")).read_bytes() == server.files[PATH]
    assert server.ranged(PATH) == [None, f"bytes={tmp_bytes_half}-"]  # asked for the rest, got (and kept) all
    assert server.gets[PATH] == 2


def test_attempts_in_a_row_are_counted_and_named(server: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.mode = "down"
    monkeypatch.setenv(download.ATTEMPTS_ENV, "2")
    with pytest.raises(cache.FetchError, match=f"after 2 attempts.*HTTP 503.*{download.ATTEMPTS_ENV}"):
        weights.local_checkpoint("vit_b")
    assert server.gets[PATH] == 2


@pytest.mark.parametrize("env", download.OFFLINE_ENVS)
def test_offline_fails_fast_naming_the_file_and_uses_the_cache(server: FileServer, tmp_path: Path, env: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env, "1")
    with pytest.raises(cache.FetchError, match=f"offline.*{FILE} is not cached at .*node-cache"):
        weights.local_checkpoint("vit_b")
    assert not server.requests  # not one connection
    monkeypatch.delenv(env)
    weights.local_checkpoint("vit_b")  # fetched once online ...
    monkeypatch.setenv(env, "1")
    assert Path(weights.local_checkpoint("vit_b")).read_bytes() == server.files[PATH]  # ... then found offline
    assert server.gets[PATH] == 1


def test_a_missing_file_names_the_url(server: FileServer) -> None:
    del server.files[PATH]
    with pytest.raises(cache.FetchError, match="HTTP 404") as err:
        weights.local_checkpoint("vit_b")
    assert server.url + PATH in str(err.value)


def test_concurrent_loaders_on_one_node_download_once(server: FileServer) -> None:
    server.slow.set()
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: weights.local_checkpoint("vit_b"), range(4)))
    assert len(set(paths)) == 1 and server.gets[PATH] == 1


def test_a_cluster_cache_serves_the_other_nodes(server: FileServer, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.SHARED_CACHE_ENV, str(tmp_path / "cluster-cache"))
    weights.local_checkpoint("vit_b")  # node 1 downloads and fills the cluster cache
    assert (tmp_path / "cluster-cache" / "sam" / FILE).read_bytes() == server.files[PATH]
    monkeypatch.setenv("BPIML_CACHE", str(tmp_path / "node-2-cache"))
    assert Path(weights.local_checkpoint("vit_b")).parent == tmp_path / "node-2-cache" / "sam"
    assert server.gets[PATH] == 1  # node 2 copied from the cluster cache, not from the server
    (tmp_path / "cluster-cache" / "sam" / FILE).write_bytes(b"x" * len(server.files[PATH]))  # corrupted
    monkeypatch.setenv("BPIML_CACHE", str(tmp_path / "node-3-cache"))
    with pytest.raises(cache.FetchError, match="does not match"):
        weights.local_checkpoint("vit_b")
