"""The worker directory: what each live worker advertises, and which queue a job should go to.

Placement is only an optimisation (any worker can load any model). A job for a model some worker holds
goes to that worker's queue (the least busy holder). A job for a cold model goes to a worker that can
load it without evicting anything (room under OLLAMA_MAX_LOADED_MODELS and its memory budget), else to
the worker whose evictions cost least (fewest bytes of idle models given up, in the order the worker
itself would evict them), else to the shared queue, which every worker takes from.
"""

from __future__ import annotations

import json
import logging

import redis.asyncio as aioredis
from pydantic import ValidationError

from herd.contracts import SHARED_QUEUE, WORKERS_SET, LoadedModelState, WorkerState, worker_state_key
from herd.gguf_meta import GGUFError
from herd.memory import cap_num_ctx, estimate
from herd.store import StoredModel

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

    async def alive(self, worker_id: str, incarnation: str | None = None) -> bool:
        """Whether this worker's heartbeat is current and, when given, still from that incarnation.

        A worker restarted under the same id heartbeats within seconds of its death: only the
        incarnation tells that the process which started a job is gone.
        """
        doc = await self._client.get(worker_state_key(worker_id))
        if doc is None:
            return False
        if incarnation is None:
            return True
        try:
            current = json.loads(doc).get("incarnation")
        except (ValueError, AttributeError):
            log.warning("unreadable worker state", extra={"worker": worker_id})
            return True  # unreadable is not dead: its expiry decides
        return bool(current == incarnation)

    async def holders(self, model_display: str) -> list[WorkerState]:
        """Live workers that hold this model now."""
        return [s for s in await self.states() if any(m.name == model_display for m in s.models)]

    async def queue_for(self, model: StoredModel) -> str:
        """The queue a job for this model should go to."""
        states = await self.states()
        display = model.name.display
        holders = [s for s in states if any(m.name == display for m in s.models)]
        if holders:
            return min(holders, key=_load).queue
        costs = [(c, s) for s in states if (c := _eviction_cost(s, _need(model, s))) is not None]
        if not costs:
            return SHARED_QUEUE
        # Free room first (cost 0), then the cheapest eviction; the least busy worker breaks ties.
        _, best = min(costs, key=lambda cs: (cs[0], _load(cs[1])))
        return best.queue


def _load(state: WorkerState) -> tuple[float, int]:
    return (state.slots_busy / max(state.slots_total, 1), len(state.models))


def _need(model: StoredModel, state: WorkerState) -> int:
    """The model's memory estimate on that worker (its default context, at least one sequence)."""
    try:
        info = model.gguf_info()
        # Capped at the trained context, as the worker caps it before it loads.
        n_ctx = cap_num_ctx(info, state.context_length)
        return estimate(info, model.model_path, n_ctx=n_ctx, n_parallel=state.num_parallel or 1).total
    except (OSError, GGUFError):
        return 0  # unreadable here: the worker will say why; place it as if it were small


def _eviction_order(m: LoadedModelState) -> tuple[bool, float, float]:
    # As the worker's cache evicts: pinned last, then the shortest keep_alive, then least recently used.
    return (m.keep_alive < 0, m.keep_alive if m.keep_alive >= 0 else float("inf"), m.last_used)


def _eviction_cost(state: WorkerState, need: int) -> int | None:
    """Bytes of idle models the worker would evict to load `need` more; None if it cannot now."""
    loaded = len(state.models)
    used = state.memory_used
    cost = 0
    idle = sorted((m for m in state.models if m.busy == 0), key=_eviction_order)
    while loaded >= state.max_loaded or used + need > state.memory_budget:
        if not idle:
            return None
        victim = idle.pop(0)
        if victim.keep_alive < 0 and loaded < state.max_loaded:
            return None  # only memory is short, and pinned models are never evicted for memory
        loaded -= 1
        used -= victim.estimate
        cost += max(victim.estimate, 1)
    return cost
