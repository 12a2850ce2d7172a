"""Model jobs on the API side: enqueue pull/push/create on `herd-models`, relay their progress to the client.

The store worker publishes Ollama's progress objects as "progress" events on the job's Redis Stream.
A streaming client gets each one as an NDJSON line; `"stream": false` gets the last one (`{"status":
"success"}`). As for generations, the first event decides the HTTP status: an error before any progress
is answered with its own status; later, a stream ends with an `{"error": ...}` line and a non-streamed
answer with the error's status. When the client goes away the job is withdrawn if still queued, else
its cancel flag is set and the store worker stops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from rq.job import Job

from app.contracts import MODELS_QUEUE, ModelJob, rq_queue_key
from app.errors import error_response
from app.rq_jobs import new_job
from app.services import Services

log = logging.getLogger(__name__)

# A client that stops reading a non-streamed answer is noticed within this long, even while progress flows.
DISCONNECT_POLL_S = 0.5
_background: set[asyncio.Task[None]] = set()


async def enqueue(client: aioredis.Redis, func: str, job: ModelJob) -> None:
    """Put a model job on `herd-models` (no MAX_QUEUE bound: downloads must not block inference)."""
    rq_job = new_job(func, job, job.job_id, MODELS_QUEUE, f"{job.kind} {job.model} {job.request_id}")
    pipe = client.pipeline(transaction=True)
    pipe.hset(rq_job.key, mapping=rq_job.to_dict())
    pipe.sadd("rq:queues", rq_queue_key(MODELS_QUEUE))
    pipe.rpush(rq_queue_key(MODELS_QUEUE), job.job_id)
    await pipe.execute()


async def withdraw(client: aioredis.Redis, job_id: str) -> bool:
    """Take a still-queued model job off the queue; True when the store worker will never start it."""
    removed = int(await client.lrem(rq_queue_key(MODELS_QUEUE), 0, job_id))
    if removed:
        await client.delete(Job.key_for(job_id))
    return removed > 0


def _ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class ModelJobRun:
    """One enqueued model job and the relay of its progress to one client."""

    def __init__(self, services: Services, request: Request, job: ModelJob):
        self.services = services
        self.request = request
        self.job = job
        self._events: AsyncIterator[dict[str, Any]] | None = None
        self._done = False

    async def start(self, func: str) -> None:
        await enqueue(self.services.redis, func, self.job)
        self._events = self.services.relay.events(self.job.job_id, self.request.is_disconnected)

    async def _next(self) -> dict[str, Any]:
        assert self._events is not None
        try:
            return await anext(self._events)
        except StopAsyncIteration:
            return {"type": "error", "status": 500, "error": "the event stream ended early"}

    def abandon(self) -> None:
        """The client went away: withdraw the job if it still waits, else ask the store worker to stop."""
        if self._done:
            return
        self._done = True
        task = asyncio.ensure_future(self._abandon())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _abandon(self) -> None:
        extra = {"request_id": self.job.request_id, "job": self.job.job_id}
        log.info("client went away; cancelling the %s of %s", self.job.kind, self.job.model, extra=extra)
        try:
            if not await withdraw(self.services.redis, self.job.job_id):
                await self.services.relay.cancel(self.job.job_id)
        except Exception:  # the client is gone; nothing to answer, only to log
            log.exception("could not cancel an abandoned model job", extra=extra)

    async def respond(self, stream: bool) -> Response:
        """The HTTP response: the first event decides the status; then NDJSON, or the last object."""
        try:
            first = await self._next()
        except asyncio.CancelledError:
            self.abandon()
            raise
        if first["type"] == "gone":
            self.abandon()
            return Response(status_code=499)
        if first["type"] != "progress":
            self._done = True
            if first["type"] == "done":
                return JSONResponse({"status": "success"}) if not stream else self._stream_of([])
            return error_response(int(first.get("status", 500)), str(first.get("error")))
        if stream:
            return StreamingResponse(self._stream(first), media_type="application/x-ndjson")
        return await self._last(first)

    def _stream_of(self, objs: list[dict[str, Any]]) -> Response:
        return Response(b"".join(_ndjson(o) for o in objs), media_type="application/x-ndjson")

    async def _last(self, event: dict[str, Any]) -> Response:
        """Follow the job to its end while checking that the client is still there; answer its last object."""
        last: dict[str, Any] = event["data"]
        checked = time.monotonic()
        try:
            while True:
                event = await self._next()
                if event["type"] != "progress":
                    break
                last = event["data"]
                if time.monotonic() - checked >= DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await self.request.is_disconnected():
                        event = {"type": "gone"}
                        break
        except asyncio.CancelledError:
            self.abandon()
            raise
        if event["type"] == "gone":
            self.abandon()
            return Response(status_code=499)
        self._done = True
        if event["type"] == "done":
            return JSONResponse(last)
        return error_response(int(event.get("status", 500)), str(event.get("error")))

    async def _stream(self, event: dict[str, Any]) -> AsyncIterator[bytes]:
        try:
            while True:
                if event["type"] == "progress":
                    yield _ndjson(event["data"])
                elif event["type"] == "done":
                    self._done = True
                    return
                elif event["type"] == "gone":
                    return
                else:
                    self._done = True
                    yield _ndjson({"error": str(event.get("error", "the model job failed"))})
                    return
                event = await self._next()
        finally:
            # Reached without the end of the job only when the client disconnected mid-stream.
            self.abandon()


async def run_model_job(
    services: Services, request: Request, func: str, job: ModelJob, stream: bool
) -> Response:
    """Enqueue a model job and answer with its progress."""
    run = ModelJobRun(services, request, job)
    await run.start(func)
    return await run.respond(stream)
