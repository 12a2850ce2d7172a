"""Whether a request's client has gone away, asked as often as a relay likes.

Starlette's Request.is_disconnected peeks at `receive` in an anyio cancel scope that it cancels at once,
and the cancellation formats the running task's repr for its message: a few milliseconds of CPU a call
(measured), on the cores the decode needs. A watch instead keeps one `receive()` pending in a task and reads
its outcome; the server completes it with `http.disconnect` when the client leaves or the response
ends, so no task outlives the request.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import Request
from starlette.types import Message


class DisconnectWatch:
    """An awaitable `client_gone()` for one request (see the module's docstring)."""

    def __init__(self, request: Request):
        self._request = request
        self._pending: asyncio.Task[Message] | None = None
        self._gone = False

    async def __call__(self) -> bool:
        if self._gone:
            return True
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._request.receive())
            await asyncio.sleep(0)  # a disconnect already received is seen now, not at the next look
        if not self._pending.done():
            return False
        task, self._pending = self._pending, None
        message: Message = {"type": "http.disconnect"}
        with contextlib.suppress(Exception):  # the server's receive failing: the connection is gone
            message = task.result()
        self._gone = message.get("type") == "http.disconnect"
        return self._gone

    def close(self) -> None:
        """Stop watching (the request is over)."""
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        self._pending = None
