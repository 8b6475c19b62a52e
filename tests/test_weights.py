"""SAM weights by name, for real, against a loopback HTTP server standing in for the official host:
name -> download -> size and SHA-256 check -> node cache (and a cluster cache) -> file lock.

The server serves a tiny SAM checkpoint under the official file name; the `OFFICIAL` entry is
patched to that file's size and checksum, so the code path is exactly the one `--checkpoint vit_b`
takes on a cluster (with `BPIML_SAM_BASE_URL` pointing at the server instead of the official URL).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from loopback_http import FileServer

from bpiml.data import cache
from bpiml.pseudolabel.teachers import weights
from bpiml.pseudolabel.teachers.tiny_sam import save_tiny_sam_checkpoint

FILE = weights.OFFICIAL["vit_b"].file
PATH = f"/segment_anything/{FILE}"


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return Path(save_tiny_sam_checkpoint(str(tmp_path_factory.mktemp("w") / "tiny.pth"))).read_bytes()


@pytest.fixture()
def server(tiny_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    srv = FileServer({PATH: tiny_bytes})
    monkeypatch.setitem(weights.OFFICIAL, "vit_b", weights.OfficialWeights(
        "vit_b", FILE, len(tiny_bytes), hashlib.sha256(tiny_bytes).hexdigest()))
    monkeypatch.setenv(weights.BASE_URL_ENV, srv.url + "/segment_anything/")
    monkeypatch.setenv("BPIML_CACHE", str(tmp_path / "node-cache"))
    monkeypatch.delenv(weights.SHARED_CACHE_ENV, raising=False)
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


@pytest.mark.parametrize("mode, words", [
    ("corrupt", "does not match"),
    ("truncated", "a truncated download"),
    ("error", "HTTP 500"),
])
def test_a_bad_download_is_a_clear_error_and_leaves_no_file(server: FileServer, tmp_path: Path, mode: str,
                                                             words: str) -> None:
    server.mode = mode
    with pytest.raises(cache.FetchError, match=words):
        weights.local_checkpoint("vit_b")
    assert _leftovers(tmp_path / "node-cache") == []  # no partial or unverified file to be picked up later
    server.mode = "ok"
    assert Path(weights.local_checkpoint("vit_b")).read_bytes() == server.files[PATH]  # the next try works


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
