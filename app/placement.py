"""The worker directory: what each live worker advertises, and which queue a job should go to.

Placement is a pool (docs/architecture.md, "Placement"). Every job for a model waits in that model's
own queue (`herd-model-<name>`), which every worker holding the model reads, so the jobs of one model
start in the order they were admitted however many workers serve it, and OLLAMA_MAX_QUEUE counts each
waiting job once. Who reads a model's queue: the workers that hold the model, and the workers placement
assigned to it (`herd:assigned:<id>`): the best cold worker for a model nobody holds, and a replica when
every reader is saturated ((running + queued) / slots ≥ 1) and another worker has room. Placement prefers
a worker with the model's files on disk over one that would fetch them, then free room over evictions
(fewest bytes of idle models given up), then the least busy. Correctness never depends on it: any worker
can load any model, fetching its blobs first when its store lacks them.
"""

from __future__ import annotations

import json
import logging

import redis.asyncio as aioredis
from pydantic import ValidationError

from herd.contracts import (
    SHARED_QUEUE,
    WORKERS_SET,
    LoadedModelState,
    WorkerState,
    assigned_key,
    manifest_key,
    model_queue_name,
    rq_queue_key,
    worker_state_key,
)
from herd.gguf_meta import GGUFError
from herd.memory import cap_num_ctx, estimate
from herd.store import StoredModel

log = logging.getLogger(__name__)

# How long a worker keeps reading a model's queue it was assigned without holding the model: long enough
# to take the jobs it was assigned for (a load included); each new assignment renews it.
ASSIGNMENT_TTL_S = 60
# How long a model's published manifest lives: each placement of a job for it writes it again.
MANIFEST_TTL_S = 3600


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
        """The queue a job for this model should go to; assigns it a reader when it needs one."""
        display = model.name.display
        mqueue = model_queue_name(display)
        await self._publish_manifest(model)
        states = await self.states()
        if not states:
            return SHARED_QUEUE  # no worker yet: the first to come takes it from the shared queue
        pipe = self._client.pipeline(transaction=False)
        for s in states:
            pipe.llen(rq_queue_key(s.queue))
            pipe.smembers(assigned_key(s.worker_id))
        pipe.llen(rq_queue_key(mqueue))
        replies = await pipe.execute()
        queued = {s.worker_id: int(replies[2 * i]) for i, s in enumerate(states)}
        assigned = {s.worker_id: {str(q) for q in replies[2 * i + 1]} for i, s in enumerate(states)}
        waiting = int(replies[-1])
        readers = [s for s in states if _holds(s, display) or mqueue in assigned[s.worker_id]]
        capacity = sum(max(s.slots_total, 1) for s in readers)
        demand = sum(s.slots_busy + queued[s.worker_id] for s in readers) + waiting
        if readers and demand < capacity:
            return mqueue  # a reader has room and takes it next
        digest = _weights_digest(model)
        extra = self._best_new_reader(model, [s for s in states if s not in readers], queued, digest)
        if extra is None:
            # Every reader is saturated and nobody else has room: it waits its turn with the model's
            # other jobs. With no reader at all, any worker may take it from the shared queue.
            return mqueue if readers else SHARED_QUEUE
        await self._assign(extra.worker_id, mqueue)
        log.info(
            "model assigned to a worker",
            extra={"model": display, "worker": extra.worker_id, "replica": bool(readers)},
        )
        return mqueue

    def _best_new_reader(
        self, model: StoredModel, others: list[WorkerState], queued: dict[str, int], digest: str
    ) -> WorkerState | None:
        """The worker that should start reading this model's queue, or None when no other has room."""
        ranked = []
        for s in others:
            load = (s.slots_busy + queued[s.worker_id]) / max(s.slots_total, 1)
            if load >= 1:
                continue  # no free slot: it would not start the job any sooner than the readers
            cost = _eviction_cost(s, _need(model, s))
            if cost is None:
                continue
            # Free room first (evicting costs the next user of that model a load), then the files on
            # disk (fetching costs a copy over the network), then the cheapest eviction, the least busy.
            ranked.append(((cost > 0, digest not in s.blobs, cost, load, s.worker_id), s))
        return min(ranked, key=lambda r: r[0])[1] if ranked else None

    async def _assign(self, worker_id: str, mqueue: str) -> None:
        key = assigned_key(worker_id)
        pipe = self._client.pipeline(transaction=False)
        pipe.sadd(key, mqueue)
        pipe.expire(key, ASSIGNMENT_TTL_S)
        await pipe.execute()

    async def _publish_manifest(self, model: StoredModel) -> None:
        """Put the model's manifest where a worker without this store finds it (workers/blob_fetch.py)."""
        if model.manifest_path is None:
            return
        try:
            raw = model.manifest_path.read_bytes()
        except OSError:
            return  # deleted meanwhile: the worker will say it is not found
        await self._client.set(manifest_key(model.name.display), raw, ex=MANIFEST_TTL_S)


def _holds(state: WorkerState, display: str) -> bool:
    return any(m.name == display for m in state.models)


def _weights_digest(model: StoredModel) -> str:
    """Hex digest of the model's weights blob, as workers advertise their blobs."""
    return model.model_path.name.removeprefix("sha256-")


def _need(model: StoredModel, state: WorkerState) -> int:
    """The model's memory estimate on that worker (its default context, at least one sequence)."""
    try:
        info = model.gguf_info()
        # Capped at the trained context, as the worker caps it before it loads.
        n_ctx = cap_num_ctx(info, state.context_length)
        return estimate(
            info,
            model.model_path,
            n_ctx=n_ctx,
            n_parallel=state.num_parallel or 1,
            projectors=model.projectors,
            on_gpu=state.device != "cpu",
        ).total
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
