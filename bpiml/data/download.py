"""HTTP downloads that survive a flaky link: retried with backoff, resumed from the partial file, with progress.

    download.fetch(url, part, size=2_564_550_879, what="sam_vit_h_4b8939.pth")

Bytes stream into `part`, which is kept across attempts and across runs (a rerun resumes it; the
caller holds a file lock, verifies the finished file and renames it into place). Each attempt asks
for the rest with `Range: bytes=<part size>-`: a 206 answer from that offset is appended, a 200
(a server that ignores Range) is written from the start again. An attempt that ends early (the
connection dropped, reset or timed out, an HTTP 5xx / 408 / 429) is retried after 1, 2, 4 ... s
(at most 30 s); an attempt that moved bytes forward resets the count, so a slow, flaky link still
finishes. `BPIML_DOWNLOAD_ATTEMPTS` (default 5) failed attempts in a row end it with `FetchError`,
which names the partial file a rerun resumes; any other HTTP error ends it at once.

Progress: a log line every `PROGRESS_EVERY_S` seconds and one at the end, e.g.
`sam_vit_h_4b8939.pth: 1.21 / 2.56 GB (47%) at 85.3 MB/s`.

Offline (`BPIML_OFFLINE=1`, or Hugging Face's `HF_HUB_OFFLINE=1`): `fetch` raises at once, before any
connection, naming the file that is not cached and how to provide it.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

ATTEMPTS_ENV = "BPIML_DOWNLOAD_ATTEMPTS"
OFFLINE_ENVS = ("BPIML_OFFLINE", "HF_HUB_OFFLINE")
DEFAULT_ATTEMPTS = 5
FIRST_WAIT_S, MAX_WAIT_S = 1.0, 30.0
PROGRESS_EVERY_S = 5.0
CHUNK_BYTES = 1 << 20
RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class FetchError(ValueError):
    """A download that failed or did not match what was expected."""


class _Interrupted(Exception):
    """An attempt that ended early for a reason worth another attempt."""


def offline() -> bool:
    """True when `BPIML_OFFLINE` or `HF_HUB_OFFLINE` is set to a true value (1, true, yes, on)."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENVS)


def offline_error(what: str, where: str | Path) -> FetchError:
    """The error of a file that is needed offline and not cached: what, where it was looked for, what to do."""
    return FetchError(f"offline ({' or '.join(OFFLINE_ENVS)} is set): {what} is not cached at {where}. Fetch it "
                      "once on a machine with network access (the same command without the variable), copy it "
                      "there, or set BPIML_WEIGHTS_CACHE to an s3:// prefix that holds it")


def attempts() -> int:
    raw = os.environ.get(ATTEMPTS_ENV, "")
    try:
        return max(1, int(raw)) if raw else DEFAULT_ATTEMPTS
    except ValueError as err:
        raise FetchError(f"{ATTEMPTS_ENV} must be a whole number of attempts, got {raw!r}") from err


def fetch(url: str, part: str | Path, size: int | None = None, what: str | None = None,
          timeout_s: float = 60.0) -> None:
    """Complete `part` with the bytes of `url` (see the module doc); raises FetchError."""
    part, what = Path(part), what or url.rsplit("/", 1)[-1]
    if offline():
        raise offline_error(what, part.with_name(part.name.removesuffix(".part")))
    limit, failures, wait = attempts(), 0, FIRST_WAIT_S
    while True:
        before = _size(part)
        try:
            _attempt(url, part, size, what, timeout_s)
            return
        except (_Interrupted, urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = f"{type(err).__name__}: {err}"
        if _size(part) > before:
            failures, wait = 0, FIRST_WAIT_S
        failures += 1
        if failures >= limit:
            kept = f"; {part} keeps {_size(part)} bytes, which a rerun resumes" if _size(part) else ""
            raise FetchError(f"download of {url} failed after {failures} attempts in a row ({reason}){kept}. "
                             f"More attempts: {ATTEMPTS_ENV}")
        logger.warning("download of %s interrupted at %d bytes (%s); attempt %d of %d in %.0f s", what, _size(part),
                       reason, failures + 1, limit, wait)
        time.sleep(wait)
        wait = min(wait * 2, MAX_WAIT_S)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _open(url: str, offset: int, timeout_s: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        return urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code in RETRY_STATUS:
            raise _Interrupted(f"HTTP {err.code} {err.reason}") from err
        if err.code == 416 and offset:  # the partial file is not a prefix the server can continue
            return err  # type: ignore[return-value]  # handled by the caller (its Content-Range)
        raise FetchError(f"download of {url} failed: HTTP {err.code} {err.reason}") from err


def _attempt(url: str, part: Path, size: int | None, what: str, timeout_s: float) -> None:
    offset = _size(part)
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if offset and offset == size:
        return
    with _open(url, offset, timeout_s) as response:
        status = response.status if hasattr(response, "status") else response.code
        if status == 416:
            total = _total(response.headers.get("Content-Range", ""))
            if total == offset:
                return  # already whole
            part.unlink()
            raise _Interrupted(f"HTTP 416: the server cannot continue a {offset}-byte partial file; starting over")
        if status == 206:
            start = _start(response.headers.get("Content-Range", ""))
            if start != offset:
                part.unlink()
                raise _Interrupted(f"the server resumed at byte {start}, not {offset}; starting over")
            total = _total(response.headers.get("Content-Range", ""))
        else:
            offset, total = 0, _int(response.headers.get("Content-Length"))
        total = total or size
        if offset:
            logger.info("resuming %s at %.1f MB", what, offset / 1e6)
        _copy(response, part, "ab" if offset else "wb", _Progress(what, offset, total))
    got = _size(part)
    if total is not None and got < total:
        raise _Interrupted(f"the connection closed at {got} of {total} bytes")


def _copy(response: http.client.HTTPResponse, part: Path, mode: str, progress: _Progress) -> None:
    with open(part, mode) as out:
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            progress.add(len(chunk))
    progress.done()


def _int(raw: str | None) -> int | None:
    return int(raw) if raw and raw.strip().isdigit() else None


def _start(content_range: str) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/", content_range.strip())
    return int(match.group(1)) if match else None


def _total(content_range: str) -> int | None:
    match = re.search(r"/(\d+)\s*$", content_range)
    return int(match.group(1)) if match else None


class _Progress:
    """Log lines at most every PROGRESS_EVERY_S seconds: bytes, percent when the total is known, MB/s."""

    def __init__(self, what: str, offset: int, total: int | None) -> None:
        self.what, self.done_bytes, self.total, self.moved = what, offset, total, 0
        self.started = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done_bytes += n
        self.moved += n
        if time.monotonic() - self.last >= PROGRESS_EVERY_S:
            self._log()

    def done(self) -> None:
        self._log()

    def _log(self) -> None:
        self.last = time.monotonic()
        rate = self.moved / max(self.last - self.started, 1e-6) / 1e6
        of = f" / {self.total / 1e9:.2f} GB ({100 * self.done_bytes / self.total:.0f}%)" if self.total else " GB"
        logger.info("%s: %.2f%s at %.1f MB/s", self.what, self.done_bytes / 1e9, of, rate)
