"""A loopback HTTP file server for download tests (weights by name): serves `files` by path, counts
the GETs per path, records each request's Range header, and misbehaves on purpose by `mode`."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # what a Hugging Face Hub answers in X-Repo-Commit


class FileServer:
    """`files`: URL path -> bytes. `mode`: ok | error (HTTP 500) | down (503) | corrupt (first bytes
    flipped) | truncated (half the bytes under the full Content-Length). `ranges`: answer `Range:
    bytes=N-` with 206 from N (else ignore it and send all, 200). `drop_at`: the next answer that
    reaches this byte offset stops there and closes the connection (once). `slow` set: each answer
    waits 0.3 s, so concurrent clients overlap. HEAD answers carry the Hub's headers (X-Repo-Commit,
    ETag). `requests`: (method, path, Range header or None) in order; `on_request(headers)` sees
    each request's headers. Stop with `close()`."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.mode = "ok"
        self.ranges = True
        self.drop_at: int | None = None
        self.gets: Counter[str] = Counter()
        self.requests: list[tuple[str, str, str | None]] = []
        self.slow = threading.Event()
        self.on_request = lambda headers: None  # called with each request's headers
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                server.requests.append((self.command, path, self.headers.get("Range")))
                server.on_request(self.headers)
                if body:
                    server.gets[path] += 1
                if server.slow.is_set():
                    threading.Event().wait(0.3)
                data = server.files.get(path)
                if data is None or server.mode in ("error", "down"):
                    self.send_error(404 if data is None else 500 if server.mode == "error" else 503)
                    return
                if server.mode == "corrupt":
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                start = _range_start(self.headers.get("Range")) if server.ranges else 0
                if start >= len(data) > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes" if server.ranges else "none")
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if not body:
                    return
                end = len(data) // 2 if server.mode == "truncated" else len(data)
                if server.drop_at is not None and start < server.drop_at < end:
                    end, server.drop_at = server.drop_at, None
                    self.close_connection = True
                self.wfile.write(data[start:end])
                if end < len(data):
                    self.close_connection = True

            def do_GET(self) -> None:
                self._answer(body=True)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def ranged(self, path: str) -> list[str]:
        """The Range headers the GETs of `path` carried (None: a request from the start)."""
        return [r for m, p, r in self.requests if m == "GET" and p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _range_start(header: str | None) -> int:
    if not header or not header.startswith("bytes=") or not header.endswith("-"):
        return 0
    raw = header[len("bytes="):-1]
    return int(raw) if raw.isdigit() else 0
