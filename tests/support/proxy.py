"""A real squid forward proxy on a free loopback port, for tests that pull through a corporate proxy.

Squid resolves names from its own ``hosts_file`` only, so a test registry bound on 127.0.0.1 under a
made-up name (``registry.herd.test``) is reachable through the proxy and from nowhere else. The proxy
can allow everything, deny everything (403 on CONNECT) or demand basic auth (407 without credentials).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.support.ports import free_port

Mode = Literal["allow", "deny", "auth"]
_NCSA_HELPER = Path("/usr/lib/squid/basic_ncsa_auth")


@dataclass
class Squid:
    """A running squid: its URL (with credentials in ``auth`` mode) and its access log."""

    url: str
    port: int
    access_log: Path
    user: str = ""
    password: str = ""

    @property
    def bare_url(self) -> str:
        """The proxy URL without credentials."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """The access log so far (squid writes a line when a request or tunnel ends)."""
        try:
            return self.access_log.read_text()
        except FileNotFoundError:
            return ""

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> str:
        """The access log once it contains ``needle``; raises AssertionError with the log if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if needle in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if needle not in text:
            raise AssertionError(f"{needle!r} not in squid's access log:\n{text}")
        return text


def _config(work: Path, port: int, hosts_file: Path, mode: Mode, passwd: Path | None) -> str:
    lines = [
        f"http_port 127.0.0.1:{port}",
        f"pid_filename {work}/squid.pid",
        f"cache_log {work}/cache.log",
        f"access_log stdio:{work}/access.log",
        f"coredump_dir {work}",
        "cache deny all",
        "cache_mem 8 MB",
        # Names come only from the hosts file: nothing else can reach the test registry.
        f"hosts_file {hosts_file}",
        "dns_nameservers 127.0.0.1",
        "dns_timeout 2 seconds",
        "shutdown_lifetime 0 seconds",
        "forwarded_for delete",
        "via off",
    ]
    if os.geteuid() == 0:
        # Squid drops root privileges to this user; it must be able to write the logs in `work`.
        lines.append("cache_effective_user proxy")
    if mode == "deny":
        lines.append("http_access deny all")
    elif mode == "auth":
        assert passwd is not None
        lines += [
            f"auth_param basic program {_NCSA_HELPER} {passwd}",
            "auth_param basic children 1 startup=1 idle=1",
            "auth_param basic realm herd-test",
            "acl authed proxy_auth REQUIRED",
            "http_access allow authed",
            "http_access deny all",
        ]
    else:
        lines.append("http_access allow all")
    return "\n".join(lines) + "\n"


def _wait_listening(proc: subprocess.Popen[bytes], port: int, work: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            log = (work / "cache.log").read_text() if (work / "cache.log").exists() else ""
            raise RuntimeError(f"squid exited with {proc.returncode}:\n{log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"squid did not listen on port {port} within 30 s") from None
            time.sleep(0.1)


@contextmanager
def running_squid(hosts: dict[str, str], mode: Mode = "allow") -> Iterator[Squid]:
    """Start squid resolving only ``hosts`` (name → IP); yield it; always stop it."""
    binary = shutil.which("squid") or "/usr/sbin/squid"
    if not os.access(binary, os.X_OK):
        raise RuntimeError("squid is not installed: run `make test-setup` (it is in TEST_PACKAGES)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="herd-squid-") as tmp:
        work = Path(tmp)
        hosts_file = work / "hosts"
        hosts_file.write_text("".join(f"{ip} {name}\n" for name, ip in hosts.items()))
        user, password, passwd = "", "", None
        if mode == "auth":
            user, password = "herd", "s3cret-proxy"
            hashed = subprocess.run(
                ["openssl", "passwd", "-apr1", password], check=True, capture_output=True, text=True
            ).stdout.strip()
            passwd = work / "passwd"
            passwd.write_text(f"{user}:{hashed}\n")
        (work / "squid.conf").write_text(_config(work, port, hosts_file, mode, passwd))
        if os.geteuid() == 0:
            shutil.chown(work, user="proxy", group="proxy")
            for f in work.iterdir():
                shutil.chown(f, user="proxy", group="proxy")
        proc = subprocess.Popen(
            [binary, "-N", "-f", str(work / "squid.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_listening(proc, port, work)
            url = (
                f"http://{user}:{password}@127.0.0.1:{port}" if mode == "auth" else f"http://127.0.0.1:{port}"
            )
            yield Squid(url=url, port=port, access_log=work / "access.log", user=user, password=password)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
