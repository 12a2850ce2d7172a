"""Where the client connects: OLLAMA_HOST parsed as Ollama's client parses it (envconfig.Host)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

DEFAULT_PORT = 11434
# A wildcard is something to listen on, not to connect to: the client reaches it through loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort: ``host:port`` or ``[v6]:port``; None when there is no port."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not hostport[end + 1 :].startswith(":"):
            return None
        return hostport[1:end], hostport[end + 2 :]
    if hostport.count(":") != 1:
        return None
    host, port = hostport.split(":")
    return host, port


def base_url(environ: Mapping[str, str] | None = None) -> str:
    """The API's base URL from OLLAMA_HOST: scheme http, host 127.0.0.1 and port 11434 unless given.

    Ollama would take port 80 for an explicit ``http://host``; Herd's own server (``herd serve``) listens
    on 11434 for that value, so the client looks there too. ``https://host`` still means port 443.
    """
    env = os.environ if environ is None else environ
    raw = env.get("OLLAMA_HOST", "").strip().strip("\"'").strip()
    scheme, sep, hostport = raw.partition("://")
    default_port = DEFAULT_PORT
    if not sep:
        scheme, hostport = "http", raw
    else:
        scheme = scheme.lower()
        if scheme == "https":
            default_port = 443
    hostport, _, path = hostport.partition("/")
    split = _split_host_port(hostport)
    if split is None:
        host, port = hostport.strip("[]") or "127.0.0.1", str(default_port)
    else:
        host, port = split
        host = host or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        port = str(default_port)
    host = _WILDCARDS.get(host, host)
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name, kept as written
    url = f"{scheme}://{host}:{port}"
    return f"{url}/{path}".rstrip("/") if path else url
