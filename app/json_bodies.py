"""JSON request bodies as Ollama's Go decoder reads them: any Content-Type, bounded nesting, no lone surrogates.

Two plain ASGI middlewares (Starlette's BaseHTTPMiddleware wraps `receive`, which breaks disconnect
detection for streaming responses). Both run inside the API-key check, so an unauthenticated body is
never read, let alone parsed.
"""

from __future__ import annotations

import contextlib
import json
import re
from itertools import accumulate, count
from operator import sub
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.openai_errors import send_error

# Deeper than any real request (a JSON schema in `format` nests two levels per object level), and far
# below where Python's recursive code gives out (json, pydantic's serializer, the worker's grammar
# builder: RecursionError or "Maximum serialization depth exceeded" at a few hundred levels).
MAX_JSON_DEPTH = 64

# A JSON `\uD800`-`\uDFFF` escape: the only way a lone UTF-16 surrogate gets into a decoded string.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# A JSON string, escapes included (unrolled, so that long strings cost no backtracking).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
# Openers become 2 and closers 0, so that a running sum minus the count of brackets read is the depth.
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def _checked_path(scope: Scope) -> bool:
    """Whether a request's body is JSON: /api and /v1, but not the raw bytes of /api/blobs."""
    if scope["type"] != "http":
        return False
    path: str = scope["path"]
    return path.startswith(("/api/", "/v1/")) and not path.startswith("/api/blobs")


def nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether a JSON text nests arrays and objects more than ``limit`` deep, read without parsing it.

    Brackets inside strings do not count. A malformed text may be misjudged either way; the parser
    refuses it later all the same.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # every request that is not hostile ends here, at C speed
    steps = _STRING.sub(b"", body).translate(_BRACKET_STEPS, _NOT_BRACKETS)
    # Depth after each bracket, stopping at the first one past the limit; all in C, no Python loop.
    depths = map(sub, accumulate(steps), count(1))
    return next(filter(limit.__lt__, depths), None) is not None


def _replace_lone_surrogates(value: Any) -> Any:
    """``value`` with every unpaired surrogate in its strings replaced by U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_replace_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_lone_surrogates(k): _replace_lone_surrogates(v) for k, v in value.items()}
    return value


class JsonContentTypeMiddleware:
    """Reads every /api body as JSON whatever its Content-Type, as Ollama does.

    `curl -d '{...}'`, the form every Ollama example uses, sends application/x-www-form-urlencoded;
    FastAPI would refuse that body.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _checked_path(scope) and scope["path"].startswith("/api/"):
            headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class JsonBodyCheckMiddleware:
    """Refuses JSON bodies nested deeper than MAX_JSON_DEPTH with a 400, and replaces unpaired UTF-16
    surrogates with U+FFFD, as Ollama's Go decoder does.

    Python's json accepts `"\\ud800"` and yields a string no UTF-8 encoder takes: the worker then failed
    with a 500 when it tokenized the prompt. Only bodies that contain such an escape are re-encoded.
    Nesting is checked first, so the recursive code here and behind it never meets a hostile depth.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _checked_path(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away before its body ended: let the app see the same
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if nested_deeper_than(body, MAX_JSON_DEPTH):
            message_text = f"invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels (the limit)"
            await send_error(send, scope["path"], 400, message_text, code="json_too_deep")
            return
        if _SURROGATE_ESCAPE.search(body):
            # Not JSON: left as it is, for the app to answer with its own 400.
            with contextlib.suppress(ValueError):
                body = json.dumps(_replace_lone_surrogates(json.loads(body))).encode()
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                # Later reads wait for the disconnect that streaming responses watch for.
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
