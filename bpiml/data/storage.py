"""Local paths and `s3://` URIs behind one small API.

Every store, output, checkpoint and weights location in bpiml is a URI: a local path
(`data/store`, `/abs/path`, `file:///abs/path`) or `s3://bucket/prefix`. S3 endpoint and
credentials come from the standard AWS environment/config; an S3-compatible endpoint
(MinIO, a test server) is taken from `set_s3_endpoint()` or `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL`, so the same code serves AWS, MinIO-style stores and tests.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path, PurePosixPath
from typing import IO, Any

_endpoint_override: str | None = None


def set_s3_endpoint(url: str | None) -> None:
    """Use `url` for S3 (an S3-compatible store); None falls back to the AWS environment."""
    global _endpoint_override
    _endpoint_override = url or None
    if url:
        # Child processes (Ray workers started from here, subprocesses) see it too.
        os.environ["AWS_ENDPOINT_URL_S3"] = url


def s3_endpoint() -> str | None:
    """The S3 endpoint in force: explicit override, then AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL."""
    return _endpoint_override or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/key/x` -> (`bucket`, `key/x`)."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key


def join(root: str, *parts: str) -> str:
    """Join path parts onto a local or s3:// root with `/`."""
    if is_s3(root):
        return posixpath.join(root.rstrip("/"), *parts)
    return str(Path(_local(root), *parts))


def resolve_in_store(root: str, relative: str) -> str:
    """Resolve a manifest path against its store root, rejecting paths that escape the root.

    Rejected: absolute paths, URIs (`s3://other-bucket/...`, `file://...`), and any path whose
    `..` components climb above the root.
    """
    if not isinstance(relative, str) or not relative:
        raise ValueError(f"store path must be a non-empty string, got {relative!r}")
    if "://" in relative or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise ValueError(f"path {relative!r} escapes the store root {root!r}: paths must be relative to the root")
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise ValueError(f"path {relative!r} escapes the store root {root!r} through '..'")
    return join(root, posixpath.normpath("/".join(parts)))


def absolute(uri: str) -> str:
    """s3:// URIs as they are; local paths made absolute (workers run in other folders)."""
    return uri if is_s3(uri) else os.path.abspath(_local(uri))


def relative_to(root: str, uri: str) -> str:
    """Inverse of `join`: the path of `uri` below `root` (posix separators)."""
    if is_s3(root):
        prefix = root.rstrip("/") + "/"
        if not uri.startswith(prefix):
            raise ValueError(f"{uri!r} is not inside {root!r}")
        return uri[len(prefix):]
    return Path(_local(uri)).resolve().relative_to(Path(_local(root)).resolve()).as_posix()


def fsspec_fs(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for `uri`."""
    if is_s3(uri):
        import s3fs

        client_kwargs = {}
        endpoint = s3_endpoint()
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, use_listings_cache=False)
        return fs, uri[len("s3://"):]
    import fsspec

    return fsspec.filesystem("file"), os.path.abspath(_local(uri))


def pyarrow_fs(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for `uri`; honours the S3 endpoint override.

    `pyarrow.fs.S3FileSystem()` ignores AWS_ENDPOINT_URL, so the endpoint is passed explicitly.
    """
    import pyarrow.fs as pafs

    if is_s3(uri):
        endpoint = s3_endpoint()
        kwargs: dict[str, Any] = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or endpoint, scheme=scheme if host else "https")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri[len("s3://"):]
    return pafs.LocalFileSystem(), os.path.abspath(_local(uri))


def open_uri(uri: str, mode: str = "rb") -> IO[Any]:
    if not is_s3(uri):
        path = _local(uri)
        if any(m in mode for m in "wa"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open(path, mode)
    fs, path = fsspec_fs(uri)
    return fs.open(path, mode)


def read_bytes(uri: str) -> bytes:
    try:
        with open_uri(uri, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no such file: {uri}") from err


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically on local disk (temp file + rename); S3 puts are atomic already."""
    if is_s3(uri):
        fs, path = fsspec_fs(uri)
        fs.pipe_file(path, data)
        return
    path = Path(_local(uri))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def exists(uri: str) -> bool:
    if not is_s3(uri):
        return os.path.exists(_local(uri))
    fs, path = fsspec_fs(uri)
    return fs.exists(path)


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Full URIs of the files directly below `uri` ending in `suffix` (empty list if none)."""
    fs, path = fsspec_fs(uri)
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    prefix = "s3://" if is_s3(uri) else ""
    return sorted(prefix + n for n in names if n.endswith(suffix))


def makedirs(uri: str) -> None:
    if not is_s3(uri):
        Path(_local(uri)).mkdir(parents=True, exist_ok=True)


def check_readable(uri: str) -> None:
    """Fail fast, naming the URI, when it cannot be read (missing, bad credentials, no bucket)."""
    try:
        ok = exists(uri)
    except Exception as err:  # credential/endpoint errors come in many types
        raise PermissionError(f"cannot access {uri}: {type(err).__name__}: {err}") from err
    if not ok:
        raise FileNotFoundError(f"not found: {uri}")


def check_writable(uri: str) -> None:
    """Fail fast, naming the URI, when a probe object cannot be written below `uri`."""
    probe = join(uri, f".bpiml-write-probe-{os.getpid()}")
    try:
        write_bytes(probe, b"ok")
        if is_s3(probe):
            fs, path = fsspec_fs(probe)
            fs.rm(path)
        else:
            os.remove(_local(probe))
    except Exception as err:
        raise PermissionError(f"cannot write to {uri}: {type(err).__name__}: {err}") from err


def local_copy(uri: str, cache_dir: str | None = None) -> str:
    """A local path for `uri`: local paths as they are, s3:// objects downloaded once to a cache."""
    if not is_s3(uri):
        path = _local(uri)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {uri}")
        return path
    bucket, key = split_s3(uri)
    cache = Path(cache_dir or os.environ.get("BPIML_CACHE", Path.home() / ".cache" / "bpiml"))
    target = cache / "s3" / bucket / key
    if not target.exists():
        write_bytes(str(target), read_bytes(uri))
    return str(target)
