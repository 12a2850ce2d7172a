"""Admission: put a job on an RQ queue only while fewer than OLLAMA_MAX_QUEUE jobs are waiting.

"Waiting" is admitted but not yet taken by a worker, i.e. the summed length of Herd's RQ queue lists.
The check and the push happen in one Lua script, so concurrent API processes can never overshoot.

Every admitted job gets a lease (`lease_key`) that the relay renews while its client waits for the first
event. A client is told to retry only after Redis has been unreachable for REDIS_OUTAGE_S, by which time
the lease has lapsed in Redis's own clock, so however the restart and the workers' reconnection race, a
worker that pops such a job finds no lease and drops it (workers/jobs.py). Jobs whose clients were told
to retry are also withdrawn and flagged once Redis answers again (`Abandonment`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from rq.job import Job

from app.errors import ServerBusy
from app.metrics import count_rejection
from app.rq_jobs import new_job
from herd.contracts import (
    EVENT_STREAM_TTL_S,
    MODELS_QUEUE,
    QUEUE_KEYS_SET,
    SHARED_QUEUE,
    EmbedJob,
    GenerateJob,
    cancel_key,
    lease_key,
    rq_queue_key,
)

log = logging.getLogger(__name__)

# How long a job keeps its place with nobody renewing its lease. app/relay.py renews it on every poll while
# the client waits, and tells the client to retry after REDIS_OUTAGE_S (30 s) of failed polls, which can
# be one poll (0.25 s) less of wall time since the last renewal. Shorter than that by a margin, so the
# lease has always lapsed by the time a client is told to retry.
LEASE_S = 29.0
_LEASE_MS = int(LEASE_S * 1000)
# While Redis is unreachable, how often the jobs to let go of are tried again.
_ABANDON_RETRY_S = 0.25
_REDIS_DOWN = (aioredis.ConnectionError, aioredis.TimeoutError)

# KEYS: the target queue list, the job hash, the set of queue keys, the job's lease.
# ARGV: max waiting, the job id, the lease in ms, then the job hash's field/value pairs.
# Returns the number waiting before the push, or -1 when the queue is full (nothing written).
_ADMIT = """
local waiting = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  waiting = waiting + redis.call('LLEN', key)
end
if waiting >= tonumber(ARGV[1]) then
  return -1
end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('SET', KEYS[4], '1', 'PX', ARGV[3])
redis.call('SADD', KEYS[3], KEYS[1])
redis.call('SADD', 'rq:queues', KEYS[1])
redis.call('RPUSH', KEYS[1], ARGV[2])
return waiting
"""

# Remove a job that is still waiting; returns 1 when it was removed (so no worker will ever see it).
_WITHDRAW = """
local removed = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  removed = removed + redis.call('LREM', key, 0, ARGV[1])
end
if removed > 0 then
  redis.call('DEL', KEYS[2])
end
return removed
"""

# Let go of a job whose client was told to retry: its cancel flag set (a worker that already took it stops
# at its next step), its lease dropped, and the job taken off whichever queue still holds it.
# KEYS: the set of queue keys, the model queue, the job hash, the cancel flag, the lease.
# ARGV: the job id, the cancel flag's TTL in seconds. Returns how many queue entries were removed.
_ABANDON = """
redis.call('SET', KEYS[4], '1', 'EX', ARGV[2])
redis.call('DEL', KEYS[5])
local removed = redis.call('LREM', KEYS[2], 0, ARGV[1])
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  removed = removed + redis.call('LREM', key, 0, ARGV[1])
end
if removed > 0 then
  redis.call('DEL', KEYS[3])
end
return removed
"""


class Abandonment:
    """Jobs whose clients were told to retry while Redis was unreachable, let go of once it answers again.

    One task per owner retries for all of them, so a long outage costs one attempt per interval, not one
    per request.
    """

    def __init__(self, client: aioredis.Redis):
        self._client = client
        self._script = client.register_script(_ABANDON)
        self._pending: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, job_id: str) -> None:
        """Let go of this job as soon as Redis answers (at once when it does now)."""
        self._pending.add(job_id)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self._pending:
            job_id = next(iter(self._pending))
            try:
                removed = await self._script(
                    keys=[
                        QUEUE_KEYS_SET,
                        rq_queue_key(MODELS_QUEUE),
                        Job.key_for(job_id),
                        cancel_key(job_id),
                        lease_key(job_id),
                    ],
                    args=[job_id, EVENT_STREAM_TTL_S],
                )
            except _REDIS_DOWN:
                await asyncio.sleep(_ABANDON_RETRY_S)
                continue
            self._pending.discard(job_id)
            log.info(
                "job let go: its client was told to retry while Redis was unreachable",
                extra={"job": job_id, "withdrawn": bool(removed)},
            )


class Admission:
    """Bounded, atomic enqueueing of Herd jobs onto RQ queues."""

    def __init__(self, client: aioredis.Redis, max_queue: int, retry_after_s: int):
        self._client = client
        self._max_queue = max_queue
        self._retry_after_s = retry_after_s
        self._admit = client.register_script(_ADMIT)
        self._withdraw = client.register_script(_WITHDRAW)
        self._abandoned = Abandonment(client)

    @property
    def max_queue(self) -> int:
        return self._max_queue

    def _rq_job(self, func: str, payload: GenerateJob | EmbedJob, queue: str) -> Job:
        return new_job(func, payload, payload.job_id, queue, f"{payload.model} {payload.request_id}")

    async def admit(self, func: str, payload: GenerateJob | EmbedJob, queue: str = SHARED_QUEUE) -> int:
        """Enqueue the job or raise ServerBusy; returns how many jobs were waiting ahead of it."""
        job = self._rq_job(func, payload, queue)
        flat: list[Any] = []
        for field, value in job.to_dict().items():
            flat.extend((field, value))
        try:
            waiting = int(
                await self._admit(
                    keys=[rq_queue_key(queue), job.key, QUEUE_KEYS_SET, lease_key(payload.job_id)],
                    args=[self._max_queue, payload.job_id, _LEASE_MS, *flat],
                )
            )
        except _REDIS_DOWN:
            # The script may have run before the connection broke: the client is told to retry (503), so
            # the job must not run if it did.
            self._abandoned.add(payload.job_id)
            raise
        if waiting < 0:
            count_rejection("queue_full")
            log.info("queue full, request refused", extra={"request_id": payload.request_id})
            raise ServerBusy(self._retry_after_s)
        return waiting

    async def withdraw(self, job_id: str) -> bool:
        """Take a still-waiting job off its queue; True when no worker can ever start it."""
        job_key = Job.key_for(job_id)
        removed = int(await self._withdraw(keys=[QUEUE_KEYS_SET, job_key], args=[job_id]))
        return removed > 0

    async def waiting(self) -> int:
        """Jobs admitted and not yet started, summed over Herd's queues."""
        keys = await self._client.smembers(QUEUE_KEYS_SET)
        if not keys:
            return 0
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        return sum(int(n) for n in await pipe.execute())
