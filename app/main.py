"""The API application: `create_app()` wires settings, Redis, the store and the routers together."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.admission import Admission
from app.anthropic_errors import ANTHROPIC_ERROR_SCHEMA, MESSAGES_PATH, install_anthropic_error_handlers
from app.auth import ApiKeyMiddleware
from app.errors import ERROR_SCHEMA, document_errors, install_error_handlers
from app.json_bodies import JsonBodyCheckMiddleware, JsonContentTypeMiddleware
from app.openai_errors import OPENAI_ERROR_SCHEMA, V1_PREFIX, install_openai_error_handlers, send_error
from app.placement import WorkerDirectory
from app.relay import EventRelay
from app.routers import anthropic, embed, generate, manage, meta, models, openai, responses
from app.services import Services
from app.settings import ApiSettings
from app.sweeper import Sweeper
from herd import __version__
from herd.logs import configure_logging
from herd.redis_connect import async_client, redact
from herd.settings import load_settings
from herd.store import ModelStore

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


class UnhandledErrorMiddleware:
    """Answers an exception that no handler took with a JSON 500 in the request's error shape.

    Starlette's last resort answers in plain text and re-raises; uvicorn, seeing an exception after the
    response, closes the connection, and nginx, which keeps upstream connections alive, sent the next
    request (anyone's) down the closed one: a 502. Caught here, the exchange ends as any other does.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except Exception:
            rid = scope.get("state", {}).get("request_id", "")
            log.exception("unhandled error", extra={"path": scope["path"], "request_id": rid})
            if started:
                raise  # part of the answer is out: only closing the connection can tell the client
            await send_error(send, scope["path"], 500, f"internal server error (request id {rid})")


def build_services(settings: ApiSettings) -> Services:
    """The process's runtime resources; nothing connects until first used."""
    # The event reader holds one connection (app/event_streams.py); the rest serve short commands, a full
    # queue's worth of them at once in a burst, and a request beyond that waits for a connection instead
    # of failing with "too many connections".
    client = async_client(
        settings,
        decode_responses=True,
        max_connections=settings.max_queue + 256,
        timeout=10,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
    workers = WorkerDirectory(client)
    admission = Admission(client, settings.max_queue, settings.retry_after_s)
    return Services(
        settings=settings,
        redis=client,
        store=ModelStore(settings.models_dir),
        admission=admission,
        workers=workers,
        relay=EventRelay(
            client, workers, settings.worker_timeout_s, settings.queue_timeout_s, admission.withdraw
        ),
    )


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The FastAPI app (gunicorn calls this as `app.main:create_app()`)."""
    settings = settings or load_settings(ApiSettings)
    configure_logging("api", settings.debug)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings)
        app.state.services = services
        # Dead workers' queues back to the pool (app/sweeper.py).
        sweeper = Sweeper(services.redis)
        sweeper.start()
        log.info(
            "api started", extra={"redis": redact(settings.redis_url), "models": str(settings.models_dir)}
        )
        try:
            yield
        finally:
            await sweeper.stop()
            await services.close()

    app = FastAPI(
        title="Herd",
        version=__version__,
        description="A self-hosted LLM server that speaks Ollama's API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    document_errors(
        app,
        {
            "/": ("Error", ERROR_SCHEMA),
            V1_PREFIX + "/": ("OpenAIError", OPENAI_ERROR_SCHEMA),
            MESSAGES_PATH: ("AnthropicError", ANTHROPIC_ERROR_SCHEMA),
        },
    )

    @app.exception_handler(aioredis.ConnectionError)
    async def _redis_down(_: Request, exc: aioredis.ConnectionError) -> JSONResponse:
        # Fail fast and retryably while Redis is away; the client pool reconnects by itself.
        log.error("redis unreachable: %s", exc)
        metrics.count_rejection("redis_unavailable")
        return JSONResponse(
            {"error": "service unavailable: queue unreachable"},
            status_code=503,
            headers={"Retry-After": str(settings.retry_after_s)},
        )

    install_openai_error_handlers(app)  # after every handler: /v1 answers in OpenAI's shape
    install_anthropic_error_handlers(app)  # after that: /v1/messages answers in Anthropic's shape

    # Added innermost first. The key is checked before any body is read or parsed, so a hostile body
    # from a client without a key costs nothing; only the request id and the error barrier come before.
    app.add_middleware(JsonContentTypeMiddleware)
    app.add_middleware(JsonBodyCheckMiddleware)
    app.add_middleware(ApiKeyMiddleware, keys_file=settings.api_keys_file)
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(RequestIdMiddleware)

    for router in (meta.router, generate.router, embed.router, models.router, manage.router, openai.router):
        app.include_router(router)
    app.include_router(responses.router)
    app.include_router(anthropic.router)
    return app
