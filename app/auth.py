"""Optional API keys (HERD_API_KEYS_FILE): every request but the liveness probes needs a key.

The key comes as `Authorization: Bearer <key>` (Ollama's and OpenAI's clients) or as `x-api-key: <key>`
(Anthropic's clients); either is accepted on every route.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from app.anthropic_errors import is_messages_path

log = logging.getLogger(__name__)

# Answered without a key: Ollama's `GET|HEAD /` probe, and the two health checks, which the supervisor
# runs through nginx without a key (they tell only whether the stack is up). And /metrics, which
# Prometheus scrapes without a key: nginx's public port never proxies it (unless the operator sets
# HERD_METRICS_PUBLIC=1), only its internal listener and the API's own port, loopback or the bundle's
# internal network, reach it.
_OPEN_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})
_OPEN_ROOT_METHODS = frozenset({"GET", "HEAD"})
_UNREADABLE = (-1, -1)


def parse_keys(text: str) -> list[str]:
    """The keys of a keys file: one per line; blank lines and `#` comments are skipped."""
    keys = []
    for line in text.splitlines():
        key = line.split("#", 1)[0].strip()
        if key:
            keys.append(key)
    return keys


def _digest(key: str) -> bytes:
    # Comparing fixed-length digests keeps compare_digest's time independent of the keys' lengths.
    return hashlib.sha256(key.encode()).digest()


class KeyFile:
    """The keys of one file, read again whenever its modification time or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of what was read; None: never read
        self._digests: list[bytes] = []

    def _refresh(self) -> None:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            text = self.path.read_text()
        except OSError as exc:
            # Fail closed: with the file gone or unreadable no key is valid (never every request).
            if self._stamp != _UNREADABLE:
                log.error("api keys file unreadable, refusing every key: %s", exc)
            self._stamp, self._digests = _UNREADABLE, []
            return
        self._stamp = stamp
        self._digests = [_digest(key) for key in parse_keys(text)]
        log.info("api keys loaded from %s: %d keys", self.path, len(self._digests))

    def accepts(self, key: str) -> bool:
        """Whether ``key`` is one of the file's keys, compared in constant time against every key."""
        self._refresh()
        candidate = _digest(key)
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(candidate, digest)
        return found


def bearer_token(scope: Scope) -> str | None:
    """The token of the request's `Authorization: Bearer <token>` header, or None."""
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def presented_keys(scope: Scope) -> list[str]:
    """The keys a request presents: its Bearer token and its `x-api-key` header, as it sends them."""
    keys = [bearer_token(scope)]
    keys += [v.decode("latin-1").strip() for n, v in scope.get("headers") or [] if n == b"x-api-key"]
    return [key for key in keys if key]


class ApiKeyMiddleware:
    """Refuses with 401 every request without a valid key when a keys file is configured.

    A plain ASGI middleware, like the others in app.main: it answers before the app sees the request
    and never touches ``receive``. Keys are never logged.
    """

    def __init__(self, app: ASGIApp, keys_file: Path | None = None) -> None:
        self.app = app
        self.keys = KeyFile(keys_file) if keys_file is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys is None or scope["type"] != "http" or self._open(scope):
            await self.app(scope, receive, send)
            return
        keys = presented_keys(scope)
        # Every key presented is checked (no short cut): one valid key lets the request through.
        accepted = [self.keys.accepts(key) for key in keys]
        if any(accepted):
            await self.app(scope, receive, send)
            return
        message = "missing API key (send Authorization: Bearer <key> or x-api-key: <key>)"
        await self._refuse(send, scope["path"], message if not keys else "invalid API key")

    @staticmethod
    def _open(scope: Scope) -> bool:
        path = scope["path"]
        return path in _OPEN_PATHS or (path == "/" and scope["method"] in _OPEN_ROOT_METHODS)

    @staticmethod
    async def _refuse(send: Send, path: str, message: str) -> None:
        # Ollama's error shape on the native API, OpenAI's on /v1, Anthropic's on /v1/messages (what
        # each kind of client parses).
        document: dict[str, object]
        if is_messages_path(path):
            document = {"type": "error", "error": {"type": "authentication_error", "message": message}}
        elif path.startswith("/v1/"):
            error = {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
            document = {"error": error}
        else:
            document = {"error": f"unauthorized: {message}"}
        body = json.dumps(document).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
