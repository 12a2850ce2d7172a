"""Redis killed under the running supervisor (`herd up`): it is restarted on its data, nothing else is.

The stack's real redis-server is SIGKILLed while one job generates and another waits behind it; the
supervisor's own loop (`Stack.run_forever`, in a thread here) restarts it, on the same config, port and
append-only file, after its back-off. During the outage requests get fast 503s with Retry-After; then
service resumes with no Herd process restarted. When Redis stays down longer than a waiting client's
patience (REDIS_OUTAGE_S: its data dir is made unusable, so every restart dies at once), that client is
told to retry, and its job, still in the append-only file, must never run once Redis is back.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.relay import REDIS_OUTAGE_S
from stack.redis_conf import redis_dir
from stack.supervisor import REDIS_BACKOFF_MAX_S, Stack
from tests.e2e.conftest import GEMMA, start_stack
from tests.reliability.conftest import job_starts, supervised

QUEUED = {"model": GEMMA, "prompt": "Hi", "stream": False, "options": {"temperature": 0, "num_predict": 4}}
TINY = {"model": "tiny-a", "prompt": "hi", "stream": False, "options": {"temperature": 0, "num_predict": 4}}


def _long(num_predict: int) -> dict[str, Any]:
    return {
        "model": GEMMA,
        "prompt": "Tell me a very long story.",
        "options": {"temperature": 0, "num_predict": num_predict},
    }


# Not the default (2), so that the answers show the setting is what they send.
RETRY_AFTER_S = 3


@pytest.fixture(scope="module")
def supervised_stack(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack with its supervisor loop running, as under `herd up`."""
    env = {
        "OLLAMA_MAX_QUEUE": "16",
        "OLLAMA_NUM_PARALLEL": "1",
        "HERD_WORKER_TIMEOUT": "3",
        "HERD_RETRY_AFTER": str(RETRY_AFTER_S),
    }
    with start_stack(models_dir, tmp_path_factory.mktemp("run-redis"), env=env) as stack:
        with supervised(stack) as outcome:
            yield stack
        assert outcome == [0], "the supervisor gave up on the stack"


def _pids(stack: Stack) -> dict[str, int | None]:
    procs = [stack.api, stack.nginx, stack.store_worker, *stack.workers]
    return {p.name: p.pid for p in procs if p is not None}


def _redis(stack: Stack) -> redis.Redis:
    # No retries of its own: an answer or an error at once.
    return redis.Redis.from_url(stack.settings.stack_redis_url, decode_responses=True, retry=None)


def _waiting(stack: Stack) -> int:
    with _redis(stack) as r:
        return sum(int(r.llen(k)) for k in r.smembers("herd:queue-keys"))


def _wait_for_redis(stack: Stack, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with _redis(stack) as r:
                if r.ping():
                    return True
        except redis.ConnectionError:  # refused, or BusyLoadingError while it replays its file
            pass
        time.sleep(0.02)
    return False


def _api_answers(base: str, timeout: float) -> bool:
    """Whether GET /api/ps (the API reading worker state from Redis) answers 200 within ``timeout``."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, timeout=10) as c:
        while time.monotonic() < deadline:
            if c.get("/api/ps").status_code == 200:
                return True
            time.sleep(0.02)
    return False


def _first_success(base: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, timeout=60) as c:
        while time.monotonic() < deadline:
            if c.post("/api/generate", json=TINY).status_code == 200:
                return True
            time.sleep(0.1)
    return False


class Traffic:
    """A long stream holding the only slot, and a request waiting behind it with a known X-Request-ID."""

    def __init__(self, base: str, num_predict: int):
        self.base = base
        self.long_body = _long(num_predict)
        self.long_lines: list[dict[str, Any]] = []
        self.long_failure: list[BaseException] = []
        self.queued: list[httpx.Response] = []
        self.queued_at: list[float] = []
        self.request_id = f"q-{uuid.uuid4().hex}"
        self._first_token = threading.Event()
        self._long = threading.Thread(target=self._run_long)
        self._queued = threading.Thread(target=self._run_queued)

    def _run_long(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.base, timeout=120) as c,
                c.stream("POST", "/api/generate", json=self.long_body) as r,
            ):
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line:
                        self.long_lines.append(json.loads(line))
                        self._first_token.set()
        except (httpx.HTTPError, AssertionError) as exc:  # a cut-off stream is what the test must not see
            self.long_failure.append(exc)
            self._first_token.set()

    def _run_queued(self) -> None:
        with httpx.Client(base_url=self.base, timeout=120) as c:
            self.queued.append(
                c.post("/api/generate", json=QUEUED, headers={"X-Request-ID": self.request_id})
            )
            self.queued_at.append(time.monotonic())

    def start(self, stack: Stack) -> None:
        """Start both; return once the second waits in Redis, and its job is in the append-only file."""
        self._long.start()
        assert self._first_token.wait(60)
        self._queued.start()
        deadline = time.monotonic() + 20
        while _waiting(stack) < 1:
            assert time.monotonic() < deadline, "the second request never waited in the queue"
            time.sleep(0.05)
        # appendfsync everysec: a SIGKILL loses at most the last second of writes.
        time.sleep(1.5)
        assert not self.long_lines[-1].get("done"), "the long job ended before Redis was killed"

    def wait_queued(self, timeout: float) -> None:
        """Until the waiting request has its answer (or ``timeout`` passes)."""
        self._queued.join(timeout=timeout)

    def join(self, timeout: float) -> None:
        self._long.join(timeout=timeout)
        self._queued.join(timeout=timeout)


def _kill_redis(stack: Stack) -> tuple[int, float]:
    assert stack.redis is not None and stack.redis.pid is not None
    pid = stack.redis.pid
    os.kill(pid, signal.SIGKILL)
    return pid, time.monotonic()


def test_a_killed_redis_is_restarted_by_the_supervisor_and_service_resumes_by_itself(
    supervised_stack: Stack,
) -> None:
    stack = supervised_stack
    base = stack.settings.base_url
    assert stack.redis is not None
    pids = _pids(stack)
    with _redis(stack) as r:
        # What lets the waiting job survive the restart: the stack's Redis logs every write.
        assert r.config_get("appendonly") == {"appendonly": "yes"}
    with httpx.Client(base_url=base, timeout=60) as c:
        assert c.post("/api/generate", json=TINY).status_code == 200

    traffic = Traffic(base, 400)
    traffic.start(stack)
    killed, killed_at = _kill_redis(stack)

    # Until the supervisor restarts it (its first back-off is 1 s), every request meets a dead Redis.
    outage: list[tuple[str, int, float, httpx.Response]] = []
    with httpx.Client(base_url=base, timeout=30) as c:
        while stack.redis.pid == killed:
            for method, path, body in (("POST", "/api/generate", TINY), ("GET", "/api/ps", None)):
                t0 = time.monotonic()
                resp = c.request(method, path, json=body)
                if stack.redis.pid == killed:  # answered before any restart: it cannot have reached Redis
                    outage.append((path, resp.status_code, time.monotonic() - t0, resp))
            time.sleep(0.05)
            assert time.monotonic() - killed_at < 30, "the supervisor did not restart Redis"
    assert _wait_for_redis(stack, 30)
    redis_back_s = time.monotonic() - killed_at
    assert _api_answers(base, 30)
    api_back_s = time.monotonic() - killed_at
    assert _first_success(base, 60)
    resumed_s = time.monotonic() - killed_at
    traffic.join(120)

    worst = max(t for _, _, t, _ in outage)
    queued = traffic.queued
    print(
        f"\nredis SIGKILL under the supervisor: Redis back {redis_back_s:.2f}s after the kill, /api/ps 200 "
        f"{api_back_s:.2f}s, first new generation 200 {resumed_s:.2f}s (behind the waiting job); "
        f"{len(outage)} requests during the outage, "
        f"statuses {sorted({s for _, s, _, _ in outage})}, slowest {worst * 1000:.0f} ms; running job ended "
        f"with {traffic.long_lines[-1] if traffic.long_lines else traffic.long_failure}; queued job: "
        f"{queued[0].status_code if queued else None} {queued[0].text[:200] if queued else ''}"
    )
    assert outage, "no request was answered while Redis was down"
    for _path, status, _t, resp in outage:
        assert status == 503 and "error" in resp.json() and resp.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert worst < 1.0
    assert redis_back_s < 5.0
    assert stack.redis.restarts == 1 and stack.redis.alive
    with _redis(stack) as r:
        assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert _pids(stack) == pids and all(p.alive for p in [stack.api, stack.nginx, *stack.workers] if p)
    assert all(w.restarts == 0 for w in stack.workers)
    assert stack.store_worker is not None and stack.store_worker.restarts == 0
    # Jobs admitted before the crash finish or fail clearly: never a cut-off stream or a hang.
    assert not traffic.long_failure, traffic.long_failure
    assert traffic.long_lines[-1].get("done") is True or "error" in traffic.long_lines[-1]
    assert queued and (queued[0].status_code == 200 or "error" in queued[0].json())


@pytest.mark.slow  # Redis stays down for REDIS_OUTAGE_S (30 s) and more
def test_a_job_whose_client_was_told_to_retry_never_runs_after_redis_comes_back(
    supervised_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    stack = supervised_stack
    base = stack.settings.base_url
    assert stack.redis is not None
    caplog.set_level("WARNING", logger="stack.supervisor")
    pids = _pids(stack)
    redis_restarts = stack.redis.restarts
    data = redis_dir(stack.settings) / "data"
    moved = data.with_name("data.away")

    traffic = Traffic(base, 800)
    traffic.start(stack)
    _killed, killed_at = _kill_redis(stack)
    # Every restart now dies at once ("FATAL CONFIG FILE ERROR ... Not a directory"), as a Redis on a broken
    # disk would: the supervisor backs off, and the waiting client runs out of patience.
    data.rename(moved)
    data.write_text("not a directory\n")
    try:
        traffic.wait_queued(REDIS_OUTAGE_S + 30)
        assert traffic.queued, "the waiting request got no answer"
        told_after = traffic.queued_at[0] - killed_at
        attempts = stack.redis.restarts - redis_restarts
    finally:
        data.unlink()
        moved.rename(data)
    assert _wait_for_redis(stack, REDIS_BACKOFF_MAX_S + 10)
    redis_back_s = time.monotonic() - killed_at
    # One slot, first come first served: once a later generation has run, the worker has been free to
    # take the waiting job, had it still been there.
    assert _first_success(base, 120)
    resumed_s = time.monotonic() - killed_at
    traffic.join(120)
    time.sleep(1.0)  # the worker's log line of a job it had started would be written by now

    answer = traffic.queued[0]
    delays = [int(d) for d in re.findall(r"process=redis .*; restarting in (\d+)s", caplog.text)]
    dropped = any(
        "job dropped" in line and traffic.request_id in line
        for log in (redis_dir(stack.settings).parent / "logs").glob("worker-*.log")
        for line in log.read_text(errors="replace").splitlines()
    )
    print(
        f"\nredis down {REDIS_OUTAGE_S:g}s+: waiting client answered {answer.status_code} "
        f"{answer.text[:160]} {told_after:.1f}s after the kill; {attempts} restarts while down, back-offs "
        f"{delays}; Redis back {redis_back_s:.1f}s after the kill, first generation 200 {resumed_s:.1f}s "
        f"after it; the job was {'popped and dropped by the worker' if dropped else 'withdrawn by the API'}"
    )
    assert answer.status_code == 503 and "please retry" in answer.json()["error"]
    assert answer.headers.get("Retry-After") == str(RETRY_AFTER_S)  # HERD_RETRY_AFTER, as admission's 503
    assert told_after >= REDIS_OUTAGE_S - 0.5  # 30 s of failed polls, the last one not slept after
    assert job_starts(stack)[traffic.request_id] == 0, "a job whose client was told to retry was run"
    assert _waiting(stack) == 0
    # A crash loop backs off (1, 2, 4 ... s, at most REDIS_BACKOFF_MAX_S) and says so each time; the
    # first delay is 2 s when the test before killed this Redis less than a minute ago.
    assert delays == sorted(delays) and delays[0] <= 2 and max(delays) == REDIS_BACKOFF_MAX_S, delays
    assert 4 <= attempts <= REDIS_OUTAGE_S, attempts
    # Nothing but Redis was restarted.
    assert _pids(stack) == pids and all(p.alive for p in [stack.api, stack.nginx, *stack.workers] if p)
