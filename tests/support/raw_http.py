"""Raw HTTP bytes sent to nginx, for requests no HTTP client would write (HTTP/1.0, bad bytes, bad framing)."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


def raw_http(base_url: str, data: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes to the server at ``base_url`` and read to EOF: the response's head and body."""
    parts = urlsplit(base_url)
    assert parts.hostname and parts.port
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(data)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body
