"""Local copies of remote objects: streamed in chunks into a per-node cache, renamed into place.

`fetch_once` is the one way weights reach a node (SAM checkpoints, backbone weights): under a
file lock (concurrent actors on one node fetch once), from a cluster-wide cache prefix when it
has the file, else from a URL (`bpiml.data.download`: retried, resumed from `<target>.part`, with
progress; then uploaded to the cluster cache for the other nodes); checked against the expected
size and SHA-256 where known, renamed into place only when it matches. A file that fails the check
is deleted; a download cut short keeps its `.part` file, which the next try resumes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from filelock import FileLock

from bpiml.data import download
from bpiml.data.download import FetchError
from bpiml.data.storage import (
    exists,
    is_s3,
    local_path,
    open_uri,
    split_s3,
    temp_beside,
)

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20  # streaming copies move 8 MiB at a time


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(tmp: Path, source: str, size: int | None, sha256: str | None) -> None:
    """Raise FetchError (deleting `tmp`: a wrong file is never resumed) unless it has the size and SHA-256 given."""
    got = tmp.stat().st_size
    if size is not None and got != size:
        tmp.unlink()
        raise FetchError(f"{source}: got {got} bytes, expected {size} (a truncated download or another file)")
    if sha256 is not None and (actual := sha256_file(tmp)) != sha256:
        tmp.unlink()
        raise FetchError(f"{source}: SHA-256 {actual} does not match the expected {sha256}")


def fetch_once(target: str | Path, url: str, size: int | None = None, sha256: str | None = None,
               shared_uri: str | None = None, timeout_s: float = 60.0) -> Path:
    """`target` on this node, fetched and verified once (see the module doc); returns it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists() and (size is None or target.stat().st_size == size):
            return target
        part = target.with_name(target.name + ".part")  # one writer under the lock: a later try resumes it
        if shared_uri and exists(shared_uri):
            copy_to_local(shared_uri, part)
            _verify(part, shared_uri, size, sha256)
        else:
            logger.info("downloading %s%s", url, f" ({size / 1e9:.2f} GB)" if size else "")
            download.fetch(url, part, size, target.name, timeout_s)  # cut short: .part stays, to be resumed
            _verify(part, url, size, sha256)
            if shared_uri:
                copy_to_remote(part, shared_uri)
        os.replace(part, target)
    logger.info("%s ready at %s%s", target.name, target, " (SHA-256 verified)" if sha256 else "")
    return target


def copy_to_local(uri: str, target: str | Path) -> Path:
    """Stream `uri` to the local file `target` in chunks, through a temp file renamed into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(target)
    try:
        with open_uri(uri, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK_BYTES)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def copy_to_remote(path: str | Path, uri: str) -> None:
    """Stream the local file `path` to `uri` (the cluster cache), in chunks."""
    with open(path, "rb") as src, open_uri(uri, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK_BYTES)


def cache_dir() -> Path:
    """Where downloaded objects are kept on this node: BPIML_CACHE, else ~/.cache/bpiml."""
    return Path(os.environ.get("BPIML_CACHE") or Path.home() / ".cache" / "bpiml")


def local_copy(uri: str, cache: str | Path | None = None) -> str:
    """A local path for `uri`: local paths as they are, s3:// objects streamed once into the cache."""
    if not is_s3(uri):
        path = local_path(uri)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {uri}")
        return path
    bucket, key = split_s3(uri)
    target = Path(cache or cache_dir()) / "s3" / bucket / key
    if not target.exists():
        try:
            copy_to_local(uri, target)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"no such file: {uri}") from err
    return str(target)
