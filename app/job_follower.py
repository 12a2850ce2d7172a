"""The API's side of one queued job: reading its events for one client, and letting go of it when the
client leaves.

Generations (native and /v1) and model jobs (pull, push, create) differ in how they render events,
not in how they follow them: the first event decides the HTTP status, a stream ends at the job's
terminal event, and a client that goes away first gets its job withdrawn from the queue if it still
waits there, else cancelled at the worker that runs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from fastapi import Request

from app.disconnect import DisconnectWatch
from app.services import Services

log = logging.getLogger(__name__)

# Cancellations still under way for clients that left; held here so they are not garbage-collected.
_background: set[asyncio.Task[None]] = set()

Event = dict[str, Any]
# Events that carry output; any other ends the job (done, error) or the following ("gone").
OUTPUT = frozenset({"token", "thinking", "tool_call", "progress"})
# A client that stops waiting for a non-streamed answer is noticed within this long, even while the job
# keeps producing events (the relay itself only asks when the stream goes quiet).
DISCONNECT_POLL_S = 0.5


def ndjson(obj: dict[str, Any]) -> bytes:
    """One NDJSON line, compact and UTF-8 as Ollama writes them."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class JobFollower:
    """Follows one job's event stream on behalf of one HTTP client."""

    # Whether the job was admitted with a lease (app/admission.py): model jobs are not.
    leased = True

    def __init__(self, services: Services, request: Request, job_id: str, request_id: str):
        self.services = services
        self.request = request
        self.job_id = job_id
        self.request_id = request_id
        self._events: AsyncIterator[Event] | None = None
        self._done = False
        self.client_gone = DisconnectWatch(request)

    def follow(self) -> None:
        """Start reading the job's events (once it is on its queue)."""
        self._events = self.services.relay.events(self.job_id, self.client_gone, leased=self.leased)

    def error_headers(self, status: int) -> dict[str, str] | None:
        """Headers of an error answer: a 503 ("please retry") says when, as admission's 503 does."""
        return {"Retry-After": str(self.services.settings.retry_after_s)} if status == 503 else None

    def observe(self, event: Event) -> None:
        """Called with every event as it arrives (generations take their timing metrics here)."""

    async def withdraw(self) -> bool:
        """Take the job off its queue; True when no worker will ever start it."""
        raise NotImplementedError

    async def next_event(self) -> Event:
        """The job's next event; once it is the job's last (done, error), there is nothing to let go of."""
        assert self._events is not None, "follow() first"
        try:
            event = await anext(self._events)
        except StopAsyncIteration:
            event = {"type": "error", "status": 500, "error": "the event stream ended early"}
        if event["type"] not in OUTPUT and event["type"] != "gone":
            self._done = True
            self.client_gone.close()
        self.observe(event)
        return event

    async def first_event(self) -> Event | None:
        """The job's first event, or None when the client left before it (the job is then let go)."""
        try:
            first = await self.next_event()
        except asyncio.CancelledError:
            self.abandon()
            raise
        if first["type"] == "gone":
            self.abandon()
            return None
        return first

    async def relay(self, first: Event, render: Callable[[Event], Iterable[bytes]]) -> AsyncIterator[bytes]:
        """The rendered events from `first` to the terminal one; lets the job go if the client leaves."""
        event = first
        try:
            while event["type"] != "gone":
                for piece in render(event):
                    yield piece
                if event["type"] not in OUTPUT:
                    return
                event = await self.next_event()
        finally:
            # Reached without the terminal event only when the client disconnected mid-stream.
            self.abandon()

    async def collect(self, event: Event, take: Callable[[Event], None]) -> Event:
        """Hands `event` and each output event after it to `take`; returns the terminal event, or
        {"type": "gone"} when the client left first (the job is then let go)."""
        checked = time.monotonic()
        try:
            while event["type"] in OUTPUT:
                take(event)
                if time.monotonic() - checked >= DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await self.client_gone():
                        event = {"type": "gone"}
                        break
                event = await self.next_event()
        except asyncio.CancelledError:
            self.abandon()
            raise
        if event["type"] == "gone":
            self.abandon()
        return event

    def abandon(self) -> None:
        """The client went away: withdraw the job if it still waits, else cancel it at its worker."""
        self.client_gone.close()
        if self._done:
            return
        self._done = True
        task = asyncio.ensure_future(self._abandon())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _abandon(self) -> None:
        extra = {"request_id": self.request_id, "job": self.job_id}
        log.info("client went away; cancelling %s", self.describe(), extra=extra)
        try:
            if not await self.withdraw():
                await self.services.relay.cancel(self.job_id)
        except Exception:  # the client is gone; nothing to answer, only to log
            log.exception("could not cancel an abandoned job", extra=extra)

    def describe(self) -> str:
        """What the job is, for the log line when its client leaves."""
        return "the job"
