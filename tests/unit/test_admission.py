"""Admission against a real redis-server: the bound is exact, withdrawal is atomic."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from rq.job import Job
from rq.serializers import JSONSerializer

from app.admission import LEASE_S, Abandonment, Admission
from app.errors import ServerBusy
from app.placement import WorkerDirectory
from app.relay import POLL_MS, REDIS_OUTAGE_S, EventRelay
from herd.contracts import (
    EVENT_STREAM_TTL_S,
    JOB_FUNC_GENERATE,
    MODELS_QUEUE,
    SHARED_QUEUE,
    GenerateJob,
    cancel_key,
    lease_key,
    rq_queue_key,
)
from tests.support.ports import free_port
from tests.support.redis_server import running_redis


@pytest.fixture
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


def _job(i: int) -> GenerateJob:
    return GenerateJob(
        job_id=f"job-{i}", request_id=f"r{i}", kind="generate", model="m", prompt="hi", admitted_ns=0
    )


def test_max_queue_is_exact_under_concurrency(redis_url: str) -> None:
    async def scenario() -> tuple[int, int, int]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True, max_connections=200)
        admission = Admission(client, max_queue=7, retry_after_s=3)

        async def one(i: int) -> bool:
            try:
                await admission.admit(JOB_FUNC_GENERATE, _job(i), SHARED_QUEUE)
                return True
            except ServerBusy as exc:
                assert exc.headers == {"Retry-After": "3"}
                assert exc.message == "server busy, please try again.  maximum pending requests exceeded"
                return False

        outcomes = await asyncio.gather(*(one(i) for i in range(100)))
        waiting = await admission.waiting()
        length = await client.llen(rq_queue_key(SHARED_QUEUE))
        await client.aclose()
        return sum(outcomes), waiting, length

    admitted, waiting, length = asyncio.run(scenario())
    assert admitted == 7
    assert waiting == 7
    assert length == 7


def test_admitted_job_is_a_real_rq_job(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        await Admission(client, 5, 1).admit(JOB_FUNC_GENERATE, _job(1), SHARED_QUEUE)
        await client.aclose()

    asyncio.run(scenario())
    sync = redis.Redis.from_url(redis_url)
    job = Job.fetch("job-1", connection=sync, serializer=JSONSerializer)
    assert job.func_name == JOB_FUNC_GENERATE
    assert job.kwargs["payload"]["prompt"] == "hi"
    assert job.get_status() == "queued"


def test_withdraw_removes_a_waiting_job_only_once(redis_url: str) -> None:
    async def scenario() -> tuple[bool, bool, int]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        admission = Admission(client, 5, 1)
        await admission.admit(JOB_FUNC_GENERATE, _job(1), SHARED_QUEUE)
        first = await admission.withdraw("job-1")
        second = await admission.withdraw("job-1")
        waiting = await admission.waiting()
        exists = await client.exists(Job.key_for("job-1"))
        await client.aclose()
        assert exists == 0
        return first, second, waiting

    assert asyncio.run(scenario()) == (True, False, 0)


def test_an_admitted_job_holds_a_lease_no_longer_than_the_relay_waits(redis_url: str) -> None:
    async def scenario() -> int:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        await Admission(client, 5, 1).admit(JOB_FUNC_GENERATE, _job(1), SHARED_QUEUE)
        ttl = int(await client.pttl(lease_key("job-1")))
        await client.aclose()
        return ttl

    # A client is told to retry after REDIS_OUTAGE_S of failed polls (one poll less of wall time after the
    # lease's last renewal); by then the lease must have lapsed.
    assert LEASE_S < REDIS_OUTAGE_S - POLL_MS / 1000
    assert 0 < asyncio.run(scenario()) <= LEASE_S * 1000


def test_a_job_redis_lost_in_a_failover_fails_at_once_and_is_flagged(redis_url: str) -> None:
    # A Sentinel failover can promote a replica that never received a job just admitted: its hash, queue
    # entry and lease are all gone. Its client must hear so at the next poll, not wait for a worker for ever.
    async def scenario() -> tuple[dict[str, object], float, int]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        await Admission(client, 5, 1).admit(JOB_FUNC_GENERATE, _job(1), SHARED_QUEUE)
        relay = EventRelay(client, WorkerDirectory(client), worker_timeout_s=3.0)
        events = relay.events("job-1")
        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(3 * POLL_MS / 1000)
        assert not waiting.done()  # a job that is still there waits for its worker
        started = time.monotonic()
        await client.delete(lease_key("job-1"), rq_queue_key(SHARED_QUEUE), "rq:job:job-1")
        event = await asyncio.wait_for(waiting, 5)
        flagged = int(await client.exists(cancel_key("job-1")))
        await relay.close()
        await client.aclose()
        return event, time.monotonic() - started, flagged

    event, took, flagged = asyncio.run(scenario())
    assert event["type"] == "error" and event["status"] == 503
    assert "lost this request" in str(event["error"]) and "retry" in str(event["error"])
    assert took < 2 * POLL_MS / 1000 + 0.5 and flagged == 1


def test_a_job_popped_by_a_worker_that_never_got_it_fails_and_one_started_waits(redis_url: str) -> None:
    # A worker's BLPOP served by a Redis that died before the reply arrived: the job is in no queue and RQ
    # still calls it queued. Its client hears so in seconds. A job a worker did start waits as usual.
    async def scenario() -> tuple[dict[str, object], float, bool]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        admission = Admission(client, 5, 1)
        relay = EventRelay(client, WorkerDirectory(client), worker_timeout_s=3.0)
        for i in (1, 2):
            await admission.admit(JOB_FUNC_GENERATE, _job(i), SHARED_QUEUE)
        assert await client.hget("rq:job:job-1", "status") == "queued"
        await client.delete(rq_queue_key(SHARED_QUEUE))  # both popped
        await client.hset("rq:job:job-2", "status", "started")  # RQ marked this one started
        started = time.monotonic()
        lost = await asyncio.wait_for(anext(relay.events("job-1")), 10)
        took = time.monotonic() - started
        waiting = asyncio.ensure_future(anext(relay.events("job-2")))
        await asyncio.sleep(2.5)
        still_waiting = not waiting.done()
        waiting.cancel()
        await relay.close()
        await client.aclose()
        return lost, took, still_waiting

    lost, took, still_waiting = asyncio.run(scenario())
    assert lost["type"] == "error" and lost["status"] == 503 and "lost this request" in str(lost["error"])
    assert 1.5 <= took < 4 and still_waiting


def test_abandonment_withdraws_and_flags_jobs_once_redis_answers(redis_url: str) -> None:
    async def scenario() -> dict[str, int]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        await Admission(client, 5, 1).admit(JOB_FUNC_GENERATE, _job(1), SHARED_QUEUE)
        await client.rpush(rq_queue_key(MODELS_QUEUE), "model-job")
        abandoned = Abandonment(client)
        abandoned.add("job-1")
        abandoned.add("model-job")
        deadline = asyncio.get_running_loop().time() + 5
        while await client.exists(cancel_key("job-1"), cancel_key("model-job")) < 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        found = {
            "queued": int(await client.llen(rq_queue_key(SHARED_QUEUE))),
            "model_queued": int(await client.llen(rq_queue_key(MODELS_QUEUE))),
            "hash": int(await client.exists(Job.key_for("job-1"))),
            "lease": int(await client.exists(lease_key("job-1"))),
            "flag_ttl": int(await client.ttl(cancel_key("job-1"))),
        }
        await client.aclose()
        return found

    found = asyncio.run(scenario())
    assert found["queued"] == found["model_queued"] == found["hash"] == found["lease"] == 0
    assert 0 < found["flag_ttl"] <= EVENT_STREAM_TTL_S


def test_abandonment_waits_for_redis_to_come_back() -> None:
    # Jobs let go of while Redis is down are let go of once a Redis answers on that address.
    port = free_port()

    async def scenario() -> bool:
        client = aioredis.Redis(
            port=port, decode_responses=True, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1
        )
        abandoned = Abandonment(client)
        abandoned.add("job-9")
        await asyncio.sleep(0.6)  # a few refused tries
        binary = shutil.which("redis-server")
        assert binary is not None
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                try:
                    if await client.exists(cancel_key("job-9")):
                        return True
                except aioredis.ConnectionError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    return False
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
            proc.terminate()
            proc.wait(timeout=10)

    assert asyncio.run(scenario())
