"""Which proxy a request goes through, read from HTTPS_PROXY / HTTP_PROXY / NO_PROXY as Go reads them.

Ollama is a Go program, so its users' proxy settings follow golang.org/x/net/http/httpproxy:

* ``HTTPS_PROXY`` (or ``https_proxy``) for https URLs, ``HTTP_PROXY`` (or ``http_proxy``) for http ones;
  the upper-case name wins; a value without a scheme means ``http://``.
* ``NO_PROXY``: comma-separated ``*``, host names (matching the name and its subdomains), ``.domain``
  (subdomains only), IP addresses and CIDR ranges, each optionally with ``:port``.
* ``localhost`` and loopback addresses never go through a proxy.

The environment is read when a client is built, so a worker picks up the values it was started with.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field


def _env(environ: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = environ.get(name, "")
        if value:
            return value
    return ""


def _normalise_proxy(value: str) -> str:
    """A proxy URL with a scheme (Go assumes http:// when there is none)."""
    value = value.strip()
    if value and "://" not in value:
        return f"http://{value}"
    return value


@dataclass(frozen=True)
class ProxyConfig:
    """The proxy settings of one process: which proxy, if any, a URL goes through."""

    https_proxy: str = ""
    http_proxy: str = ""
    no_proxy: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProxyConfig:
        """Read the three variables (either case) from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        no_proxy = _env(env, "NO_PROXY", "no_proxy")
        return cls(
            https_proxy=_normalise_proxy(_env(env, "HTTPS_PROXY", "https_proxy")),
            http_proxy=_normalise_proxy(_env(env, "HTTP_PROXY", "http_proxy")),
            no_proxy=tuple(p.strip().lower() for p in no_proxy.split(",") if p.strip()),
        )

    def proxy_for(self, scheme: str, host: str, port: int) -> str | None:
        """The proxy URL for a request to ``scheme://host:port``, or None to connect directly."""
        proxy = self.https_proxy if scheme == "https" else self.http_proxy
        if not proxy or not self._use_proxy(host.lower().strip("[]"), port):
            return None
        return proxy

    def _use_proxy(self, host: str, port: int) -> bool:
        if host == "localhost":
            return False
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and ip.is_loopback:
            return False
        for entry in self.no_proxy:
            if entry == "*":
                return False
            try:
                net = ipaddress.ip_network(entry, strict=False) if "/" in entry else None
            except ValueError:
                net = None
            if net is not None:
                if ip is not None and ip in net:
                    return False
                continue
            name, entry_port = _split_port(entry)
            if entry_port is not None and entry_port != port:
                continue
            if ip is not None:
                try:
                    if ipaddress.ip_address(name) == ip:
                        return False
                except ValueError:
                    pass
                continue
            if name.startswith("."):
                # ".example.com" matches subdomains only; Go also strips a leading "*.".
                if host.endswith(name):
                    return False
            elif name.startswith("*."):
                if host.endswith(name[1:]):
                    return False
            elif host == name or host.endswith("." + name):
                return False
        return True


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port`` → (host, port); a bare host or IPv6 literal → (host, None)."""
    if entry.startswith("["):
        inner, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return inner, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else None
    return entry, None
