"""The worker's event publisher on a real redis-server: events reach their streams, every stream expires
on its own, and its expiry is not rewritten on every token."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from herd.contracts import EVENT_STREAM_TTL_S, cancel_key, events_key
from tests.support.redis_server import running_redis
from workers.publisher import Publisher


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    with running_redis() as url:
        connection = redis.Redis.from_url(url, decode_responses=True)
        yield connection
        connection.close()


def _kinds(client: redis.Redis, job_id: str) -> list[str]:
    entries = client.xrange(events_key(job_id))
    return [json.loads(fields["e"])["type"] for _id, fields in entries]  # type: ignore[union-attr]


def test_a_stream_expires_from_its_first_event_and_again_at_its_last(client: redis.Redis) -> None:
    publisher = Publisher(client)
    key = events_key("job-1")
    publisher.add("job-1", "token", text="Hel")
    publisher.flush()
    assert 0 < client.ttl(key) <= EVENT_STREAM_TTL_S  # a worker that dies now leaves nothing for ever

    # Later tokens leave the expiry alone (one command fewer per token): seen on a stream made persistent.
    client.persist(key)
    publisher.add("job-1", "token", text="lo")
    publisher.flush()
    assert client.ttl(key) == -1

    # The last event sets it again, so the stream outlives the job by the whole TTL.
    publisher.add("job-1", "done", done_reason="stop")
    publisher.flush()
    assert 0 < client.ttl(key) <= EVENT_STREAM_TTL_S
    assert _kinds(client, "job-1") == ["token", "token", "done"]


def test_flush_reports_the_watched_jobs_whose_clients_cancelled(client: redis.Redis) -> None:
    publisher = Publisher(client)
    client.set(cancel_key("job-2"), "1")
    publisher.add("job-1", "token", text="a")
    assert publisher.flush(watch=["job-1", "job-2"]) == {"job-2"}
    assert _kinds(client, "job-1") == ["token"]


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_post_sends_without_waiting_and_a_later_post_reports_the_cancel_flags(client: redis.Redis) -> None:
    publisher = Publisher(client)
    client.set(cancel_key("job-2"), "1")
    publisher.add("job-1", "token", text="a")
    # The answers (with the flags) have not been read yet: nothing is reported by the post that sent them.
    assert publisher.post(watch=["job-1", "job-2"]) == set()
    assert _wait_for(lambda: _kinds(client, "job-1") == ["token"])
    assert 0 < client.ttl(events_key("job-1")) <= EVENT_STREAM_TTL_S
    # The next step's post reads them: job-2's client left.
    time.sleep(0.05)
    publisher.add("job-1", "token", text="b")
    assert publisher.post(watch=["job-1"]) == {"job-2"}
    assert _wait_for(lambda: _kinds(client, "job-1") == ["token", "token"])


def test_post_on_a_cut_connection_raises_and_the_next_one_reconnects(client: redis.Redis) -> None:
    publisher = Publisher(client)
    publisher.add("job-1", "token", text="a")
    publisher.post()
    assert _wait_for(lambda: len(_kinds(client, "job-1")) == 1)
    client.client_kill_filter(_type="normal", skipme=True)  # the post connection, as a Redis restart would
    with pytest.raises(redis.ConnectionError):
        # The first send may still be taken by the kernel; the cut shows within a few.
        for _ in range(50):
            publisher.add("job-1", "token", text="lost")
            publisher.post()
            time.sleep(0.02)
    publisher.add("job-1", "done", done_reason="stop")
    publisher.post()
    assert _wait_for(lambda: _kinds(client, "job-1")[-1] == "done")


def test_collect_reads_the_answers_that_arrived_and_sends_nothing(client: redis.Redis) -> None:
    publisher = Publisher(client)
    client.set(cancel_key("job-2"), "1")
    publisher.post(watch=["job-1", "job-2"])
    sent = client.info("commandstats")["cmdstat_mget"]["calls"]
    # Between polls the decode loop only reads: the poll's answer is reported once it is in.
    assert _wait_for(lambda: publisher.collect() == {"job-2"})
    assert publisher.collect() == set()  # each answer is reported once
    assert client.info("commandstats")["cmdstat_mget"]["calls"] == sent
