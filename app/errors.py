"""Herd's named errors and their one mapping to HTTP: Ollama's `{"error": "..."}` shape."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class HerdError(Exception):
    """An error with a status code and a message a client can act on."""

    status_code = 500

    def __init__(
        self, message: str, *, status_code: int | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}


class BadRequest(HerdError):
    status_code = 400


class ModelNotFoundError(HerdError):
    status_code = 404

    def __init__(self, name: str):
        super().__init__(f"model '{name}' not found")


class ServerBusy(HerdError):
    """The waiting queue is at OLLAMA_MAX_QUEUE: Ollama's exact message, plus Retry-After."""

    status_code = 503

    def __init__(self, retry_after_s: int):
        super().__init__(
            "server busy, please try again.  maximum pending requests exceeded",
            headers={"Retry-After": str(retry_after_s)},
        )


def _describe_validation_error(error: dict[str, Any]) -> str:
    """One readable line naming the field at fault, e.g. "options.num_ctx: must be ≤ 1048576"."""
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    kind = error.get("type", "")
    if kind == "json_invalid":
        return f"invalid JSON: {error.get('ctx', {}).get('error', error.get('msg', ''))}"
    if kind == "missing" and not loc:
        return "missing request body"
    field = ".".join(loc) or "body"
    msg = str(error.get("msg", "invalid value"))
    if kind == "missing":
        return f"{field} is required"
    if kind == "extra_forbidden":
        return f"unknown field {field!r}"
    return f"invalid value for {field!r}: {msg}"


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Ollama's error body."""
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the API raises to Ollama's shape, in one place."""

    @app.exception_handler(HerdError)
    async def _herd_error(_: Request, exc: HerdError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        # A body that is JSON null or absent reads as one "missing" error at the body itself.
        message = _describe_validation_error(errors[0]) if errors else "invalid request"
        return error_response(400, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and detail == "Not Found":
            detail = "404 page not found"  # Ollama's (Gin's) body for an unknown route
        elif exc.status_code == 405:
            detail = "405 method not allowed"
        return error_response(exc.status_code, detail, getattr(exc, "headers", None))


# The statuses any operation can answer with an error, and why; the OpenAPI lists them in place of
# FastAPI's 422, which Herd never sends (validation errors are 400, as in Ollama).
ERROR_STATUSES: dict[int, str] = {
    400: "Bad input, naming the field or value at fault",
    401: "Missing or invalid API key (when HERD_API_KEYS_FILE is set)",
    403: "Origin or Host refused at the edge (nginx)",
    404: "Unknown model or route",
    413: "Request body over HERD_MAX_BODY_SIZE (nginx)",
    500: "The model failed to load or run",
    502: "The model registry, or the proxy to it, failed (pull, push)",
    503: "Queue full (OLLAMA_MAX_QUEUE) or Redis unreachable; retry after Retry-After seconds",
}

# Ollama's error body: `{"error": "..."}`.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}


def document_errors(app: FastAPI, shapes: dict[str, tuple[str, dict[str, Any]]]) -> None:
    """Serve an OpenAPI whose every operation documents the errors it really sends, in their real shape.

    ``shapes`` maps a path prefix to the name and schema of the error body of the routes under it (the
    longest prefix wins); FastAPI's generated 422 and its `detail` schemas, which never reach a client,
    are dropped.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for name, body_schema in shapes.values():
            components[name] = body_schema
        for path, operations in schema.get("paths", {}).items():
            prefix = max((p for p in shapes if path.startswith(p)), key=len, default=None)
            if prefix is None:
                raise ValueError(f"no error shape for path {path!r} (shapes cover {sorted(shapes)})")
            body = {"application/json": {"schema": {"$ref": f"#/components/schemas/{shapes[prefix][0]}"}}}
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                for status, why in ERROR_STATUSES.items():
                    responses.setdefault(str(status), {"description": why, "content": body})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
