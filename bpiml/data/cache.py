"""Local copies of remote objects: streamed in chunks into a per-node cache, renamed into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bpiml.data.storage import is_s3, local_path, open_uri, split_s3, temp_beside

CHUNK_BYTES = 8 << 20  # streaming copies move 8 MiB at a time


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
