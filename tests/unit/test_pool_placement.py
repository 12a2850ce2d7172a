"""Placement as a pool and the sweeper, on a real redis-server, with workers' states as they publish them.

The workers here are their advertised states (the documents a worker writes under herd:worker:<id>);
what is tested is what the API does with them: which queue a job goes to, which worker is assigned a
model, and what a dead worker's queue and running jobs become.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from app.admission import Admission
from app.placement import WorkerDirectory
from app.relay import EventRelay
from app.sweeper import Sweeper
from herd.contracts import (
    JOB_FUNC_GENERATE,
    QUEUE_KEYS_SET,
    SHARED_QUEUE,
    WORKERS_SET,
    GenerateJob,
    LoadedModelState,
    WorkerState,
    assigned_key,
    cancel_key,
    events_key,
    manifest_key,
    model_queue_name,
    rq_queue_key,
    worker_last_key,
    worker_queue_name,
    worker_state_key,
)
from herd.names import ModelName
from herd.store import ModelStore, StoredModel
from tests.support.redis_server import running_redis
from tests.support.tiny_gguf import write_tiny_llama

GIB = 1 << 30


@pytest.fixture
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


@pytest.fixture
def model(tmp_path: Path) -> StoredModel:
    store = ModelStore(tmp_path / "models")
    return store.import_gguf(ModelName.parse("pooled:latest"), write_tiny_llama(tmp_path / "m.gguf", seed=5))


def _state(
    worker_id: str, *, busy: int = 0, holds: StoredModel | None = None, blobs: list[str] | None = None
) -> WorkerState:
    models = []
    if holds is not None:
        models.append(
            LoadedModelState(
                name=holds.name.display,
                model=holds.name.display,
                digest=holds.digest,
                size=1,
                expires_at="",
                context_length=512,
            )
        )
    return WorkerState(
        worker_id=worker_id,
        pid=1,
        device="cpu",
        queue=worker_queue_name(worker_id),
        slots_total=1,
        slots_busy=busy,
        models=models,
        memory_budget=64 * GIB,
        heartbeat_at=0,
        blobs=blobs or [],
    )


def _advertise(r: redis.Redis, *states: WorkerState) -> None:
    for s in states:
        r.sadd(WORKERS_SET, s.worker_id)
        r.set(worker_state_key(s.worker_id), s.model_dump_json(), ex=60)


def _place(url: str, model: StoredModel) -> str:
    async def run() -> str:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            return await WorkerDirectory(client).queue_for(model)
        finally:
            await client.aclose()

    return asyncio.run(run())


def _weights(model: StoredModel) -> str:
    return model.model_path.name.removeprefix("sha256-")


def test_a_held_model_queues_in_its_own_queue_and_a_saturated_holder_gets_a_replica(
    redis_url: str, model: StoredModel
) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    mqueue = model_queue_name(model.name.display)
    _advertise(r, _state("a", holds=model), _state("b"), _state("c", blobs=[_weights(model)]))
    assert _place(redis_url, model) == mqueue
    assert not r.exists(assigned_key("b")) and not r.exists(assigned_key("c"))  # a has room
    assert r.get(manifest_key(model.name.display)) == model.manifest_path.read_text()  # type: ignore[union-attr]

    # a is busy: the job would wait, so a worker with room reads the model's queue too; c has the files.
    _advertise(r, _state("a", busy=1, holds=model))
    assert _place(redis_url, model) == mqueue
    assert r.smembers(assigned_key("c")) == {mqueue} and not r.exists(assigned_key("b"))
    # c now reads it too, and one job waits: two readers, two slots, one busy, one waiting: saturated again.
    r.rpush(rq_queue_key(mqueue), "waiting-job")
    assert _place(redis_url, model) == mqueue
    assert r.smembers(assigned_key("b")) == {mqueue}
    # Everybody saturated: it waits its turn in the model's queue, nobody more is assigned.
    _advertise(r, _state("b", busy=1), _state("c", busy=1))
    r.delete(assigned_key("b"))
    assert _place(redis_url, model) == mqueue
    assert not r.exists(assigned_key("b"))


def test_a_cold_model_goes_to_a_worker_with_room_and_its_files_or_else_the_shared_queue(
    redis_url: str, model: StoredModel
) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    assert _place(redis_url, model) == SHARED_QUEUE  # no worker at all
    # Ranked by (running + queued in the private queue) / slots: a's one slot is taken by its queue.
    _advertise(r, _state("a", blobs=[_weights(model)]), _state("b"), _state("c", blobs=[_weights(model)]))
    r.rpush(rq_queue_key(worker_queue_name("a")), "queued-on-a")
    assert _place(redis_url, model) == model_queue_name(model.name.display)
    assert r.smembers(assigned_key("c")) == {model_queue_name(model.name.display)}
    assert not r.exists(assigned_key("a")) and not r.exists(assigned_key("b"))


def test_admission_counts_a_model_queue_against_max_queue(redis_url: str, model: StoredModel) -> None:
    async def run() -> int:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        admission = Admission(client, max_queue=5, retry_after_s=1)
        job = GenerateJob(
            job_id="j1", request_id="r1", kind="generate", model="m", prompt="hi", admitted_ns=0
        )
        await admission.admit(JOB_FUNC_GENERATE, job, model_queue_name("m:latest"))
        waiting = await admission.waiting()
        await client.aclose()
        return waiting

    assert asyncio.run(run()) == 1


def _sweep(url: str) -> tuple[int, int]:
    async def run() -> tuple[int, int]:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            return await Sweeper(client).sweep()
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_the_sweeper_hands_a_dead_workers_queue_back_in_order_and_fails_its_running_jobs(
    redis_url: str, model: StoredModel
) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    dead = _state("dead", busy=1, holds=model).model_copy(update={"running": ["run-1"]})
    alive = _state("alive")
    _advertise(r, alive)
    r.sadd(WORKERS_SET, "dead")
    r.set(worker_last_key("dead"), dead.model_dump_json())  # its state key has expired
    r.sadd(assigned_key("dead"), "herd-model-x")
    r.rpush(rq_queue_key(worker_queue_name("dead")), "p1", "p2")
    r.rpush(rq_queue_key(SHARED_QUEUE), "s1")
    r.hset("rq:job:p1", "origin", worker_queue_name("dead"))
    r.set(cancel_key("run-2"), "1")

    assert _sweep(redis_url) == (1, 0)
    assert r.lrange(rq_queue_key(SHARED_QUEUE), 0, -1) == ["p1", "p2", "s1"]
    assert r.hget("rq:job:p1", "origin") == SHARED_QUEUE
    assert not r.sismember(WORKERS_SET, "dead") and r.sismember(WORKERS_SET, "alive")
    assert not r.exists(worker_last_key("dead")) and not r.exists(assigned_key("dead"))
    assert r.exists(cancel_key("run-1"))
    [(_, [(_, fields)])] = r.xread({events_key("run-1"): "0-0"})
    event = json.loads(fields["e"])
    assert event["type"] == "error" and event["status"] == 500
    assert "the worker running this request (dead) stopped" in event["error"]
    # Swept once: a second round (another API process) finds nothing to do.
    assert _sweep(redis_url) == (0, 0)
    assert r.xlen(events_key("run-1")) == 1


def test_the_sweeper_leaves_a_live_worker_alone_and_moves_a_model_queue_nobody_reads(
    redis_url: str, model: StoredModel
) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    holder = _state("holder", holds=model)
    _advertise(r, holder)
    r.set(worker_last_key("holder"), holder.model_dump_json())
    held, orphan = model_queue_name(model.name.display), model_queue_name("gone:latest")
    for q in (held, orphan):
        r.sadd(QUEUE_KEYS_SET, rq_queue_key(q))
    r.rpush(rq_queue_key(held), "h1")
    r.rpush(rq_queue_key(orphan), "o1", "o2")
    assert _sweep(redis_url) == (0, 1)
    assert r.lrange(rq_queue_key(held), 0, -1) == ["h1"]
    assert r.lrange(rq_queue_key(SHARED_QUEUE), 0, -1) == ["o1", "o2"]
    assert r.exists(worker_last_key("holder"))


def test_a_job_no_worker_starts_fails_after_the_queue_timeout_and_is_withdrawn(redis_url: str) -> None:
    async def run() -> tuple[dict[str, object], float, int]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        admission = Admission(client, max_queue=5, retry_after_s=1)
        relay = EventRelay(
            client, WorkerDirectory(client), 3.0, queue_timeout_s=0.5, withdraw=admission.withdraw
        )
        job = GenerateJob(
            job_id="j1", request_id="r1", kind="generate", model="m", prompt="hi", admitted_ns=0
        )
        await admission.admit(JOB_FUNC_GENERATE, job, SHARED_QUEUE)
        started = time.monotonic()
        event = await anext(relay.events("j1"))
        took = time.monotonic() - started
        waiting = await admission.waiting()
        await relay.close()
        await client.aclose()
        return event, took, waiting

    event, took, waiting = asyncio.run(run())
    assert event["type"] == "error" and event["status"] == 503
    assert "HERD_QUEUE_TIMEOUT=0.5s" in str(event["error"])
    assert 0.5 <= took < 2.0 and waiting == 0


def test_api_processes_sweeping_the_same_redis_take_turns(redis_url: str) -> None:
    """Three sweepers (as three API processes run them) over 1.5 s of 0.2 s rounds: about one sweep a
    round between them, not one each; the keyspace scan only every SCAN_EVERY rounds of each."""
    calls: list[bool] = []

    class Counting(Sweeper):
        async def sweep(self, *, scan: bool = True) -> tuple[int, int]:
            calls.append(scan)
            return await super().sweep(scan=scan)

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        sweepers = [Counting(client, interval_s=0.2) for _ in range(3)]
        for sweeper in sweepers:
            sweeper.start()
        await asyncio.sleep(1.5)
        for sweeper in sweepers:
            await sweeper.stop()
        await client.aclose()

    asyncio.run(run())
    assert 5 <= len(calls) <= 10, calls  # ~8 rounds; three sweepers each sweeping would make ~24
    assert sum(calls) <= 3 and calls[0]  # each sweeper's first round scans, then every SCAN_EVERY-th
