"""What the security checks observe: a stack's processes and their sockets (from /proc), and TLS handshakes.

Sockets are read the way `ss` does: a process's socket inodes from /proc/<pid>/fd, matched against the
kernel's tables in /proc/<pid>/net/{tcp,tcp6,udp,udp6}. No privilege and no extra package is needed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from stack.supervisor import Stack

TCP_LISTEN = "0A"
_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "06": "TIME_WAIT", "0A": "LISTEN"}
_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Sock:
    """One socket of one process, as the kernel's table shows it."""

    pid: int
    proto: str  # tcp, tcp6, udp, udp6
    local: tuple[IpAddress, int]
    remote: tuple[IpAddress, int]
    state: str  # the kernel's hex state code

    @property
    def listening(self) -> bool:
        return self.proto.startswith("tcp") and self.state == TCP_LISTEN

    @property
    def state_name(self) -> str:
        return _TCP_STATES.get(self.state, self.state) if self.proto.startswith("tcp") else "udp"

    def __str__(self) -> str:
        return f"pid {self.pid} {self.proto} {self.local} -> {self.remote} {self.state_name}"


def is_loopback(address: IpAddress) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (::ffff:127.0.0.1)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _address(text: str) -> tuple[IpAddress, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if sys.byteorder == "little":
        # The kernel prints each 32-bit word of the address in host byte order.
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw), int(port, 16)


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets ``pid`` holds open (empty if it is gone)."""
    inodes: set[int] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return inodes
    for fd in fds:
        try:
            match = _SOCKET_LINK.fullmatch(os.readlink(fd))
        except (FileNotFoundError, ProcessLookupError):
            continue  # closed between listing and reading
        if match:
            inodes.add(int(match.group(1)))
    return inodes


def sockets(pid: int) -> list[Sock]:
    """Every TCP and UDP socket (IPv4 and IPv6) that ``pid`` holds."""
    inodes = socket_inodes(pid)
    found: list[Sock] = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        except (FileNotFoundError, ProcessLookupError):
            return found
        for line in lines:
            fields = line.split()
            if int(fields[9]) in inodes:
                found.append(Sock(pid, proto, _address(fields[1]), _address(fields[2]), fields[3]))
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (gunicorn's and nginx's worker processes)."""
    found = [pid]
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            kids = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for kid in kids:
            found += descendants(int(kid))
    return found


def stack_processes(stack: Stack) -> dict[int, str]:
    """Every running process of the stack, by pid, with the name of the part it belongs to."""
    parts = [stack.redis, stack.api, *stack.workers, stack.store_worker, stack.nginx]
    named: dict[int, str] = {}
    for part in parts:
        if part is not None and part.pid is not None:
            for pid in descendants(part.pid):
                named[pid] = part.name
    return named


def outbound(socks: list[Sock]) -> list[Sock]:
    """The sockets talking to (or dialing) an address that is not loopback."""
    return [
        s
        for s in socks
        if not s.listening and not s.remote[0].is_unspecified and not is_loopback(s.remote[0])
    ]


# --- TLS --------------------------------------------------------------------------------------------


def openssl_handshake(host: str, port: int, *args: str) -> str | None:
    """The cipher suite an ``openssl s_client`` handshake agreed on, or None when the server refused it."""
    argv = ["openssl", "s_client", "-brief", "-connect", f"{host}:{port}", "-servername", "herd.lan", *args]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    match = re.search(r"^Ciphersuite: (\S+)", proc.stderr + proc.stdout, flags=re.M)
    return match.group(1) if proc.returncode == 0 and match else None


def openssl_cipher_names(spec: str) -> list[str]:
    """The cipher names the local openssl expands ``spec`` to."""
    argv = ["openssl", "ciphers", spec]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=20).stdout
    return out.strip().split(":")
