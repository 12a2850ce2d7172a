"""The API application: `create_app()` wires settings, Redis, the store and the routers together."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__, metrics
from app.admission import Admission
from app.auth import ApiKeyMiddleware
from app.errors import ERROR_SCHEMA, document_errors, install_error_handlers
from app.logs import configure_logging
from app.openai_errors import OPENAI_ERROR_SCHEMA, V1_PREFIX, install_openai_error_handlers
from app.placement import WorkerDirectory
from app.relay import EventRelay
from app.routers import embed, generate, manage, meta, models, openai
from app.services import Services
from app.settings import ApiSettings, load_settings
from app.store import ModelStore

log = logging.getLogger(__name__)


class RequestIdMiddleware:
    """Puts nginx's X-Request-ID (or a new one) on request.state and the response, and logs the request.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware wraps `receive`, which breaks disconnect
    detection for streaming responses (a live client looked disconnected after the first chunk).
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics.observe_request(scope, status)
            # One line per request, carrying the id nginx logged too (the worker logs it as well).
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                    "request_id": rid,
                },
            )


class JsonBodyMiddleware:
    """Reads every /api body as JSON whatever its Content-Type, as Ollama does.

    `curl -d '{...}'`, the form every Ollama example uses, sends application/x-www-form-urlencoded;
    FastAPI would refuse that body.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/api/")
            and not scope["path"].startswith("/api/blobs")
        ):
            headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


# A JSON `\uD800`-`\uDFFF` escape: the only way a lone UTF-16 surrogate gets into a decoded string.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _replace_lone_surrogates(value: Any) -> Any:
    """``value`` with every unpaired surrogate in its strings replaced by U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_replace_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_lone_surrogates(k): _replace_lone_surrogates(v) for k, v in value.items()}
    return value


class LoneSurrogateMiddleware:
    """Replaces unpaired UTF-16 surrogates in JSON bodies with U+FFFD, as Ollama's Go decoder does.

    Python's json accepts `"\\ud800"` and yields a string no UTF-8 encoder takes: the worker then failed
    with a 500 when it tokenized the prompt. Only bodies that contain such an escape are re-encoded.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not (path.startswith(("/api/", "/v1/")) and not path.startswith("/api/blobs")):
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


def build_services(settings: ApiSettings) -> Services:
    """The process's runtime resources; nothing connects until first used."""
    # Each streaming request blocks one connection in XREAD; the pool holds a full queue of them, and a
    # request beyond that waits for a connection (a burst) instead of failing with "too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        decode_responses=True,
        max_connections=settings.max_queue + 256,
        timeout=10,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
    client = aioredis.Redis(connection_pool=pool)
    workers = WorkerDirectory(client)
    return Services(
        settings=settings,
        redis=client,
        store=ModelStore(settings.models_dir),
        admission=Admission(client, settings.max_queue, settings.retry_after_s),
        workers=workers,
        relay=EventRelay(client, workers, settings.worker_timeout_s),
    )


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The FastAPI app (gunicorn calls this as `app.main:create_app()`)."""
    settings = settings or load_settings(ApiSettings)
    configure_logging("api", settings.debug)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings)
        app.state.services = services
        log.info("api started", extra={"redis": settings.redis_url, "models": str(settings.models_dir)})
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(
        title="Herd",
        version=__version__,
        description="A self-hosted LLM server that speaks Ollama's API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    document_errors(
        app, {"/": ("Error", ERROR_SCHEMA), V1_PREFIX + "/": ("OpenAIError", OPENAI_ERROR_SCHEMA)}
    )

    @app.exception_handler(aioredis.ConnectionError)
    async def _redis_down(_: Request, exc: aioredis.ConnectionError) -> JSONResponse:
        # Fail fast and retryably while Redis is away; the client pool reconnects by itself.
        log.error("redis unreachable: %s", exc)
        metrics.count_rejection("redis_unavailable")
        return JSONResponse(
            {"error": "service unavailable: queue unreachable"}, status_code=503, headers={"Retry-After": "1"}
        )

    app.add_middleware(ApiKeyMiddleware, keys_file=settings.api_keys_file)
    install_openai_error_handlers(app)  # after every handler: /v1 answers in OpenAI's shape

    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(LoneSurrogateMiddleware)
    app.add_middleware(RequestIdMiddleware)

    for router in (meta.router, generate.router, embed.router, models.router, manage.router, openai.router):
        app.include_router(router)
    return app
