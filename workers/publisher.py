"""Writes job events to their Redis Streams and reads cancel flags, one round trip per decode step."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from herd.contracts import EVENT_STREAM_TTL_S, EventType, cancel_key, encode_event, events_key

log = logging.getLogger(__name__)

# A stream's expiry is set when the publisher first writes to it and at its last event, and renewed
# this often in between: not on every token, which would double the commands of a decode step.
EXPIRE_RENEW_S = 60.0
_LAST_EVENTS = frozenset({"done", "error", "embedding"})


class Publisher:
    """Batches a step's events for all sequences into one Redis pipeline."""

    def __init__(self, client: redis.Redis):
        self._client = client
        self._pending: list[tuple[str, EventType, dict[str, Any]]] = []
        self._expiry_set: dict[str, float] = {}  # stream key -> when its expiry was last set (monotonic)

    def add(self, job_id: str, kind: EventType, **fields: Any) -> None:
        """Queue an event for the next flush."""
        self._pending.append((job_id, kind, fields))

    def flush(self, watch: list[str] | None = None) -> set[str]:
        """Send queued events; returns which of the `watch` job ids were cancelled by their clients."""
        watch = watch or []
        if not self._pending and not watch:
            return set()
        pipe = self._client.pipeline(transaction=False)
        now = time.monotonic()
        expire: set[str] = set()
        for job_id, kind, fields in self._pending:
            key = events_key(job_id)
            pipe.xadd(key, encode_event(kind, **fields))  # type: ignore[arg-type]
            if kind in _LAST_EVENTS:
                # The stream outlives its job by the whole TTL, so a slow reader still gets the end.
                self._expiry_set.pop(key, None)
                expire.add(key)
            elif now - self._expiry_set.get(key, -EXPIRE_RENEW_S) >= EXPIRE_RENEW_S:
                # Every stream expires on its own, so one whose worker died mid-job never stays in Redis.
                self._expiry_set[key] = now
                expire.add(key)
        for key in expire:
            pipe.expire(key, EVENT_STREAM_TTL_S)
        # A job cancelled before its last event leaves its entry; one older than the renewal interval
        # is renewed at its next event anyway, so those can go.
        if len(self._expiry_set) > 1024:
            self._expiry_set = {k: t for k, t in self._expiry_set.items() if now - t < EXPIRE_RENEW_S}
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
