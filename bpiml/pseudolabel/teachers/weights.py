"""SAM weights by name, path or s3:// URI, fetched once per node and verified.

`--checkpoint vit_h` (or `sam:vit_h`) means the official checkpoint `sam_vit_h_4b8939.pth`:

1. look in the node's cache (`BPIML_CACHE`, default `~/.cache/bpiml`, under `sam/`);
2. else copy it from a cluster-wide cache prefix (`BPIML_WEIGHTS_CACHE=s3://bucket/prefix`) when set;
3. else (and not offline: `BPIML_OFFLINE=1` / `HF_HUB_OFFLINE=1` fail here at once, naming the file)
   download it from `BPIML_SAM_BASE_URL` (default the official
   `https://dl.fbaipublicfiles.com/segment_anything/`; a mirror, or a test server) and, with a
   cluster cache, upload it there for the other nodes.

Downloads are retried with backoff and resumed from `<file>.part` with HTTP Range (also by a later
run), with a progress line every few seconds (`bpiml.data.download`). Every copy streams in chunks
(never the whole object in memory), is checked against the known size and SHA-256 and renamed into
place only when it matches; a file that does not match is deleted and reported. A file lock makes
concurrent actors on one node download once (`bpiml.data.cache.fetch_once`).
A path or s3:// URI is used as given (s3:// objects are streamed to the cache once).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from bpiml.data import cache, storage

DEFAULT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
BASE_URL_ENV = "BPIML_SAM_BASE_URL"
SHARED_CACHE_ENV = "BPIML_WEIGHTS_CACHE"


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


def official_name(checkpoint: str) -> str | None:
    """`vit_h` / `sam:vit_h` -> `vit_h`; None for a path or URI."""
    name = checkpoint.removeprefix("sam:")
    return name if name in OFFICIAL else None


def official_path(name: str, cache_folder: str | Path | None = None) -> Path:
    """The local path of the official checkpoint `name`, fetched and verified once per node."""
    weights = OFFICIAL[name]
    shared = os.environ.get(SHARED_CACHE_ENV)
    url = os.environ.get(BASE_URL_ENV, DEFAULT_BASE_URL).rstrip("/") + "/" + weights.file
    return cache.fetch_once(Path(cache_folder or cache.cache_dir()) / "sam" / weights.file, url, weights.size,
                            weights.sha256, storage.join(shared, "sam", weights.file) if shared else None)


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
    return cache.sha256_file(cache.local_copy(checkpoint))[:16]


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
