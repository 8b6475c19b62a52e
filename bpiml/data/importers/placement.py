"""Where a store's files live: manifest paths relative to the store, by reference, symlink or copy.

Manifest paths may not leave their store root, so an importer places each source file:
inside the store already -> its relative path; `link=True` -> through one symlink `<store>/data`
to the data folder (local only); `copy=True` -> copied to `<store>/images|masks/<id><ext>`.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading

from bpiml.data import naming, storage

logger = logging.getLogger(__name__)

LINK_NAME = "data"  # the symlink to the data folder when link=True


def resolve_source(base: str, path: str) -> str:
    """A path listed in an index -> URI: absolute paths and URIs as given (normalised), relative ones
    below `base`; a relative path that climbs above `base` (`../..`) is a ValueError."""
    if storage.is_s3(path):
        return storage.s3_uri(posixpath.normpath(path[len("s3://"):]))
    if path.startswith("file://") or os.path.isabs(path):
        return os.path.normpath(storage.local_path(path))
    return storage.join(base, storage.relative_path(path, base))


def inside(root: str, uri: str) -> str | None:
    """`uri`'s path below `root` (posix), or None when it lies outside (lexically, then by real path)."""
    if storage.is_s3(root) or storage.is_s3(uri):
        prefix = root.rstrip("/") + "/"
        return uri[len(prefix):] if storage.is_s3(root) and uri.startswith(prefix) else None
    root_l, uri_l = root.removeprefix("file://"), uri.removeprefix("file://")
    for r, u in ((os.path.abspath(root_l), os.path.abspath(uri_l)), (os.path.realpath(root_l), os.path.realpath(uri_l))):
        rel = os.path.relpath(u, r)
        if rel != "." and not rel.startswith(".." + os.sep) and rel != "..":
            return rel.replace(os.sep, "/")
    return None


class Placer:
    """Turns a source URI into a manifest path relative to the output store (see module docstring)."""

    def __init__(self, out_store: str, data_root: str, copy: bool, link: bool):
        if copy and link:
            raise ValueError("choose one of copy=True and link=True, not both")
        if link and (storage.is_s3(out_store) or storage.is_s3(data_root)):
            raise ValueError("link=True needs a local output store and local data; use copy=True for s3://")
        self.out, self.data_root, self.copy, self.link = out_store, data_root, copy, link
        self._linked = False
        self._link_lock = threading.Lock()  # import workers place files from several threads

    def check(self, sources: list[str]) -> None:
        """Fail before any work when some source is outside the store and neither copy nor link is on."""
        outside = [s for s in sources if inside(self.out, s) is None]
        if not outside or self.copy:
            return
        if self.link:
            bad = [s for s in outside if inside(self.data_root, s) is None]
            if bad:  # e.g. a list of absolute paths elsewhere: link the folder that holds them all
                wider = os.path.commonpath([os.path.realpath(p.removeprefix("file://")) for p in [self.data_root, *bad]])
                logger.info("linking %s (it holds every listed file; %s does not)", wider, self.data_root)
                self.data_root = wider
            return
        raise ValueError(
            f"{len(outside)} file(s) lie outside the output store {self.out!r} (e.g. {outside[0]!r}) and manifest "
            f"paths must stay inside their store. Options: write the store where the data is (out_store = "
            f"{self.data_root!r}, manifest next to the index), link=True (--link: one symlink "
            f"{LINK_NAME!r} -> the data folder, local only) or copy=True (--copy: copy images and masks).")

    def place(self, src: str, kind: str, rid: str) -> str:
        rel = inside(self.out, src)
        if rel is not None:
            return rel
        if self.link:
            self._ensure_link()
            return f"{LINK_NAME}/{inside(self.data_root, src)}"
        if self.copy:
            ext = posixpath.splitext(src)[1].lower()
            dest = f"{kind}/{naming.file_stem(rid)}{ext}"
            storage.write_bytes(storage.join(self.out, dest), storage.read_bytes(src))
            return dest
        raise ValueError(f"{src!r} is outside the store {self.out!r}")  # check() prevents this

    def _ensure_link(self) -> None:
        with self._link_lock:
            if self._linked:
                return
            target = os.path.realpath(self.data_root.removeprefix("file://"))
            link = os.path.join(self.out.removeprefix("file://"), LINK_NAME)
            if os.path.islink(link):
                if os.path.realpath(link) != target:
                    raise ValueError(f"{link} already links to {os.path.realpath(link)}, not {target}")
            elif os.path.exists(link):
                raise ValueError(f"{link} exists and is not a symlink; cannot link the data folder there")
            else:
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(target, link)
            storage.declare_link(self.out, LINK_NAME)
            self._linked = True
