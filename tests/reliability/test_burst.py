"""A burst of 1,000 concurrent requests against OLLAMA_MAX_QUEUE=64, with the backlog sampled from Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from herd.contracts import QUEUE_KEYS_SET
from tests.e2e.conftest import start_stack
from tests.reliability.conftest import job_starts

BURST = 1000
MAX_QUEUE = 64
BUSY = {"error": "server busy, please try again.  maximum pending requests exceeded"}
# A tiny random-weight model and four tokens: admitted jobs finish in milliseconds, so the burst
# measures admission, not decoding.
BODY = {"model": "tiny-a", "prompt": "hi", "stream": False, "options": {"temperature": 0, "num_predict": 4}}


async def _sample_waiting(url: str, stop: asyncio.Event, samples: list[int]) -> None:
    """Sum the lengths of Herd's queue lists (what admission counts as waiting) until told to stop."""
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        while not stop.is_set():
            keys = await r.smembers(QUEUE_KEYS_SET)
            if keys:
                pipe = r.pipeline(transaction=True)  # one MULTI: a consistent snapshot of all queues
                for key in keys:
                    pipe.llen(key)
                samples.append(sum(await pipe.execute()))
            else:
                samples.append(0)
            await asyncio.sleep(0.005)
    finally:
        await r.aclose()


Outcome = tuple[str, httpx.Response | httpx.HTTPError]


async def _burst(base_url: str, redis_url: str) -> tuple[list[Outcome], list[int], float]:
    limits = httpx.Limits(max_connections=BURST + 16, max_keepalive_connections=0)
    samples: list[int] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=base_url, timeout=180, limits=limits) as client:

        async def one(rid: str) -> Outcome:
            # A transport error is recorded, not raised: one must not cancel the other 999 requests.
            try:
                return rid, await client.post("/api/generate", json=BODY, headers={"X-Request-ID": rid})
            except httpx.HTTPError as exc:
                return rid, exc

        sampler = asyncio.create_task(_sample_waiting(redis_url, stop, samples))
        started = time.monotonic()
        results = await asyncio.gather(*(one(f"burst-{uuid.uuid4().hex}") for _ in range(BURST)))
        elapsed = time.monotonic() - started
        stop.set()
        await sampler
    return results, samples, elapsed


@pytest.mark.slow
def test_a_burst_of_1000_requests_admits_at_most_max_queue_and_refuses_the_rest_cleanly(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = {"OLLAMA_MAX_QUEUE": str(MAX_QUEUE), "OLLAMA_NUM_PARALLEL": "4"}
    with start_stack(models_dir, tmp_path_factory.mktemp("run-burst"), env=env) as stack:
        base = stack.settings.base_url
        # Load the model first: the burst is about admission, not about the first load's latency.
        assert httpx.post(f"{base}/api/generate", json=BODY, timeout=60).status_code == 200
        outcomes, samples, elapsed = asyncio.run(_burst(base, stack.settings.stack_redis_url))
        failed = Counter(repr(o) for _, o in outcomes if isinstance(o, httpx.HTTPError))
        assert not failed, f"transport errors: {failed}"
        results = [(rid, o) for rid, o in outcomes if isinstance(o, httpx.Response)]

        statuses = Counter(r.status_code for _, r in results)
        admitted = [rid for rid, r in results if r.status_code == 200]
        refused = [r for _, r in results if r.status_code == 503]
        print(
            f"\nburst: {BURST} requests in {elapsed:.1f}s: {dict(statuses)}; waiting sampled "
            f"{len(samples)} times, max {max(samples)}"
        )
        assert set(statuses) <= {200, 503}, statuses  # no other 5xx, nor anything else
        assert len(admitted) + len(refused) == BURST
        assert admitted and refused
        for r in refused:
            assert r.json() == BUSY
            assert int(r.headers["Retry-After"]) >= 1
        for _, r in results:
            if r.status_code == 200:
                assert r.json()["done"] is True and r.json()["eval_count"] >= 1
        # The backlog never exceeded the bound, and the sampler did see it fill (so it sampled the burst).
        assert len(samples) >= 20
        assert max(samples) <= MAX_QUEUE
        assert max(samples) >= MAX_QUEUE // 2
        # Every admitted job was started exactly once; no refused request ever reached a worker.
        starts = job_starts(stack)
        burst_starts = {rid: n for rid, n in starts.items() if rid.startswith("burst-")}
        assert set(burst_starts) == set(admitted)
        assert set(burst_starts.values()) == {1}
        # Nothing is left waiting once the burst is over.
        metrics = httpx.get(f"http://127.0.0.1:{stack.settings.metrics_port}/metrics", timeout=10).text
        assert f'herd_requests_rejected_total{{reason="queue_full"}} {float(len(refused))}' in metrics
