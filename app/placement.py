"""The worker directory: what each live worker advertises, and which queue a job should go to.

Placement is only an optimisation (any worker can load any model): a job for a model some worker holds
goes to that worker's queue, everything else to the shared queue.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from pydantic import ValidationError

from app.contracts import SHARED_QUEUE, WORKERS_SET, WorkerState, worker_state_key

log = logging.getLogger(__name__)


class WorkerDirectory:
    """Reads worker states from Redis; a state whose heartbeat stopped has expired and is not seen."""

    def __init__(self, client: aioredis.Redis):
        self._client = client

    async def states(self) -> list[WorkerState]:
        """Every worker whose heartbeat is current."""
        # The client decodes responses, so members are str.
        ids: list[str] = sorted(str(i) for i in await self._client.smembers(WORKERS_SET))
        if not ids:
            return []
        raw = await self._client.mget([worker_state_key(i) for i in ids])
        states = []
        for worker_id, doc in zip(ids, raw, strict=True):
            if doc is None:
                continue
            try:
                states.append(WorkerState.model_validate_json(doc))
            except ValidationError:
                log.warning("unreadable worker state", extra={"worker": worker_id})
        return states

    async def alive(self, worker_id: str) -> bool:
        """Whether this worker's heartbeat is current."""
        return bool(await self._client.exists(worker_state_key(worker_id)))

    async def holders(self, model_display: str) -> list[WorkerState]:
        """Live workers that hold this model now."""
        return [s for s in await self.states() if any(m.name == model_display for m in s.models)]

    async def queue_for(self, model_display: str) -> str:
        """The queue a job for this model should go to."""
        holders = await self.holders(model_display)
        if not holders:
            return SHARED_QUEUE
        best = min(holders, key=lambda s: s.slots_busy / max(s.slots_total, 1))
        return best.queue
