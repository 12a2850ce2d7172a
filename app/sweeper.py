"""The sweeper: what a dead worker leaves in Redis goes back to the pool, and its running jobs end clearly.

It runs in every API process (a task of the app's lifespan), because the API is the one part every
deployment has (a worker-only host has no supervisor), and each of its steps is one atomic script, so
several API processes sweeping at once never move a job twice. Still, one round per interval is enough:
the API process that takes the round's lease (SWEEP_LEASE_KEY) sweeps and the others skip it, as its
Redis commands share the cores with the decode on a small server. Every SWEEP_INTERVAL_S:

- a worker whose state expired (its heartbeat stopped: killed, or cut off from Redis) loses its place in
  placement; the jobs waiting in its private queue go to the head of the shared queue in their order;
  the jobs its last state listed as running get an error event and their cancel flag, so that the
  worker, if it comes back (a network cut), stops them at its next decode step;
- a model queue nobody reads any more (its holders died or unloaded the model, its assignment lapsed)
  is moved to the head of the shared queue in its order, where any worker takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from pydantic import ValidationError

from herd.contracts import (
    EVENT_STREAM_TTL_S,
    KEY_PREFIX,
    MODEL_QUEUE_PREFIX,
    QUEUE_KEYS_SET,
    SHARED_QUEUE,
    WORKERS_SET,
    WorkerState,
    assigned_key,
    cancel_key,
    encode_event,
    events_key,
    model_queue_name,
    rq_queue_key,
    worker_last_key,
    worker_queue_name,
    worker_state_key,
)
from herd.queue_moves import MOVE_QUEUE, move_all_lua

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
# Held for most of an interval by the API process that sweeps this round.
SWEEP_LEASE_KEY = f"{KEY_PREFIX}sweep-lease"
# A worker known only by its last state (gone from the workers set) is found by scanning the keyspace,
# which grows with every request's keys: that look is taken every this many rounds, not every second.
SCAN_EVERY = 10
_LAST_PREFIX = worker_last_key("")
_REDIS_DOWN = (aioredis.ConnectionError, aioredis.TimeoutError)

# A dead worker, swept once: only the caller that gets its last state back does the rest.
# KEYS: its state, its last state, the workers set, its assignments, its queue, the shared queue, the set
# of queue keys. ARGV: its id, the shared queue's name. Returns nil when it is alive (or swept already),
# else {last state or false, moved}.
_SWEEP_WORKER = (
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return nil end
local last = redis.call('GET', KEYS[2])
local member = redis.call('SREM', KEYS[3], ARGV[1])
if not last and member == 0 then return nil end
redis.call('DEL', KEYS[2], KEYS[4])
"""
    + move_all_lua("KEYS[5]", "KEYS[6]", "KEYS[7]", "ARGV[2]")
    + "return {last or false, moved}\n"
)


class Sweeper:
    """Sweeps dead workers and unread model queues (see the module's docstring)."""

    def __init__(self, client: aioredis.Redis, interval_s: float = SWEEP_INTERVAL_S):
        self._client = client
        self._interval_s = interval_s
        self._sweep_worker = client.register_script(_SWEEP_WORKER)
        self._move = client.register_script(MOVE_QUEUE)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        rounds = 0
        while True:
            try:
                lease_ms = max(int(self._interval_s * 900), 1)
                if await self._client.set(SWEEP_LEASE_KEY, 1, nx=True, px=lease_ms):
                    await self.sweep(scan=rounds % SCAN_EVERY == 0)
                    rounds += 1
            except _REDIS_DOWN:
                pass  # the next round tries again; requests report the outage themselves
            except Exception:  # a sweep must never end the loop: log it, try again next round
                log.exception("sweep failed")
            await asyncio.sleep(self._interval_s)

    async def sweep(self, *, scan: bool = True) -> tuple[int, int]:
        """One round; returns (workers swept, model queues moved). `scan`: also look for workers known
        only by their last state."""
        ids = {str(i) for i in await self._client.smembers(WORKERS_SET)}
        if scan:
            async for key in self._client.scan_iter(match=_LAST_PREFIX + "*", count=100):
                ids.add(str(key).removeprefix(_LAST_PREFIX))
        swept = 0
        for worker_id in sorted(ids):
            if await self._sweep_one(worker_id):
                swept += 1
        return swept, await self._unread_model_queues()

    async def _sweep_one(self, worker_id: str) -> bool:
        keys = [
            worker_state_key(worker_id),
            worker_last_key(worker_id),
            WORKERS_SET,
            assigned_key(worker_id),
            rq_queue_key(worker_queue_name(worker_id)),
            rq_queue_key(SHARED_QUEUE),
            QUEUE_KEYS_SET,
        ]
        reply = await self._sweep_worker(keys=keys, args=[worker_id, SHARED_QUEUE])
        if reply is None:
            return False
        doc, moved = reply
        running: list[str] = []
        if doc:
            try:
                running = WorkerState.model_validate_json(doc).running
            except ValidationError:
                log.warning("unreadable last state of a dead worker", extra={"worker": worker_id})
        failed = await self._fail(worker_id, running)
        log.warning(
            "worker gone: its state expired",
            extra={"worker": worker_id, "requeued": int(moved), "failed": failed},
        )
        return True

    async def _fail(self, worker_id: str, running: list[str]) -> int:
        """An error event for each job the dead worker ran, and its cancel flag; returns how many failed."""
        message = f"the worker running this request ({worker_id}) stopped; please retry"
        failed = 0
        for job_id in running:
            # Set only where no one did yet: a client that left, or another sweep, already ended it.
            if await self._client.set(cancel_key(job_id), "1", nx=True, ex=EVENT_STREAM_TTL_S):
                pipe = self._client.pipeline(transaction=False)
                pipe.xadd(events_key(job_id), encode_event("error", status=500, error=message))  # type: ignore[arg-type]
                pipe.expire(events_key(job_id), EVENT_STREAM_TTL_S)
                await pipe.execute()
                failed += 1
        return failed

    async def _unread_model_queues(self) -> int:
        """Move the waiting jobs of model queues that no live worker reads to the shared queue."""
        prefix = rq_queue_key(MODEL_QUEUE_PREFIX)
        keys = sorted(
            str(k) for k in await self._client.smembers(QUEUE_KEYS_SET) if str(k).startswith(prefix)
        )
        if not keys:
            return 0
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        waiting = [key for key, n in zip(keys, await pipe.execute(), strict=True) if int(n)]
        if not waiting:
            return 0
        read = await self._read_queues()
        moved = 0
        for key in waiting:
            if key in read:
                continue
            n = int(
                await self._move(keys=[key, rq_queue_key(SHARED_QUEUE), QUEUE_KEYS_SET], args=[SHARED_QUEUE])
            )
            if n:
                moved += 1
                log.info(
                    "model queue unread: its jobs moved to the shared queue", extra={"queue": key, "jobs": n}
                )
        return moved

    async def _read_queues(self) -> set[str]:
        """The model queue keys some live worker reads: held models' and assigned ones."""
        ids = sorted(str(i) for i in await self._client.smembers(WORKERS_SET))
        if not ids:
            return set()
        pipe = self._client.pipeline(transaction=False)
        pipe.mget([worker_state_key(i) for i in ids])
        for worker_id in ids:
            pipe.smembers(assigned_key(worker_id))
        docs, *assigned = await pipe.execute()
        read: set[str] = set()
        for worker_id, doc, queues in zip(ids, docs, assigned, strict=True):
            if doc is None:
                continue  # dead: swept next round
            read.update(rq_queue_key(str(q)) for q in queues)
            try:
                state = WorkerState.model_validate_json(doc)
            except ValidationError:
                log.warning("unreadable worker state", extra={"worker": worker_id})
                continue
            read.update(rq_queue_key(model_queue_name(m.name)) for m in state.models)
        return read
