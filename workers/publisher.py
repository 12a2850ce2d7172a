"""Writes job events to their Redis Streams and reads cancel flags, one round trip per decode step.

`flush` waits for Redis's answer (the publishing thread's, and the main thread's for one-off events).
`post` does not: it sends a step's commands on a connection of its own and reads the answers that came in
since, so a decode thread that publishes between its steps (workers/decode_loop.py) never waits on Redis;
`collect` reads those answers without sending anything. A cancel flag is then seen one step later.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import redis
from redis.connection import Connection

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
        # `post`'s connection, and for each post not yet answered: how many answers, and the watched jobs
        # whose cancel flags its last answer holds.
        self._connection: Connection | None = None
        self._unanswered: deque[tuple[int, list[str]]] = deque()

    def add(self, job_id: str, kind: EventType, **fields: Any) -> None:
        """Queue an event for the next flush."""
        self._pending.append((job_id, kind, fields))

    def _commands(self, watch: list[str]) -> list[tuple[Any, ...]]:
        """The queued events' commands (with their streams' expiries), then the cancel flags' MGET."""
        now = time.monotonic()
        commands: list[tuple[Any, ...]] = []
        expire: set[str] = set()
        for job_id, kind, fields in self._pending:
            key = events_key(job_id)
            commands.append(("XADD", key, "*", *_flat(encode_event(kind, **fields))))
            if kind in _LAST_EVENTS:
                # The stream outlives its job by the whole TTL, so a slow reader still gets the end.
                self._expiry_set.pop(key, None)
                expire.add(key)
            elif now - self._expiry_set.get(key, -EXPIRE_RENEW_S) >= EXPIRE_RENEW_S:
                # Every stream expires on its own, so one whose worker died mid-job never stays in Redis.
                self._expiry_set[key] = now
                expire.add(key)
        commands += [("EXPIRE", key, EVENT_STREAM_TTL_S) for key in expire]
        # A job cancelled before its last event leaves its entry; one older than the renewal interval
        # is renewed at its next event anyway, so those can go.
        if len(self._expiry_set) > 1024:
            self._expiry_set = {k: t for k, t in self._expiry_set.items() if now - t < EXPIRE_RENEW_S}
        if watch:
            commands.append(("MGET", *[cancel_key(j) for j in watch]))
        self._pending.clear()
        return commands

    def flush(self, watch: list[str] | None = None) -> set[str]:
        """Send queued events; returns which of the `watch` job ids were cancelled by their clients."""
        watch = watch or []
        if not self._pending and not watch:
            return set()
        pipe = self._client.pipeline(transaction=False)
        for command in self._commands(watch):
            pipe.execute_command(*command)
        results = pipe.execute()
        if not watch:
            return set()
        return _cancelled(watch, results[-1])

    def post(self, watch: list[str] | None = None) -> set[str]:
        """Send queued events without waiting; returns the watched jobs found cancelled in the answers
        to earlier posts that have arrived. Raises redis.RedisError (the connection is then dropped)."""
        try:
            cancelled = self._read_answers()
            watch = watch or []
            if not self._pending and not watch:
                return cancelled
            commands = self._commands(watch)
            if self._connection is None:
                self._connection = self._client.connection_pool.get_connection()
            # No health check: a PING would wait for its answer; a dead connection fails the send instead.
            self._connection.send_packed_command(self._connection.pack_commands(commands), check_health=False)
            self._unanswered.append((len(commands), watch))
            return cancelled
        except redis.RedisError:
            self._drop_connection()
            raise

    def collect(self) -> set[str]:
        """The watched jobs found cancelled in the answers to earlier posts that have arrived; sends
        nothing. Raises redis.RedisError (the connection is then dropped)."""
        try:
            return self._read_answers()
        except redis.RedisError:
            self._drop_connection()
            raise

    def _read_answers(self) -> set[str]:
        """The answers that have arrived (never waiting for one that has not begun to)."""
        cancelled: set[str] = set()
        connection = self._connection
        while connection is not None and self._unanswered and connection.can_read(timeout=0):
            count, watch = self._unanswered.popleft()
            for i in range(count):
                try:
                    answer = connection.read_response()
                except redis.ResponseError as exc:  # one command's error; the connection is still in step
                    log.warning("redis refused an event command: %s", exc)
                    continue
                if watch and i == count - 1:
                    cancelled |= _cancelled(watch, answer)
        return cancelled

    def _drop_connection(self) -> None:
        self._unanswered.clear()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.disconnect()
            self._client.connection_pool.release(connection)

    def send(self, job_id: str, kind: EventType, **fields: Any) -> None:
        """Publish one event now (used outside the decode loop)."""
        self.add(job_id, kind, **fields)
        self.flush()


def _flat(fields: dict[str, Any]) -> list[Any]:
    return [x for pair in fields.items() for x in pair]


def _cancelled(watch: list[str], flags: list[Any]) -> set[str]:
    return {job_id for job_id, flag in zip(watch, flags, strict=True) if flag is not None}
