"""Reading a job's event stream from Redis, and noticing when nobody will ever write to it again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from app.admission import LEASE_S, Abandonment
from app.event_streams import EventStreams, Subscription
from app.placement import WorkerDirectory
from herd.contracts import EVENT_STREAM_TTL_S, QUEUE_KEYS_SET, cancel_key, events_key, lease_key

log = logging.getLogger(__name__)

TERMINAL = frozenset({"done", "error", "embedding"})
# How long a follower waits for its next entry before it checks on the client and the worker.
POLL_MS = 250
# How long a request that has seen no event yet waits for Redis to come back before it fails. Its job
# is persisted in Redis's append-only file, so after a restart a worker still takes it; once this has
# passed, its lease (app/admission.py LEASE_S, no longer than this) has lapsed and no worker runs it.
REDIS_OUTAGE_S = 30.0
# After HERD_QUEUE_TIMEOUT, how long a job a worker popped (so it could not be withdrawn) gets to start.
_START_GRACE_S = 30.0
_REDIS_DOWN = (aioredis.ConnectionError, aioredis.TimeoutError)
# How often a job that has not started is looked for in the queues, and how many looks in a row must miss
# it: a worker's pop and RQ marking the job started are two calls, moments apart.
_LOST_CHECK_MS = 1000
_LOST_LOOKS = 2
# KEYS: the set of queue keys, the job's RQ hash. ARGV: the job id. 1 when RQ still calls the job queued
# (or lost its hash) though no queue holds it: a worker's pop took it, and the reply never reached the
# worker (Redis died or failed over right then), so nobody will ever run it.
_POPPED_AND_LOST = """
local status = redis.call('HGET', KEYS[2], 'status')
if status and status ~= 'queued' then return 0 end
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('LPOS', key, ARGV[1]) then return 0 end
end
return 1
"""
_LOST = "lost the connection to the queue (Redis) mid-request; the output may be incomplete, please retry"
_VANISHED = (
    "the queue (Redis) lost this request (a failover to a replica that never received it); please retry"
)
_UNREACHABLE = f"the queue (Redis) was unreachable for {REDIS_OUTAGE_S:g}s; please retry"


class EventRelay:
    """Yields a job's events in order until its terminal event."""

    def __init__(
        self,
        client: aioredis.Redis,
        workers: WorkerDirectory,
        worker_timeout_s: float,
        queue_timeout_s: float = 0.0,
        withdraw: Callable[[str], Awaitable[bool]] | None = None,
    ):
        self._client = client
        self._workers = workers
        self._worker_timeout_s = worker_timeout_s
        # A job no worker started within this long is withdrawn and failed (0: it waits for ever).
        self._queue_timeout_s = queue_timeout_s
        self._withdraw = withdraw
        self._streams = EventStreams(client)
        self._popped_and_lost = client.register_script(_POPPED_AND_LOST)
        # Jobs to cancel or withdraw once Redis answers again, however long it stays away.
        self._abandoned = Abandonment(client)

    async def events(
        self, job_id: str, client_gone: Callable[[], Awaitable[bool]] | None = None, *, leased: bool = True
    ) -> AsyncIterator[dict[str, Any]]:
        """Events of one job; a synthetic error event if its worker died or the client left first.

        `leased`: the job was admitted with a lease (app/admission.py), which is renewed here and whose
        loss, like the job's in a pop, means Redis lost the job. Model jobs have none.
        """
        subscription = self._streams.follow(events_key(job_id))
        try:
            async for event in self._events(job_id, subscription, client_gone, leased):
                yield event
        finally:
            self._streams.leave(subscription)

    async def _events(
        self,
        job_id: str,
        subscription: Subscription,
        client_gone: Callable[[], Awaitable[bool]] | None,
        leased: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        last = "0-0"
        quiet_ms = 0
        # The worker that started the job, and which start of that worker process (its incarnation).
        worker: str | None = None
        incarnation: str | None = None
        outage_ms = 0
        waited_ms = 0  # before the first event: time in the queue
        output_seen = False
        missed = 0  # looks in a row that found the waiting job in no queue
        while True:
            try:
                # Someone still waits for this job: renew its lease (see app/admission.py). Until its
                # output begins, as a worker without the model's files puts it back for another.
                if (
                    leased
                    and not output_seen
                    and not await self._client.pexpire(lease_key(job_id), int(LEASE_S * 1000))
                ):
                    # Only the API drops a lease, and it stops following the job when it does: a lease
                    # that is gone was lost by Redis itself (a Sentinel failover promoted a replica
                    # the job never reached). Nothing would ever answer, so the client is told now,
                    # and a worker that did pop the job before the failover is told to stop.
                    log.warning("job lost by redis: its lease is gone", extra={"job": job_id})
                    await self.cancel(job_id)
                    yield {"type": "error", "status": 503, "error": _VANISHED}
                    return
                entries = await subscription.read(POLL_MS / 1000)
            except _REDIS_DOWN as exc:
                if last != "0-0":
                    # The worker's events sent while Redis was away are gone: resuming would hand the
                    # client output with a hole in it, so the request fails clearly instead.
                    log.warning("redis lost mid-request: %s", exc, extra={"job": job_id})
                    self._cancel_when_back(job_id)
                    yield {"type": "error", "status": 503, "error": _LOST}
                    return
                outage_ms += POLL_MS
                if outage_ms >= REDIS_OUTAGE_S * 1000:
                    log.warning(
                        "redis unreachable for %gs; the client is told to retry",
                        REDIS_OUTAGE_S,
                        extra={"job": job_id},
                    )
                    self._abandon_when_back(job_id)
                    yield {"type": "error", "status": 503, "error": _UNREACHABLE}
                    return
                if client_gone is not None and await client_gone():
                    yield {"type": "gone"}
                    return
                await asyncio.sleep(POLL_MS / 1000)
                continue
            outage_ms = 0
            if not entries:
                quiet_ms += POLL_MS
                if client_gone is not None and await client_gone():
                    yield {"type": "gone"}
                    return
                if (
                    worker is not None
                    and quiet_ms >= self._worker_timeout_s * 1000
                    and not await self._workers.alive(worker, incarnation)
                ):
                    # Flagged, so that the worker stops it should it come back (a network cut, not a death).
                    await self.cancel(job_id)
                    yield {"type": "error", "status": 500, "error": "the worker running this request stopped"}
                    return
                if last == "0-0":
                    waited_ms += POLL_MS
                    if await self._never_started(job_id, waited_ms):
                        yield {"type": "error", "status": 503, "error": self._queue_timeout_message()}
                        return
                    if leased and waited_ms % _LOST_CHECK_MS == 0:
                        missed = missed + 1 if await self._lost_in_a_pop(job_id) else 0
                        if missed >= _LOST_LOOKS:
                            log.warning(
                                "job lost in a pop: in no queue, never started", extra={"job": job_id}
                            )
                            await self.cancel(job_id)
                            yield {"type": "error", "status": 503, "error": _VANISHED}
                            return
                continue
            quiet_ms = 0
            for entry_id, fields in entries:
                last = entry_id
                event: dict[str, Any] = json.loads(fields["e"])
                if event["type"] == "started":
                    worker = event.get("worker")
                    incarnation = event.get("incarnation")
                    continue
                output_seen = True
                yield event
                if event["type"] in TERMINAL:
                    # The stream expires by itself; deleting it early only saves memory.
                    with contextlib.suppress(*_REDIS_DOWN):
                        await self._client.delete(subscription.key)
                    return

    async def close(self) -> None:
        """Stop the process's event reader (the app's shutdown)."""
        await self._streams.close()

    async def _never_started(self, job_id: str, waited_ms: int) -> bool:
        """True when the job waited past HERD_QUEUE_TIMEOUT and was withdrawn (no worker can start it now)."""
        if not self._queue_timeout_s or self._withdraw is None or waited_ms < self._queue_timeout_s * 1000:
            return False
        if await self._withdraw(job_id):
            log.warning("job never started: withdrawn", extra={"job": job_id, "waited_s": waited_ms / 1000})
            return True
        # A worker took it just now: its "started" comes within moments. One that never comes (the worker
        # died between its pop and its first event) fails after a grace, flagged so it never starts.
        if waited_ms >= (self._queue_timeout_s + _START_GRACE_S) * 1000:
            await self.cancel(job_id)
            return True
        return False

    async def _lost_in_a_pop(self, job_id: str) -> bool:
        return bool(await self._popped_and_lost(keys=[QUEUE_KEYS_SET, f"rq:job:{job_id}"], args=[job_id]))

    def _queue_timeout_message(self) -> str:
        return (
            f"no worker started the request within HERD_QUEUE_TIMEOUT={self._queue_timeout_s:g}s; "
            "please retry (are any workers running?)"
        )

    def _cancel_when_back(self, job_id: str) -> None:
        """Cancel a job its client was told had failed, as soon as Redis answers again.

        Otherwise the worker would decode it to the end for nobody, holding a slot the jobs queued
        behind it wait for. No deadline: after a long outage the job would still run for nobody.
        """
        self._abandoned.add(job_id)

    def _abandon_when_back(self, job_id: str) -> None:
        """Withdraw (or cancel) a job whose client was told to retry, as soon as Redis answers again.

        Its lease has lapsed by now, so no worker starts it (workers/jobs.py); this also takes it off its
        queue, where it would count against OLLAMA_MAX_QUEUE until a worker dropped it.
        """
        self._abandoned.add(job_id)

    async def cancel(self, job_id: str) -> None:
        """Tell the worker to stop this job at its next decode step (its client went away)."""
        await self._client.set(cancel_key(job_id), "1", ex=EVENT_STREAM_TTL_S)
