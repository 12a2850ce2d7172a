"""Model jobs on the API side: enqueue pull/push/create on `herd-models`, relay their progress to the client.

The store worker publishes Ollama's progress objects as "progress" events on the job's Redis Stream.
A streaming client gets each one as an NDJSON line; `"stream": false` gets the last one (`{"status":
"success"}`). As for generations, the first event decides the HTTP status: an error before any progress
is answered with its own status; later, a stream ends with an `{"error": ...}` line and a non-streamed
answer with the error's status. When the client goes away the job is withdrawn if still queued, else
its cancel flag is set and the store worker stops it.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from rq.job import Job

from app.errors import error_response
from app.job_follower import JobFollower, ndjson
from app.rq_jobs import new_job
from app.services import Services
from herd.contracts import MODELS_QUEUE, ModelJob, rq_queue_key


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


class ModelJobRun(JobFollower):
    """One enqueued model job and the relay of its progress to one client."""

    leased = False  # on herd-models, outside admission: no lease, no OLLAMA_MAX_QUEUE

    def __init__(self, services: Services, request: Request, job: ModelJob):
        super().__init__(services, request, job.job_id, job.request_id)
        self.job = job

    async def start(self, func: str) -> None:
        await enqueue(self.services.redis, func, self.job)
        self.follow()

    async def withdraw(self) -> bool:
        return await withdraw(self.services.redis, self.job_id)

    def describe(self) -> str:
        return f"the {self.job.kind} of {self.job.model}"

    async def respond(self, stream: bool) -> Response:
        """The HTTP response: the first event decides the status; then NDJSON, or the last object."""
        first = await self.first_event()
        if first is None:
            return Response(status_code=499)
        if first["type"] == "done":
            return (
                JSONResponse({"status": "success"})
                if not stream
                else Response(media_type="application/x-ndjson")
            )
        if first["type"] != "progress":
            status = int(first.get("status", 500))
            return error_response(status, str(first.get("error")), self.error_headers(status))
        if stream:
            return StreamingResponse(self.relay(first, _progress_lines), media_type="application/x-ndjson")
        return await self._last(first)

    async def _last(self, event: dict[str, Any]) -> Response:
        """Follow the job to its end; answer its last progress object (or its error)."""
        last: list[dict[str, Any]] = []
        end = await self.collect(event, lambda progress: last.append(progress["data"]))
        if end["type"] == "gone":
            return Response(status_code=499)
        if end["type"] == "done":
            return JSONResponse(last[-1])
        status = int(end.get("status", 500))
        return error_response(status, str(end.get("error")), self.error_headers(status))


def _progress_lines(event: dict[str, Any]) -> list[bytes]:
    if event["type"] == "progress":
        return [ndjson(event["data"])]
    if event["type"] == "done":
        return []  # the last progress object (`{"status": "success"}`) already said so
    return [ndjson({"error": str(event.get("error", "the model job failed"))})]


async def run_model_job(
    services: Services, request: Request, func: str, job: ModelJob, stream: bool
) -> Response:
    """Enqueue a model job and answer with its progress."""
    run = ModelJobRun(services, request, job)
    await run.start(func)
    return await run.respond(stream)
