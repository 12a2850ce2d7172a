"""The RQ worker base on a real redis-server: SIGTERM stops it within seconds when idle, with Redis gone
(connections refused) and with Redis frozen (every call hangs)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.client import PubSubWorkerThread
from rq.serializers import JSONSerializer

from herd.settings import CommonSettings
from tests.support.redis_server import running_redis
from workers.rq_worker import FlagStoppedWorker, redis_client

STOP_BOUND_S = 5.0


@pytest.fixture
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def _work_until_sigterm(worker: FlagStoppedWorker, before_signal: Callable[[], None]) -> float:
    """Run the worker on this (the main) thread; another thread prepares, then sends SIGTERM.

    Returns the seconds from the signal to work() returning.
    """
    signalled: list[float] = []
    failures: list[BaseException] = []

    def stopper() -> None:
        try:
            _wait(lambda: worker.get_state() == "idle", 10, "the worker to idle")  # its RQ state, read now
            before_signal()
        except BaseException as exc:
            failures.append(exc)
        signalled.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=stopper, daemon=True)
    thread.start()
    try:
        worker.work(logging_level="WARNING")
        returned = time.monotonic()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    thread.join(timeout=5)
    assert not failures, failures
    return returned - signalled[0]


def _worker(url: str) -> FlagStoppedWorker:
    return FlagStoppedWorker(
        ["unit-q"],
        name=f"unit-{time.monotonic_ns()}",
        connection=redis_client(CommonSettings(redis_url=url)),
        serializer=JSONSerializer,
    )


def test_an_idle_worker_stops_at_once_and_runs_no_command_listener(redis_url: str) -> None:
    worker = _worker(redis_url)

    def no_listener() -> None:
        # RQ's listener thread sleeps 60 s between reads and was joined at teardown.
        assert not [t for t in threading.enumerate() if isinstance(t, PubSubWorkerThread)]

    took = _work_until_sigterm(worker, no_listener)
    assert took <= 2.0, took
    # Redis was reachable: its death is recorded as RQ records it.
    assert worker.connection.hget(worker.key, "death") is not None


def test_a_worker_stops_within_5s_while_redis_refuses_connections(redis_url: str) -> None:
    worker = _worker(redis_url)
    admin = redis.Redis.from_url(redis_url)

    def kill_redis() -> None:
        admin.shutdown(nosave=True)  # redis-server exits: connections are refused from now on
        # Long enough for RQ's own retry to back off past the bound (1, 2, 4 s ...).
        _wait(lambda: worker.redis_unreachable, 10, "the worker to find Redis gone")
        time.sleep(4)

    took = _work_until_sigterm(worker, kill_redis)
    assert took <= STOP_BOUND_S, took


def test_a_worker_stops_within_5s_while_redis_hangs(redis_url: str) -> None:
    worker = _worker(redis_url)
    pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])

    def freeze_redis() -> None:
        os.kill(pid, signal.SIGSTOP)  # connections stay open; no reply ever comes
        _wait(lambda: worker.redis_unreachable, 15, "the worker to find Redis hung")

    try:
        took = _work_until_sigterm(worker, freeze_redis)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert took <= STOP_BOUND_S, took
