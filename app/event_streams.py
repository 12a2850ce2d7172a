"""One blocking XREAD per API process for the event streams of every job the process follows.

With a blocked XREAD of its own, each streaming request costs Redis a command and a wake-up per token, and
the API one more: at 8 streams on 2 cores that relay work is taken straight from the decode threads. Here one
reader task waits on all followed streams at once, so a decode step that made a token for each of this
process's requests costs one XREAD, one reply and one wake-up, and each request is handed its own entries.

A request that starts following while the reader is blocked wakes it with an entry on this process's wake
stream (``herd:wake:<id>``, read from its last id, so a wake sent just before the XREAD still counts), and
the reader's next XREAD includes it. The reader talks to a connection of its own directly (held while
anything is followed): redis-py's per-command path (pool checkout, retry wrapper, reply callbacks) cost
more CPU per token than the read itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

log = logging.getLogger(__name__)

# An entry of a stream: its id and its fields.
Entry = tuple[str, dict[str, str]]
REDIS_DOWN: tuple[type[Exception], ...] = (aioredis.ConnectionError, aioredis.TimeoutError)
# How long one XREAD blocks when nothing comes: only bounds how late the reader notices a dead connection
# that raised nothing, since a new follower wakes it at once.
BLOCK_MS = 5000
# How long past the block a reply may take before the connection counts as dead.
_READ_MARGIN_S = 5.0
# Entries read per stream in one XREAD; a stream with more is read on at once.
COUNT = 512
# After a failed read, how long the reader waits before it tries Redis again.
RETRY_S = 0.25
# The wake stream keeps a few entries (only its last id matters) and disappears an hour after its last wake
# if its process dies without deleting it.
_WAKE_MAXLEN = 8
_WAKE_TTL_MS = 3_600_000


class Subscription:
    """One job's place in the reader: the entries read for it and not yet taken, or the reader's error."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.last = "0-0"  # the id after which the reader reads this stream next
        self._entries: list[Entry] = []
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, entries: list[Entry]) -> None:
        """The reader read these entries for this stream."""
        self.last = entries[-1][0]
        self._entries.extend(entries)
        self._error = None
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The reader's read failed: ``read`` raises ``error`` until one succeeds."""
        self._error = error
        self._wake()

    def recovered(self) -> None:
        """A read succeeded again after failures."""
        self._error = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, timeout_s: float) -> list[Entry]:
        """The entries read since the last call, waiting up to ``timeout_s`` for some ([] if none came).

        Raises the reader's Redis error while its reads fail (Redis down or unreachable).
        """
        if not self._entries and self._error is None:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout_s, _settle, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self._entries:
            entries, self._entries = self._entries, []
            return entries
        if self._error is not None:
            raise self._error
        return []


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class EventStreams:
    """The process's reader of followed event streams (start it lazily: the first follow does)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._subscriptions: dict[str, Subscription] = {}
        self._wake_key = f"herd:wake:{uuid.uuid4().hex}"
        self._wake_last = "0-0"
        self._changed = asyncio.Event()
        self._blocked = False  # an XREAD is out: a new follower must wake it
        self._task: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None
        self._error: BaseException | None = None  # the last read's, until one succeeds
        self._wakes: set[asyncio.Task[None]] = set()

    def follow(self, key: str) -> Subscription:
        """Start reading stream ``key`` from its first entry; call ``leave`` when done with it."""
        if key in self._subscriptions:
            raise ValueError(f"stream {key} is already followed")
        subscription = Subscription(key)
        if self._error is not None:
            subscription.fail(self._error)
        self._subscriptions[key] = subscription
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="event-streams")
        self._changed.set()
        if self._blocked:
            self._send_wake()
        return subscription

    def leave(self, subscription: Subscription) -> None:
        """Stop reading the subscription's stream (entries the reader has in flight for it are dropped)."""
        if self._subscriptions.get(subscription.key) is subscription:
            del self._subscriptions[subscription.key]
            if not self._subscriptions and self._blocked:
                # The last one: end the read now, after the answer is out, so the next request to follow
                # finds the reader idle and waits for no wake of its own before its first read.
                self._send_wake()

    def _send_wake(self) -> None:
        task = asyncio.create_task(self._wake())
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def _wake(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(self._wake_key, {"w": "1"}, maxlen=_WAKE_MAXLEN, approximate=False)
        pipe.pexpire(self._wake_key, _WAKE_TTL_MS)
        try:
            await pipe.execute()
        except REDIS_DOWN as exc:
            # The reader's own read fails the same way and its followers are told; nothing to add.
            log.debug("could not wake the event reader: %s", exc)

    async def _run(self) -> None:
        while True:
            if not self._subscriptions:
                # The connection stays open (no command out); a send that finds it dead reconnects.
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
            subscriptions = list(self._subscriptions.values())
            keys = [self._wake_key, *(s.key for s in subscriptions)]
            ids = [self._wake_last, *(s.last for s in subscriptions)]
            # From here a new follower is missing from this read, so it must wake it (set before any await).
            self._blocked = True
            try:
                await self._send_xread(keys, ids)
                if self._error is not None:
                    # Redis answers again (the command went out on a live connection).
                    self._error = None
                    for subscription in self._subscriptions.values():
                        subscription.recovered()
                streams = _by_stream(await self._read_reply())
            except Exception as exc:  # the reader must outlive any failure: its followers are told instead
                self._blocked = False
                await self._drop_connection()
                if not isinstance(exc, REDIS_DOWN):
                    log.exception("reading event streams failed")
                    exc = aioredis.ConnectionError(f"reading the job's events failed: {exc}")
                self._error = exc
                for subscription in list(self._subscriptions.values()):
                    subscription.fail(exc)
                await asyncio.sleep(RETRY_S)
                continue
            self._dispatch(streams)

    async def _send_xread(self, keys: list[str], ids: list[str]) -> None:
        command = ("XREAD", "COUNT", COUNT, "BLOCK", BLOCK_MS, "STREAMS", *keys, *ids)
        if self._connection is not None:
            try:
                # No health check: its PING's reconnect would skip Sentinel's discovery of the master.
                await self._connection.send_command(*command, check_health=False)
                return
            except REDIS_DOWN:
                # Kept open while idle, it may have died meanwhile (a restart): one new try at once.
                await self._drop_connection()
        self._connection = await self._connect()
        await self._connection.send_command(*command, check_health=False)

    async def _connect(self) -> AbstractConnection:
        """A connection of the reader's own, made with the pool's settings (TLS, credentials, Sentinel's
        master) but never in the pool. With no socket timeout a send is one write, without the wait_for a
        timeout needs (a task per send, and on Python 3.11 one that can swallow a cancellation); a dead
        connection shows in the read's own timeout (`_read_reply`)."""
        connection = self._client.connection_pool.make_connection()
        connection.socket_timeout = None
        # connect(), not the first send's implicit connect: only connect() asks Sentinel for the master.
        await connection.connect()
        return connection

    async def _read_reply(self) -> Any:
        assert self._connection is not None, "_send_xread first"
        try:
            # Past the block and a margin the connection is dead (a cut that closed nothing): the reader's
            # connection has no socket timeout of its own.
            async with asyncio.timeout(BLOCK_MS / 1000 + _READ_MARGIN_S):
                return await self._connection.read_response(timeout=math.inf)
        except TimeoutError as exc:
            raise aioredis.TimeoutError("no reply to a blocking XREAD past its block") from exc
        finally:
            self._blocked = False

    def _dispatch(self, streams: list[tuple[str, list[Any]]]) -> None:
        """Hands each stream's entries ([[id, [field, value, ...]], ...]) to its subscription."""
        for key, raw_entries in streams:
            if key == self._wake_key:
                self._wake_last = raw_entries[-1][0]
                continue
            subscription = self._subscriptions.get(key)
            if subscription is None:
                continue  # left while this read was out
            entries = [(entry_id, _fields(flat)) for entry_id, flat in raw_entries]
            subscription.deliver(entries)

    async def _drop_connection(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            with contextlib.suppress(*REDIS_DOWN):
                await connection.disconnect()

    async def close(self) -> None:
        """Stop the reader and delete the wake stream (the app's shutdown)."""
        task, self._task = self._task, None
        # Cancelled again until it ends: on Python 3.11 a cancellation that lands just as an inner
        # wait_for completes is lost (seen with redis-py's send on a connection with a socket timeout).
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        await self._drop_connection()
        for wake in list(self._wakes):
            wake.cancel()
        await asyncio.gather(*self._wakes, return_exceptions=True)
        with contextlib.suppress(*REDIS_DOWN):
            await self._client.delete(self._wake_key)


def _by_stream(reply: Any) -> list[tuple[str, list[Any]]]:
    """XREAD's reply as (stream, entries) pairs: a map in RESP3, [[stream, entries], ...] in RESP2, None
    when the block ran out."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply.items())
    return [(key, entries) for key, entries in reply]


def _fields(flat: list[str] | None) -> dict[str, str]:
    """A stream entry's fields from RESP2's flat [field, value, ...] list."""
    if not flat:
        return {}
    it = iter(flat)
    return dict(zip(it, it, strict=True))
