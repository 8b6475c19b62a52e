"""SAM weights by name, path or s3:// URI, fetched once per node and verified.

`--checkpoint vit_h` (or `sam:vit_h`) means the official checkpoint `sam_vit_h_4b8939.pth`:

1. look in the node's cache (`BPIML_CACHE`, default `~/.cache/bpiml`, under `sam/`);
2. else copy it from a cluster-wide cache prefix (`BPIML_WEIGHTS_CACHE=s3://bucket/prefix`) when set;
3. else download it from `BPIML_SAM_BASE_URL` (default the official
   `https://dl.fbaipublicfiles.com/segment_anything/`; a mirror, or a test server) and, with a
   cluster cache, upload it there for the other nodes.

Every copy streams in chunks into a temporary file beside the target (never the whole object in
memory), is checked against the known size and SHA-256 and renamed into place only when it matches;
anything else is deleted and reported. A file lock makes concurrent actors on one node download once.
A path or s3:// URI is used as given (s3:// objects are streamed to the cache once).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from bpiml.data import cache, storage

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
BASE_URL_ENV = "BPIML_SAM_BASE_URL"
SHARED_CACHE_ENV = "BPIML_WEIGHTS_CACHE"
CHUNK = 8 << 20


@dataclass(frozen=True)
class OfficialWeights:
    variant: str
    file: str
    size: int
    sha256: str


OFFICIAL = {
    "vit_b": OfficialWeights("vit_b", "sam_vit_b_01ec64.pth", 375_042_383,
                             "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_l": OfficialWeights("vit_l", "sam_vit_l_0b3195.pth", 1_249_524_607,
                             "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_h": OfficialWeights("vit_h", "sam_vit_h_4b8939.pth", 2_564_550_879,
                             "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
}


class WeightsError(ValueError):
    """Weights that could not be fetched or do not match their checksum (no partial file is left)."""


def official_name(checkpoint: str) -> str | None:
    """`vit_h` / `sam:vit_h` -> `vit_h`; None for a path or URI."""
    name = checkpoint[len("sam:"):] if checkpoint.startswith("sam:") else checkpoint
    return name if name in OFFICIAL else None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(tmp: Path, expected: OfficialWeights, source: str) -> None:
    size = tmp.stat().st_size
    if size != expected.size:
        raise WeightsError(f"{source}: got {size} bytes, expected {expected.size} for {expected.file} "
                           "(a truncated download or another file)")
    actual = sha256_file(tmp)
    if actual != expected.sha256:
        raise WeightsError(f"{source}: SHA-256 {actual} does not match {expected.sha256} of {expected.file}")


def _download(url: str, tmp: Path, timeout_s: float = 60.0) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
    except urllib.error.HTTPError as err:
        raise WeightsError(f"download of {url} failed: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise WeightsError(f"download of {url} failed: {type(err).__name__}: {err}") from err


def _fetch_official(weights: OfficialWeights, target: Path) -> None:
    """Fill `target` from the shared cache or the download URL, verified, atomically."""
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    shared = os.environ.get(SHARED_CACHE_ENV)
    shared_uri = storage.join(shared, "sam", weights.file) if shared else None
    try:
        if shared_uri and storage.exists(shared_uri):
            cache.copy_to_local(shared_uri, tmp)
            _verify(tmp, weights, shared_uri)
        else:
            url = os.environ.get(BASE_URL_ENV, DEFAULT_BASE_URL).rstrip("/") + "/" + weights.file
            logger.info("downloading %s (%.2f GB) from %s", weights.file, weights.size / 1e9, url)
            _download(url, tmp)
            _verify(tmp, weights, url)
            if shared_uri:
                with open(tmp, "rb") as src, storage.open_uri(shared_uri, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def official_path(name: str, cache_folder: str | Path | None = None) -> Path:
    """The local path of the official checkpoint `name`, fetched and verified once per node."""
    weights = OFFICIAL[name]
    folder = Path(cache_folder or cache.cache_dir()) / "sam"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / weights.file
    with FileLock(str(target) + ".lock"):
        if target.exists() and target.stat().st_size == weights.size:
            return target
        _fetch_official(weights, target)
    logger.info("SAM weights %s ready at %s (SHA-256 verified)", weights.file, target)
    return target


def local_checkpoint(checkpoint: str) -> str:
    """A local path for a checkpoint given by name, path or s3:// URI (fetched once per node)."""
    name = official_name(checkpoint)
    if name is not None:
        return str(official_path(name))
    if storage.is_s3(checkpoint):
        bucket, key = storage.split_s3(checkpoint)
        target = cache.cache_dir() / "s3" / bucket / key
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            return cache.local_copy(checkpoint)
    return cache.local_copy(checkpoint)


def identity(checkpoint: str) -> str:
    """A short, stable name of the weights' content, computed without loading them:
    the official SHA-256, a local file's SHA-256, or an S3 object's ETag."""
    name = official_name(checkpoint)
    if name is not None:
        return OFFICIAL[name].sha256[:16]
    if storage.is_s3(checkpoint):
        fs, path = storage.filesystem(checkpoint)
        info = fs.info(path)
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        return f"etag-{etag}" if etag else f"size-{info.get('size')}"
    return sha256_file(cache.local_copy(checkpoint))[:16]


def variant_of(checkpoint: str) -> str | None:
    """The variant a checkpoint name implies (`vit_h`, `sam_vit_h_4b8939.pth` -> vit_h), else None."""
    name = official_name(checkpoint)
    if name is not None:
        return name
    base = os.path.basename(checkpoint)
    for variant, weights in OFFICIAL.items():
        if base == weights.file or base.startswith(f"sam_{variant}"):
            return variant
    return None
