"""Running one generation for a route: admit the job, wait for its first event, then relay as NDJSON.

The HTTP status is decided by the first event: an error before any token is answered with its own
status (400, 404, 500) like Ollama does, and only once a token (or the final chunk) exists does a 200
stream begin. An error after that ends the stream with an `{"error": ...}` line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app import metrics
from app.contracts import JOB_FUNC_GENERATE, GenerateJob
from app.errors import error_response
from app.services import Services
from app.store import StoredModel

log = logging.getLogger(__name__)

Kind = Literal["generate", "chat"]
_STATS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
_background: set[asyncio.Task[None]] = set()


def created_at() -> str:
    """RFC 3339 with nanosecond-style precision and Z, as Ollama writes created_at."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def chunk(
    kind: Kind,
    model: str,
    text: str,
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One streamed piece of output: text, whole tool calls, and log probabilities when asked for."""
    body: dict[str, Any] = {"model": model, "created_at": created_at()}
    if kind == "generate":
        body["response"] = text
    else:
        body["message"] = {"role": "assistant", "content": text}
        if tool_calls:
            body["message"]["tool_calls"] = tool_calls
    body["done"] = False
    if logprobs:
        body["logprobs"] = logprobs
    return body


def final_chunk(
    kind: Kind,
    model: str,
    event: dict[str, Any],
    text: str,
    total_ns: int,
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The closing object: done_reason and the timing statistics."""
    body = chunk(kind, model, text, tool_calls=tool_calls, logprobs=logprobs)
    body["done"] = True
    body["done_reason"] = event.get("done_reason", "stop")
    if body["done_reason"] in ("load", "unload"):
        return body
    if kind == "generate" and event.get("context") is not None:
        body["context"] = event["context"]
    stats = {**event, "total_duration": total_ns}
    for key in _STATS:
        body[key] = int(stats.get(key) or 0)
    return body


def _ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class Generation:
    """One admitted generation job and the relay of its events to the client."""

    def __init__(self, services: Services, request: Request, job: GenerateJob, display_model: str):
        self.services = services
        self.request = request
        self.job = job
        self.model = display_model
        self._events: AsyncIterator[dict[str, Any]] | None = None
        self._done = False
        self._first_token_seen = False
        self._model_label = metrics.model_label(job.model)
        metrics.note_model(request, job.model)
        # What a non-streaming answer gathers besides its text.
        self.tool_calls: list[dict[str, Any]] = []
        self.logprobs: list[dict[str, Any]] = []

    async def _client_gone(self) -> bool:
        return await self.request.is_disconnected()

    async def admit(self, queue: str) -> None:
        await self.services.admission.admit(JOB_FUNC_GENERATE, self.job, queue)
        self._events = self.services.relay.events(self.job.job_id, self._client_gone)

    async def _next(self) -> dict[str, Any]:
        assert self._events is not None
        try:
            event = await anext(self._events)
        except StopAsyncIteration:
            event = {"type": "error", "status": 500, "error": "the event stream ended early"}
        self._observe(event)
        return event

    def _observe(self, event: dict[str, Any]) -> None:
        # Every event of every response shape passes through _next, so timing is taken here once.
        if event["type"] in ("token", "tool_call") and not self._first_token_seen:
            self._first_token_seen = True
            metrics.observe_first_token(self._model_label, self.job.admitted_ns)
        elif event["type"] in ("done", "error"):
            metrics.observe_end(self.request.url.path, self._model_label, self.job.admitted_ns, event)

    def abandon(self) -> None:
        """The client went away: withdraw the job if it still waits, else cancel it at the worker."""
        if self._done:
            return
        self._done = True
        task = asyncio.ensure_future(self._abandon())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _abandon(self) -> None:
        log.info(
            "client went away; cancelling", extra={"request_id": self.job.request_id, "job": self.job.job_id}
        )
        try:
            if not await self.services.admission.withdraw(self.job.job_id):
                await self.services.relay.cancel(self.job.job_id)
        except Exception:  # the client is gone; nothing to answer, only to log
            log.exception("could not cancel an abandoned job", extra={"request_id": self.job.request_id})

    def _total_ns(self) -> int:
        return max(time.time_ns() - self.job.admitted_ns, 0)

    # --- what differs between the native API and /v1 (OpenAIGeneration overrides these) --------------

    def error(self, status: int, message: str) -> Response:
        """An error answered before any output: Ollama's `{"error": ...}`."""
        return error_response(status, message)

    def complete(self, text: str, event: dict[str, Any]) -> Response:
        """The whole answer of a non-streaming request."""
        return JSONResponse(
            final_chunk(
                self.job.kind,
                self.model,
                event,
                text,
                self._total_ns(),
                tool_calls=self.tool_calls,
                logprobs=self.logprobs,
            )
        )

    def stream(self, first: dict[str, Any]) -> Response:
        """The streaming answer, starting with the first event."""
        return StreamingResponse(self._stream(self.job.kind, first), media_type="application/x-ndjson")

    # --- shared ------------------------------------------------------------------------------------

    async def respond(self, stream: bool) -> Response:
        """The HTTP response: the first event decides the status; then one object, or a stream."""
        try:
            first = await self._next()
        except asyncio.CancelledError:
            self.abandon()
            raise
        if first["type"] == "gone":
            self.abandon()
            return Response(status_code=499)
        if first["type"] == "error":
            self._done = True
            return self.error(int(first.get("status", 500)), str(first.get("error")))
        if stream:
            return self.stream(first)
        text, event = await self.gather(first)
        if event["type"] == "gone":
            return Response(status_code=499)
        if event["type"] == "error":
            return self.error(int(event.get("status", 500)), str(event.get("error")))
        return self.complete(text, event)

    async def gather(self, event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The text up to the terminal event (done, error, or "gone" when the client left), and that event."""
        parts: list[str] = []
        try:
            while event["type"] in ("token", "tool_call"):
                if event["type"] == "token":
                    parts.append(event["text"])
                    self.logprobs.extend(event.get("logprobs") or ())
                else:
                    self.tool_calls.append(event["call"])
                event = await self._next()
        except asyncio.CancelledError:
            self.abandon()
            raise
        if event["type"] == "gone":
            self.abandon()
        else:
            self._done = True
        return "".join(parts), event

    async def _stream(self, kind: Kind, event: dict[str, Any]) -> AsyncIterator[bytes]:
        try:
            while True:
                if event["type"] == "token":
                    yield _ndjson(chunk(kind, self.model, event["text"], logprobs=event.get("logprobs")))
                elif event["type"] == "tool_call":
                    yield _ndjson(chunk(kind, self.model, "", tool_calls=[event["call"]]))
                elif event["type"] == "done":
                    self._done = True
                    yield _ndjson(final_chunk(kind, self.model, event, "", self._total_ns()))
                    return
                elif event["type"] == "gone":
                    return
                else:
                    self._done = True
                    yield _ndjson({"error": str(event.get("error", "generation failed"))})
                    return
                event = await self._next()
        finally:
            # Reached without `done` only when the client disconnected mid-stream.
            self.abandon()


async def run_generation(
    services: Services,
    request: Request,
    job: GenerateJob,
    stored: StoredModel,
    display_model: str,
    stream: bool,
) -> Response:
    """Admit a generation job (placed by model) and answer with its output."""
    generation = Generation(services, request, job, display_model)
    queue = await services.workers.queue_for(stored)
    await generation.admit(queue)
    return await generation.respond(stream)
