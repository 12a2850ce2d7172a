"""The API process's one reader of followed event streams (app/event_streams.py), on a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from app.event_streams import BLOCK_MS, EventStreams, Subscription
from tests.support.redis_server import running_redis


@pytest.fixture
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


async def _xread_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_xread", {}).get("calls", 0))


async def _take(subscription: Subscription, n: int, timeout_s: float = 5.0) -> list[str]:
    """The next ``n`` entries' "e" fields."""
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        got += [fields["e"] for _id, fields in await subscription.read(0.25)]
    return got


def test_each_followed_stream_gets_its_own_entries_in_order_from_one_xread_per_round(redis_url: str) -> None:
    async def scenario() -> tuple[list[list[str]], int]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        streams = EventStreams(client)
        keys = [f"herd:events:job-{i}" for i in range(4)]
        subscriptions = [streams.follow(k) for k in keys]
        await asyncio.sleep(0.1)  # the reader is blocked on all four
        before = await _xread_calls(client)
        rounds = 20
        for r in range(rounds):
            # One decode step: a token for every stream in one round trip, as the worker publishes a step.
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.xadd(k, {"e": f"{k}:{r}"})
            await pipe.execute()
            await asyncio.sleep(0.02)
        got = [await _take(s, rounds) for s in subscriptions]
        calls = await _xread_calls(client) - before
        for s in subscriptions:
            streams.leave(s)
        await streams.close()
        await client.aclose()
        return got, calls

    got, calls = asyncio.run(scenario())
    for i, entries in enumerate(got):
        assert entries == [f"herd:events:job-{i}:{r}" for r in range(20)]
    # Four XREADs per step when each stream was read on its own. Here one, or two before Redis 7.2, which
    # answers a blocked XREAD with the one stream that woke it (the next read takes the step's others).
    assert calls <= 2 * 20 + 2, calls


def test_a_stream_followed_while_the_reader_is_blocked_is_read_at_once(redis_url: str) -> None:
    async def scenario() -> tuple[list[str], float]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        streams = EventStreams(client)
        first = streams.follow("herd:events:first")
        await asyncio.sleep(0.2)  # blocked in an XREAD that does not name the next stream
        second = streams.follow("herd:events:second")
        started = time.monotonic()
        await client.xadd("herd:events:second", {"e": "hello"})
        got = await _take(second, 1)
        took = time.monotonic() - started
        streams.leave(first)
        streams.leave(second)
        await streams.close()
        await client.aclose()
        return got, took

    got, took = asyncio.run(scenario())
    assert got == ["hello"]
    assert took < 0.5 < BLOCK_MS / 1000, took


def test_entries_written_before_following_are_read_from_the_start(redis_url: str) -> None:
    async def scenario() -> list[str]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        for e in ("started", "token"):
            await client.xadd("herd:events:early", {"e": e})
        streams = EventStreams(client)
        subscription = streams.follow("herd:events:early")
        got = await _take(subscription, 2)
        streams.leave(subscription)
        await streams.close()
        await client.aclose()
        return got

    assert asyncio.run(scenario()) == ["started", "token"]


def test_a_lost_connection_fails_reads_until_redis_answers_again_and_nothing_is_skipped(
    redis_url: str,
) -> None:
    async def scenario() -> tuple[str, list[str], int]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        streams = EventStreams(client)
        subscription = streams.follow("herd:events:job")
        await client.xadd("herd:events:job", {"e": "before"})
        assert await _take(subscription, 1) == ["before"]
        # Cut the reader's connection (as a Redis restart or a network cut would).
        (reader,) = [c["id"] for c in await client.client_list() if c.get("cmd") == "xread"]
        await client.client_kill_filter(_id=reader)
        error = ""
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                await subscription.read(0.25)
        except aioredis.ConnectionError as exc:
            error = type(exc).__name__
        # The reader reconnects by itself and goes on from the last entry it handed over: reads fail only
        # until then (a follower retries, as app/relay.py does).
        await client.xadd("herd:events:job", {"e": "after"})
        got: list[str] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            try:
                got = [fields["e"] for _id, fields in await subscription.read(0.25)]
            except aioredis.ConnectionError:
                await asyncio.sleep(0.05)
        streams.leave(subscription)
        await streams.close()
        await asyncio.sleep(0.1)
        # Closed: no read of the reader's is left blocked in Redis.
        blocked = sum(1 for c in await client.client_list() if c.get("cmd") == "xread")
        await client.aclose()
        return error, got, blocked

    error, got, blocked = asyncio.run(scenario())
    assert error == "ConnectionError"
    assert got == ["after"]
    assert blocked == 0


def test_a_left_stream_is_no_longer_read_and_close_removes_the_wake_stream(redis_url: str) -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        streams = EventStreams(client)
        kept = streams.follow("herd:events:kept")
        await asyncio.sleep(0.1)
        left = streams.follow("herd:events:left")  # wakes the reader blocked on "kept"
        await asyncio.sleep(0.1)
        streams.leave(left)
        await client.xadd("herd:events:left", {"e": "nobody"})
        await client.xadd("herd:events:kept", {"e": "someone"})
        got_kept = await _take(kept, 1)
        got_left = [f["e"] for _id, f in await left.read(0.2)]
        wake_keys = [k async for k in client.scan_iter("herd:wake:*")]
        streams.leave(kept)
        await streams.close()
        remaining = [k async for k in client.scan_iter("herd:wake:*")]
        await client.aclose()
        assert wake_keys, "the reader was woken through its wake stream"
        return got_kept, got_left, remaining

    got_kept, got_left, remaining = asyncio.run(scenario())
    assert got_kept == ["someone"]
    assert got_left == []
    assert remaining == []


def test_the_last_follower_leaving_ends_the_read_so_the_next_one_needs_no_wake(redis_url: str) -> None:
    async def scenario() -> tuple[int, int, list[str]]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        streams = EventStreams(client)
        first = streams.follow("herd:events:one")
        await asyncio.sleep(0.1)
        streams.leave(first)
        await asyncio.sleep(0.2)
        # Blocked clients carry the "b" flag; the reader's connection is open but waits for nothing.
        blocked = sum(1 for c in await client.client_list() if "b" in c.get("flags", ""))
        wakes = int(await client.xlen(next(iter([k async for k in client.scan_iter("herd:wake:*")]))))
        second = streams.follow("herd:events:two")
        await client.xadd("herd:events:two", {"e": "hi"})
        got = await _take(second, 1)
        wakes_after = int(await client.xlen(next(iter([k async for k in client.scan_iter("herd:wake:*")]))))
        streams.leave(second)
        await streams.close()
        await client.aclose()
        return blocked, wakes_after - wakes, got

    blocked, new_wakes, got = asyncio.run(scenario())
    assert blocked == 0
    assert new_wakes == 0  # the idle reader took the new follower without a wake
    assert got == ["hi"]
