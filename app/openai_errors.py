"""Errors on the OpenAI-compatible `/v1` API: OpenAI's `{"error": {message, type, param, code}}` shape.

The app-wide handlers in `app/errors.py` answer in Ollama's shape. `install_openai_error_handlers` wraps
each of them: a request under `/v1` gets OpenAI's shape (same status and headers, `Retry-After`
included), every other request the native handler's answer, unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Send

from app.anthropic_errors import anthropic_error_body, is_messages_path
from app.errors import HerdError

V1_PREFIX = "/v1"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

# OpenAI's error body, as `error_body` writes it (documented in the OpenAPI for every /v1 operation).
OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}


class OpenAIError(HerdError):
    """An error raised by a /v1 route, with OpenAI's `param` (the field at fault) and `code`."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 400,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message, status_code=status_code, headers=headers)
        self.param = param
        self.code = code


def unsupported(param: str, why: str = "is not supported by this server") -> OpenAIError:
    """A 400 for a request field Herd does not implement, naming it."""
    return OpenAIError(f"'{param}' {why}", param=param, code="unsupported_parameter")


def error_type(status_code: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status_code >= 500:
        return "server_error"
    return _TYPES.get(status_code, "invalid_request_error")


def error_body(
    status_code: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The `{"error": {...}}` document, also sent as a stream's last event when a stream fails."""
    return {"error": {"message": message, "type": error_type(status_code), "param": param, "code": code}}


def openai_error_response(
    status_code: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error answer in OpenAI's shape."""
    return JSONResponse(
        error_body(status_code, message, param=param, code=code), status_code=status_code, headers=headers
    )


def is_v1_path(path: str) -> bool:
    """Whether a request path is under the OpenAI-compatible API."""
    return path == V1_PREFIX or path.startswith(V1_PREFIX + "/")


def is_v1(request: Request) -> bool:
    return is_v1_path(request.url.path)


def error_document(path: str, status_code: int, message: str, *, code: str | None = None) -> dict[str, Any]:
    """The error body a request at ``path`` expects: Anthropic's under /v1/messages, OpenAI's shape under
    /v1, Ollama's elsewhere."""
    if is_messages_path(path):
        return anthropic_error_body(status_code, message)
    if is_v1_path(path):
        return error_body(status_code, message, code=code)
    return {"error": message}


async def send_error(
    send: Send, path: str, status_code: int, message: str, *, code: str | None = None
) -> None:
    """Answer with an error from an ASGI middleware, where FastAPI's handlers cannot reach."""
    body = json.dumps(error_document(path, status_code, message, code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def validation_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """A pydantic error location as OpenAI names params: `messages[0].content`."""
    out = ""
    for part in loc:
        if part == "body":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if not errors:
        return openai_error_response(400, "invalid request body")
    first = errors[0]
    kind = first.get("type", "")
    param = validation_param(first.get("loc", ()))
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", first.get("msg", ""))
        return openai_error_response(400, f"We could not parse the JSON body of your request: {detail}")
    if param is None:
        return openai_error_response(400, "the request body must be a JSON object")
    if kind == "missing":
        return openai_error_response(400, f"Missing required parameter: '{param}'.", param=param)
    message = f"Invalid value for '{param}': {first.get('msg', 'invalid value')}"
    return openai_error_response(400, message, param=param, code="invalid_value")


def _reshape(response: Response) -> Response:
    """A native error answer (`{"error": "..."}`) re-written in OpenAI's shape, status and headers kept."""
    try:
        body = json.loads(bytes(response.body))
        message = str(body.get("error", "error")) if isinstance(body, dict) else "error"
    except ValueError:
        message = "error"
    headers = {
        k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")
    }
    return openai_error_response(response.status_code, message, headers=headers)


_Handler = Callable[[Request, Exception], Awaitable[Response]]


def _wrap(native: _Handler) -> _Handler:
    async def handler(request: Request, exc: Exception) -> Response:
        if not is_v1(request):
            return await native(request, exc)
        if isinstance(exc, HerdError):
            return openai_error_response(
                exc.status_code,
                exc.message,
                param=getattr(exc, "param", None),
                code=getattr(exc, "code", None),
                headers=exc.headers or None,
            )
        if isinstance(exc, RequestValidationError):
            return _validation_error(exc)
        if isinstance(exc, StarletteHTTPException) and exc.status_code == 404:
            return openai_error_response(
                404,
                f"Unknown request URL: {request.method} {request.url.path}.",
                code="unknown_url",
            )
        return _reshape(await native(request, exc))

    return handler


def install_openai_error_handlers(app: FastAPI) -> None:
    """Make every handler installed so far answer /v1 requests in OpenAI's shape; call it last."""
    for key, native in list(app.exception_handlers.items()):
        if key is not WebSocketRequestValidationError:
            # Every handler the app installs is async and answers a Request (websockets are left out).
            app.exception_handlers[key] = _wrap(cast(_Handler, native))
