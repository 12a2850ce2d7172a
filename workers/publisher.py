"""Writes job events to their Redis Streams and reads cancel flags, one round trip per decode step."""

from __future__ import annotations

import logging
from typing import Any

import redis

from herd.contracts import EVENT_STREAM_TTL_S, EventType, cancel_key, encode_event, events_key

log = logging.getLogger(__name__)


class Publisher:
    """Batches a step's events for all sequences into one Redis pipeline."""

    def __init__(self, client: redis.Redis):
        self._client = client
        self._pending: list[tuple[str, EventType, dict[str, Any]]] = []

    def add(self, job_id: str, kind: EventType, **fields: Any) -> None:
        """Queue an event for the next flush."""
        self._pending.append((job_id, kind, fields))

    def flush(self, watch: list[str] | None = None) -> set[str]:
        """Send queued events; returns which of the `watch` job ids were cancelled by their clients."""
        watch = watch or []
        if not self._pending and not watch:
            return set()
        pipe = self._client.pipeline(transaction=False)
        touched: set[str] = set()
        for job_id, kind, fields in self._pending:
            key = events_key(job_id)
            pipe.xadd(key, encode_event(kind, **fields))  # type: ignore[arg-type]
            touched.add(key)
        # Every stream expires on its own, so one whose worker died mid-job never stays in Redis.
        for key in touched:
            pipe.expire(key, EVENT_STREAM_TTL_S)
        if watch:
            pipe.mget([cancel_key(j) for j in watch])
        self._pending.clear()
        results = pipe.execute()
        if not watch:
            return set()
        flags = results[-1]
        return {job_id for job_id, flag in zip(watch, flags, strict=True) if flag is not None}

    def send(self, job_id: str, kind: EventType, **fields: Any) -> None:
        """Publish one event now (used outside the decode loop)."""
        self.add(job_id, kind, **fields)
        self.flush()
