"""Free loopback ports for the processes a test starts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive TCP ports nothing holds right now (a port and those after it).

    For HERD_METRICS_PORT, whose next ports the stack gives its workers: a port the OS just handed out is
    free, but the one after it may be a client connection's local port, or one in TIME_WAIT.
    """
    for _ in range(100):
        first = free_port()
        if first + count <= 65536 and all(_bindable(first + i) for i in range(1, count)):
            return first
    raise RuntimeError(f"no run of {count} free consecutive ports on 127.0.0.1 in 100 tries")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind: a TIME_WAIT left by our own earlier listener does not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
