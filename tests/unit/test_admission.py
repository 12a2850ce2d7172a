"""Admission against a real redis-server: the bound is exact, withdrawal is atomic."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from rq.job import Job
from rq.serializers import JSONSerializer

from app.admission import Admission
from app.contracts import JOB_FUNC_GENERATE, SHARED_QUEUE, GenerateJob, rq_queue_key
from app.errors import ServerBusy
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
