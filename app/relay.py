"""Reading a job's event stream from Redis, and noticing when nobody will ever write to it again."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from app.contracts import EVENT_STREAM_TTL_S, cancel_key, events_key
from app.placement import WorkerDirectory

log = logging.getLogger(__name__)

TERMINAL = frozenset({"done", "error", "embedding"})
# How long one XREAD blocks before the relay checks on the client and the worker.
POLL_MS = 250


class EventRelay:
    """Yields a job's events in order until its terminal event."""

    def __init__(self, client: aioredis.Redis, workers: WorkerDirectory, worker_timeout_s: float):
        self._client = client
        self._workers = workers
        self._worker_timeout_s = worker_timeout_s

    async def events(
        self, job_id: str, client_gone: Callable[[], Awaitable[bool]] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Events of one job; a synthetic error event if its worker died or the client left first."""
        key = events_key(job_id)
        last = "0-0"
        quiet_ms = 0
        worker: str | None = None
        while True:
            # RESP2 reply shape, with decoded responses: [(stream, [(entry_id, fields), ...])].
            reply: list[tuple[str, list[tuple[str, dict[str, str]]]]] = await self._client.xread(  # type: ignore[assignment]
                {key: last}, block=POLL_MS, count=512
            )
            if not reply:
                quiet_ms += POLL_MS
                if client_gone is not None and await client_gone():
                    yield {"type": "gone"}
                    return
                if (
                    worker is not None
                    and quiet_ms >= self._worker_timeout_s * 1000
                    and not await self._workers.alive(worker)
                ):
                    yield {"type": "error", "status": 500, "error": "the worker running this request stopped"}
                    return
                continue
            quiet_ms = 0
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    last = entry_id
                    event: dict[str, Any] = json.loads(fields["e"])
                    if event["type"] == "started":
                        worker = event.get("worker")
                        continue
                    yield event
                    if event["type"] in TERMINAL:
                        await self._client.delete(key)
                        return

    async def cancel(self, job_id: str) -> None:
        """Tell the worker to stop this job at its next decode step (its client went away)."""
        await self._client.set(cancel_key(job_id), "1", ex=EVENT_STREAM_TTL_S)
