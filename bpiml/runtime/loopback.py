"""Keep a Ray client on 127.0.0.1 when it joins a loopback head. Import and call this before ray.

On Linux, Ray replaces 127.0.0.1 by the machine's first routable address when it is imported,
unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` is set; a driver doing that cannot reach a head
that listens on 127.0.0.1 only (the local stack). Jobs call `keep_loopback()` first thing, before
any module that imports ray, which is why this module imports nothing heavy.
"""

from __future__ import annotations

import os
import socket

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_loopback_address(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0] if address else ""
    return host in LOOPBACK_HOSTS


def keep_loopback(address: str | None = None) -> bool:
    """Set the switch when RAY_ADDRESS (or `address`) is a loopback head; True when it applies."""
    address = os.environ.get("RAY_ADDRESS", "") if address is None else address
    if not is_loopback_address(address):
        return False
    os.environ.setdefault(SWITCH, "0")
    return True


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 now (the kernel picks them outside Ray's worker port
    range). Every socket is held until all are picked: picked one at a time, the kernel may hand
    out the same port twice."""
    held = []
    try:
        for _ in range(n):
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]
