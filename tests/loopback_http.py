"""A loopback HTTP file server for download tests (weights by name): serves `files` by path, counts
the GETs per path, and misbehaves on purpose by `mode`."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """`files`: URL path -> bytes. `mode`: ok | error (HTTP 500) | down (503) | corrupt (first bytes
    flipped) | truncated (half the bytes under the full Content-Length). `slow` set: each answer
    waits 0.3 s, so concurrent clients overlap. Stop with `close()`."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.mode = "ok"
        self.gets: Counter[str] = Counter()
        self.slow = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.gets[self.path] += 1
                if server.slow.is_set():
                    threading.Event().wait(0.3)
                data = server.files.get(self.path)
                if data is None or server.mode in ("error", "down"):
                    self.send_error(404 if data is None else 500 if server.mode == "error" else 503)
                    return
                if server.mode == "corrupt":
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if server.mode == "truncated" else data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
