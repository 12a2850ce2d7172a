"""Errors on Anthropic's Messages API (/v1/messages): `{"type": "error", "error": {"type", "message"}}`.

The route lives under /v1, whose handlers answer in OpenAI's shape (app/openai_errors.py);
`install_anthropic_error_handlers`, called after those, wraps each handler once more so that a request
to /v1/messages gets Anthropic's shape with the same status and headers. Anthropic's SDK reads its
error class from the status and its message from this body.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from fastapi.responses import JSONResponse
from starlette.responses import Response

from app.errors import HerdError

MESSAGES_PATH = "/v1/messages"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

ANTHROPIC_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["error"]},
        "error": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            "required": ["type", "message"],
        },
        "request_id": {"type": "string"},
    },
    "required": ["type", "error"],
}


class AnthropicError(HerdError):
    """A refusal raised by the /v1/messages route (400 unless told otherwise)."""

    status_code = 400


def error_type(status: int) -> str:
    """Anthropic's error `type` for an HTTP status (Ollama's table, with Anthropic's 413)."""
    return _TYPES.get(status, "api_error")


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """The error document; also a stream's `error` event when a stream fails."""
    return {
        "type": "error",
        "error": {"type": error_type(status), "message": message},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }


def is_messages_path(path: str) -> bool:
    """Whether a path is Anthropic's (what its clients call under /v1/messages, served or not)."""
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


def _validation_message(exc: RequestValidationError) -> str:
    """The first problem, as Anthropic words it: `max_tokens: Field required`."""
    errors = list(exc.errors())
    if not errors:
        return "invalid request body"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"invalid JSON: {first.get('ctx', {}).get('error', first.get('msg', ''))}"
    loc = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if not loc:
        return "the request body must be a JSON object"
    return f"{loc}: {first.get('msg', 'invalid value')}"


def _message_of(response: Response) -> str:
    """The message of an error answer in OpenAI's or Ollama's shape."""
    try:
        body = json.loads(bytes(response.body))
    except ValueError:
        return "error"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", "error"))
    return str(error or "error")


_Handler = Callable[[Request, Exception], Awaitable[Response]]


def _wrap(inner: _Handler) -> _Handler:
    async def handler(request: Request, exc: Exception) -> Response:
        if not is_messages_path(request.url.path):
            return await inner(request, exc)
        if isinstance(exc, HerdError):
            status, message, headers = exc.status_code, exc.message, exc.headers or None
        elif isinstance(exc, RequestValidationError):
            status, message, headers = 400, _validation_message(exc), None
        else:
            answer = await inner(request, exc)
            status, message = answer.status_code, _message_of(answer)
            headers = {
                k: v for k, v in answer.headers.items() if k.lower() not in ("content-length", "content-type")
            }
        return JSONResponse(anthropic_error_body(status, message), status_code=status, headers=headers)

    return handler


def install_anthropic_error_handlers(app: FastAPI) -> None:
    """Make every handler installed so far answer /v1/messages in Anthropic's shape; call it last."""
    for key, inner in list(app.exception_handlers.items()):
        if key is not WebSocketRequestValidationError:
            app.exception_handlers[key] = _wrap(cast(_Handler, inner))
