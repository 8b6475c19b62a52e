"""How a record id becomes a file name: one rule for every output named after an id.

`file_stem("img 1")` is `img_1-<12 hex>`: a readable slug (characters outside `[A-Za-z0-9._-]`
replaced by `_`, cut to 80 characters) plus the first 12 hex digits of the SHA-256 of the exact
id. Ids that share a slug (`img 1`, `img_1`, `a/b`, `a_b`) differ in the hash, so two records
never share an output file; the same id always gives the same name, which makes rewrites
idempotent.
"""

from __future__ import annotations

import hashlib
import re

SLUG_CHARS = 80
HASH_CHARS = 12


def slug(text: str) -> str:
    """A readable, filesystem-safe version of `text` (not unique: see `file_stem`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:SLUG_CHARS] or "item"


def file_stem(record_id: str) -> str:
    """`<slug>-<hash>`: the collision-free file name (without extension) for `record_id`."""
    if not isinstance(record_id, str) or not record_id:
        raise ValueError(f"record id must be a non-empty string, got {record_id!r}")
    digest = hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:HASH_CHARS]
    return f"{slug(record_id)}-{digest}"
