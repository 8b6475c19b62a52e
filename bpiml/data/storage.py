"""Local paths and `s3://` URIs behind one small API (fsspec underneath).

Every store, output, checkpoint and weights location is a local path (`data/store`, `/abs`,
`file:///abs`) or `s3://bucket/prefix`. Credentials: the standard AWS environment (errors explained by
`bpiml.data.access`); an S3-compatible endpoint (MinIO, SeaweedFS) from `set_s3_endpoint()` or
`AWS_ENDPOINT_URL[_S3]`. Large objects stream in chunks (`bpiml.data.cache`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import posixpath
from pathlib import Path, PurePosixPath
from typing import IO, Any

import fsspec
import pyarrow.fs as pafs
from fsspec.core import url_to_fs

from bpiml.data import access, retry

_endpoint_override: str | None = None
PROBE_RETRY_S = 15.0  # the fail-fast checks before a job starts wait out this much of an outage, not the budget


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


def s3_uri(path: str) -> str:
    """An S3 path as a URI: `bucket/key` (as pyarrow and fsspec name it) -> `s3://bucket/key`; a URI as given."""
    return path if is_s3(path) else "s3://" + path


def local_path(uri: str) -> str:
    """A local URI as a plain path (`file://` dropped)."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/key/x` -> (`bucket`, `key/x`)."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key


def join(root: str, *parts: str) -> str:
    """Join path parts onto a local or s3:// root with `/`."""
    if is_s3(root):
        return posixpath.join(root.rstrip("/"), *parts)
    return str(Path(local_path(root), *parts))


def parent(uri: str) -> str:
    """The folder holding `uri` (`.` for a bare name)."""
    head = uri.rstrip("/").rsplit("/", 1)
    return head[0] if len(head) == 2 and head[0] else "."


def relative_path(relative: str, root: str = "the store") -> str:
    """A manifest path normalised (`a/./b` -> `a/b`), or ValueError when it escapes its root lexically:
    absolute paths, URIs (`s3://other-bucket/...`, `file://...`), `..` climbing above the root."""
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
    return posixpath.normpath("/".join(parts))


def resolve_in_store(root: str, relative: str) -> str:
    """Resolve a manifest path against its store root, rejecting paths that escape the root:
    lexically (`relative_path`) and, for local stores, through symlinks (`check_inside_store`)."""
    return check_inside_store(root, join(root, relative_path(relative, root)))


STORE_META = "store.json"  # a store's own metadata: {"links": ["data"]} names symlinks bpiml made on purpose


@functools.lru_cache(maxsize=256)
def _real_roots(root: str) -> tuple[str, ...]:
    """The real folders a local store may read from: its own, and the targets of its declared links."""
    base = os.path.realpath(local_path(root))
    roots = [base]
    meta = os.path.join(local_path(root), STORE_META)
    if os.path.isfile(meta):
        try:
            links = json.loads(Path(meta).read_text()).get("links", [])
        except (OSError, ValueError, AttributeError):
            links = []
        for name in links if isinstance(links, list) else []:
            if isinstance(name, str) and "/" not in name and name not in ("", ".", ".."):
                roots.append(os.path.realpath(os.path.join(local_path(root), name)))
    return tuple(roots)


def check_inside_store(root: str, uri: str) -> str:
    """`uri` if its real path (symlinks followed) stays inside the local store `root` or one of its
    declared links (`store.json`); ValueError otherwise. s3:// URIs have no symlinks."""
    if is_s3(uri):
        return uri
    real = os.path.realpath(local_path(uri))
    for allowed in _real_roots(root):
        if real == allowed or real.startswith(allowed.rstrip(os.sep) + os.sep):
            return uri
    raise ValueError(f"{uri} resolves to {real}, outside the store root {root}: symlinks may not leave the store")


def declare_link(root: str, name: str) -> None:
    """Record in `<root>/store.json` that the symlink `<root>/<name>` was made on purpose (an importer's --link)."""
    meta = join(root, STORE_META)
    values = json.loads(read_bytes(meta)) if exists(meta) else {}
    links = sorted(set(values.get("links", [])) | {name})
    write_json(meta, {**values, "links": links})
    _real_roots.cache_clear()


def absolute(uri: str) -> str:
    """s3:// URIs as they are; local paths made absolute (workers run in other folders)."""
    return uri if is_s3(uri) else os.path.abspath(local_path(uri))


def relative_to(root: str, uri: str) -> str:
    """Inverse of `join`: the path of `uri` below `root` (posix separators)."""
    if is_s3(root):
        prefix = root.rstrip("/") + "/"
        if not uri.startswith(prefix):
            raise ValueError(f"{uri!r} is not inside {root!r}")
        return uri[len(prefix):]
    return Path(local_path(uri)).resolve().relative_to(Path(local_path(root)).resolve()).as_posix()


# --- filesystems ---------------------------------------------------------------------------------
def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for `uri`; S3 honours the endpoint override."""
    if is_s3(uri):
        endpoint = s3_endpoint()
        options: dict[str, Any] = {"use_listings_cache": False}
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        return url_to_fs(uri, **options)
    return fsspec.filesystem("file"), os.path.abspath(local_path(uri))


def pyarrow_fs(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for `uri`; honours the S3 endpoint override.

    `pyarrow.fs.S3FileSystem()` ignores AWS_ENDPOINT_URL, so the endpoint is passed explicitly.
    """
    if not is_s3(uri):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    kwargs: dict[str, Any] = {}
    endpoint = s3_endpoint()
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or endpoint, scheme=scheme if host else "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    # Ray Data's reads: the AWS SDK's own backoff (up to ~1 min) carries them through a short outage.
    retries = pafs.AwsStandardS3RetryStrategy(max_attempts=10)
    return pafs.S3FileSystem(retry_strategy=retries, **kwargs), uri[len("s3://"):]


def _s3(fn: Any, uri: str) -> Any:
    """An S3 call, retried through transient outages (`bpiml.data.retry`)."""
    return retry.call(fn, uri, f"S3 endpoint {s3_endpoint() or '(AWS default)'}")


def _uri(fs_path: str, like: str) -> str:
    return s3_uri(fs_path) if is_s3(like) else fs_path


# --- reading and writing -------------------------------------------------------------------------
def open_uri(uri: str, mode: str = "rb") -> IO[Any]:
    if not is_s3(uri):
        path = local_path(uri)
        if any(m in mode for m in "wa"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open(path, mode)
    fs, path = filesystem(uri)
    return fs.open(path, mode)


def read_bytes(uri: str) -> bytes:
    try:
        if is_s3(uri):
            fs, path = filesystem(uri)
            return _s3(lambda: fs.cat_file(path), uri)
        with open_uri(uri, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no such file: {uri}") from err


def temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{id(path):x}")


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically on local disk (temp file + rename); S3 puts are atomic already."""
    if is_s3(uri):
        fs, path = filesystem(uri)
        _s3(lambda: fs.pipe_file(path, data), uri)
        return
    path = Path(local_path(uri))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(uri: str, value: Any, *, indent: int | None = 2, sort_keys: bool = False,
               default: Any = None) -> None:
    """`value` as a JSON document (and a final newline), written atomically (`write_bytes`)."""
    write_bytes(uri, (json.dumps(value, indent=indent, sort_keys=sort_keys, default=default) + "\n").encode())


def exists(uri: str) -> bool:
    if not is_s3(uri):
        return os.path.exists(local_path(uri))
    fs, path = filesystem(uri)
    return _s3(lambda: fs.exists(path), uri)


def is_file(uri: str) -> bool:
    if not is_s3(uri):
        return os.path.isfile(local_path(uri))
    fs, path = filesystem(uri)
    return _s3(lambda: fs.isfile(path), uri)


def size(uri: str) -> int:
    fs, path = filesystem(uri)
    return int(_s3(lambda: fs.size(path), uri) if is_s3(uri) else fs.size(path))


def _listing(uri: str, kind: str) -> list[str]:
    fs, path = filesystem(uri)
    try:
        entries = _s3(lambda: fs.ls(path, detail=True), uri) if is_s3(uri) else fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    wanted = [e["name"] for e in entries if e.get("type") == kind and e["name"].rstrip("/") != path.rstrip("/")]
    return sorted(_uri(name.rstrip("/"), uri) for name in wanted)


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Full URIs of the files directly below `uri` ending in `suffix` (empty list if none)."""
    return [u for u in _listing(uri, "file") if u.endswith(suffix)]


def list_dirs(uri: str) -> list[str]:
    """Full URIs of the folders (prefixes) directly below `uri`."""
    return _listing(uri, "directory")


def remove(uri: str) -> None:
    """Delete one file; a missing file is not an error."""
    if not is_s3(uri):
        Path(local_path(uri)).unlink(missing_ok=True)
        return
    fs, path = filesystem(uri)
    try:
        _s3(lambda: fs.rm_file(path), uri)
    except FileNotFoundError:
        pass


def remove_empty_folder(uri: str) -> None:
    """Delete a local folder if it is empty (an S3 prefix ends with its last key: nothing to do)."""
    if not is_s3(uri):
        with contextlib.suppress(OSError):
            os.rmdir(local_path(uri))


def check_readable(uri: str) -> None:
    """Fail fast, naming the URI, when it cannot be read (missing, bad credentials, no bucket)."""
    try:
        with retry.limited(PROBE_RETRY_S):
            found = exists(uri)
    except Exception as err:  # credential/endpoint errors come in many types
        raise access.error(uri, err) from err
    if not found:
        raise FileNotFoundError(f"not found: {uri}")


def check_writable(uri: str) -> None:
    """Fail fast, naming the URI, when a probe object cannot be written below `uri`."""
    if is_s3(uri):  # a missing bucket first: SeaweedFS with admin rights would create it on write
        try:
            missing = not filesystem(uri)[0].exists(split_s3(uri)[0])
        except PermissionError:  # no right to look at the bucket itself: the probe decides
            missing = False
        if missing:
            raise PermissionError(f"cannot write to {uri}: its bucket does not exist")
    probe = join(uri, f".bpiml-write-probe-{os.getpid()}")
    try:
        with retry.limited(PROBE_RETRY_S):
            write_bytes(probe, b"ok")
            remove(probe)
    except Exception as err:
        raise access.error(uri, err, "write to") from err
