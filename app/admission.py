"""Admission: put a job on an RQ queue only while fewer than OLLAMA_MAX_QUEUE jobs are waiting.

"Waiting" is admitted but not yet taken by a worker, i.e. the summed length of Herd's RQ queue lists.
The check and the push happen in one Lua script, so concurrent API processes can never overshoot.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from rq.job import Job

from app.contracts import (
    QUEUE_KEYS_SET,
    SHARED_QUEUE,
    EmbedJob,
    GenerateJob,
    rq_queue_key,
)
from app.errors import ServerBusy
from app.metrics import count_rejection
from app.rq_jobs import new_job

log = logging.getLogger(__name__)

# KEYS: the target queue list, the job hash, the set of queue keys.
# ARGV: max waiting, the job id, then the job hash's field/value pairs.
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
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
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


class Admission:
    """Bounded, atomic enqueueing of Herd jobs onto RQ queues."""

    def __init__(self, client: aioredis.Redis, max_queue: int, retry_after_s: int):
        self._client = client
        self._max_queue = max_queue
        self._retry_after_s = retry_after_s
        self._admit = client.register_script(_ADMIT)
        self._withdraw = client.register_script(_WITHDRAW)

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
        waiting = int(
            await self._admit(
                keys=[rq_queue_key(queue), job.key, QUEUE_KEYS_SET],
                args=[self._max_queue, payload.job_id, *flat],
            )
        )
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
