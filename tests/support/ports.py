"""Free loopback ports for the processes a test starts.

The ports come from outside the kernel's ephemeral range (net.ipv4.ip_local_port_range). A port the
OS hands out for bind(0) lies inside it, where every outgoing connection (a test's HTTP client, nginx to
the API, a worker to Redis) also takes its local port: between the check that a port is free and the
server binding it, one of those could take it. Outside the range only a listener can.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Below this, ports belong to system services often enough to avoid them.
LOWEST = 20000
# Handed out during this test session: two picks before either server binds must still differ.
_given: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _candidates(count: int) -> list[range]:
    """Where a run of `count` ports may start: below the ephemeral range, else above it."""
    low, high = _ephemeral_range()
    spans = [range(LOWEST, low - count), range(high + 1, 65536 - count)]
    return [s for s in spans if len(s) > 0]


def free_port() -> int:
    """A TCP port nothing listens on right now, outside the ephemeral range."""
    return free_port_run(1)


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive TCP ports nothing holds right now (a port and those after it).

    For HERD_METRICS_PORT, whose next ports the stack gives its workers.
    """
    spans = _candidates(count)
    for _ in range(200):
        first = random.choice(random.choice(spans))
        run = range(first, first + count)
        if not _given.intersection(run) and all(_bindable(p) for p in run):
            _given.update(run)
            return first
    raise RuntimeError(f"no run of {count} free consecutive ports on 127.0.0.1 in 200 tries")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind: a TIME_WAIT left by our own earlier listener does not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
